"""Interchangeable archives (issue 17): rehydrating on another numeric path than the compressing one.

No GPU here, so bf16 autocast on the CPU stands in for "the other device" (it differs from fp32 far
more than a GPU's fp32 does; benchmarks/gpu.py measures the real GPU vs CPU). Lossy fidelity stays
within the stated tolerance (pipeline.codec.inference.CROSS_DEVICE_*); exact fidelity stays exact, because
its layer is the source itself and does not depend on the prediction (pipeline/codec/layer.py)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from models.data import read_rgb
from models.zoo import load_pair
from pipeline.codec import layer as enhancement, fidelity
from pipeline.codec.inference import CROSS_DEVICE_MAX_ABS_DIFF, CROSS_DEVICE_MAX_PSNR_DROP_DB, InferenceOptions, using
from tests import DATA, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from inference_precision import BF16, FP32, decode_rgb, difference, restore  # noqa: E402

SET5 = DATA / "Set5"


@pytest.fixture(scope="module")
def pairs():
    return {m: load_pair(m) for p in ("standard", "high", "lossless") for m in fidelity.PRESETS[p].models}


@pytest.fixture(scope="module")
def source() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(read_rgb(str(SET5 / "bird.png"))).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def archive(data: bytes, pairs: dict, preset: str | float, options: InferenceOptions):
    """`preset`: a preset name, or a Y-PSNR target (the residual layers TAU's prediction feeds)."""
    spec = fidelity.PRESETS[preset] if isinstance(preset, str) else fidelity.resolve_fidelity(target_psnr=preset)
    with using(pairs.values(), options):
        small, layer, rec = fidelity.compress_to_target(data, pairs, spec)
    assert rec.status == "ok", rec.error_message
    return small, layer, rec, pairs[rec.model_id]


@pytest.mark.parametrize("preset", [36.0, 40.0])  # Y-PSNR targets: score targets code the image itself (no TAU)
@pytest.mark.parametrize("compress_on,rehydrate_on", [(FP32, BF16), (BF16, FP32)])
def test_lossy_fidelity_within_tolerance_on_another_path(pairs, source, preset, compress_on, rehydrate_on):
    small, layer, rec, pair = archive(source, pairs, preset, compress_on)
    assert rec.enhancement_format == "avif"
    same, other = restore(small, layer, pair, compress_on), restore(small, layer, pair, rehydrate_on)
    d = difference(other, same, decode_rgb(source), pair.scale)
    assert not d["identical"]  # the proxy really is another numeric path
    assert d["psnr_drop_db"] <= CROSS_DEVICE_MAX_PSNR_DROP_DB, d
    assert d["max_abs_diff"] <= CROSS_DEVICE_MAX_ABS_DIFF, d
    # the search aimed the tolerance above the target (fidelity.DEVICE_MARGIN_DB): the target itself
    # holds where it was not verified
    assert rec.psnr_y >= rec.target_psnr + CROSS_DEVICE_MAX_PSNR_DROP_DB - 0.01
    assert d["psnr_y_other"] >= rec.target_psnr


@pytest.mark.parametrize("compress_on,rehydrate_on", [(FP32, BF16), (BF16, FP32)])
def test_exact_fidelity_stays_exact_on_another_path(pairs, source, compress_on, rehydrate_on):
    small, layer, rec, pair = archive(source, pairs, "lossless", compress_on)
    assert rec.enhancement_format == "jxl-jpeg"  # a JPEG source: its own bytes, no prediction involved
    ref = decode_rgb(source)
    for options in (compress_on, rehydrate_on):
        assert np.array_equal(restore(small, layer, pair, options), ref)


def test_prediction_free_layers_ignore_the_prediction():
    """Why exact fidelity stores the source: the residual mod 256 (the old layer) turns a prediction
    off by one level into an error of 255 where the source is 0 or 255; the source itself cannot."""
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    src[0, :8] = 255
    pred = np.clip(src.astype(int) + rng.integers(-20, 20, src.shape), 0, 255).astype(np.uint8)
    pred[0, :8] = 254
    drifted = pred.copy()
    drifted[0, :8] = 255  # one level higher where the source is 255: the old layer wraps to 0
    old = enhancement.encode_layer(src, pred, "webp-lossless")
    assert np.abs(enhancement.apply_layer(drifted, old).astype(int) - src).max() == 255
    new = enhancement.encode_layer(src, pred, "webp-lossless-full")
    assert np.array_equal(enhancement.apply_layer(drifted, new), src)
    assert np.array_equal(enhancement.apply_layer(pred, new), src)
