"""No quality lost in the codec plumbing, on Set14 (in-repo copy, tests/data/Set14).

eval mod-crops each original to a multiple of the scale; the codec is fed the same mod-cropped
pixels (as a PNG file), so both see identical inputs and must produce identical outputs:
- every Set14 image (x2; the first five with x4): the codec's small image and reconstruction are pixel-identical to
  `models.evaluate.round_trip` (the function `taid eval` scores), hence PSNR/SSIM exactly equal;
- the first images: PSNR-Y / PSNR-RGB / SSIM equal, exactly, the rows `evaluate` reports
  (`evaluate` itself is slow on a shared CPU because of its baselines, hence the limit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import list_images, mod_crop, read_rgb
from models.evaluate import evaluate, quality_of, round_trip
from models.zoo import load_pair
from pipeline.codec.options import CodecOptions
from pipeline.codec.image import compress_image, decode_output, rehydrate_image
from pipeline.codec.small_file import read_small
from tests.codec.test_codec import encode

from tests import DATA
SET14 = str(DATA / "Set14")


def codec_round_trip(pair, model_id: str, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    small, _, rec = compress_image(encode(img), pair, CodecOptions(model_id=model_id, scale=pair.scale))
    assert rec.status == "ok" and rec.tiles == 1
    restored = np.asarray(decode_output(rehydrate_image(small, rec, pair)))
    return np.asarray(read_small(small)[0]), restored


@pytest.mark.parametrize("model_id,limit", [("taid-x2", 14), ("taid-x4", 5)])
def test_set14_codec_equals_round_trip(model_id, limit):
    # channels_last weights, as evaluate() converts them (the codec does the same): the other
    # layout picks other conv kernels, whose float rounding moves a few pixels by one level
    pair = load_pair(model_id).to(memory_format=torch.channels_last)
    uris = list_images([SET14])
    assert len(uris) == 14
    for uri in uris[:limit]:
        img = mod_crop(read_rgb(uri), pair.scale)
        ref_small, ref_restored, _ = round_trip(pair, img)
        small, restored = codec_round_trip(pair, model_id, img)
        assert np.array_equal(small, ref_small), uri
        assert np.array_equal(restored, ref_restored), uri  # hence identical PSNR / SSIM


def test_set14_psnr_equals_taid_eval_report():
    pair = load_pair("taid-x2")
    report = evaluate(pair, SET14, limit=3)
    rows = {r["name"]: r for r in report["images"]}
    for uri in list_images([SET14])[:3]:
        img = mod_crop(read_rgb(uri), 2)
        got, want = quality_of(codec_round_trip(pair, "taid-x2", img)[1], img, 2), rows[Path(uri).stem]
        for key in ("psnr_y", "psnr_rgb", "ssim"):
            assert got[key] == want[key], (uri, key, got[key], want[key])
