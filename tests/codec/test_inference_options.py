"""Inference options (pipeline.codec.inference) and batching tiles across images (tiling.run_batched)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from models.data import mod_crop, read_rgb
from models.evaluate import round_trip
from models.metrics import psnr_y
from models.zoo import load_pair
from pipeline.codec import inference, tiling
from pipeline.codec.inference import InferenceOptions, configure, using

from tests import DATA
SET5 = DATA / "Set5"


@pytest.fixture(scope="module")
def x2():
    return load_pair("taid-x2")


@pytest.fixture(scope="module")
def bird(x2):
    return mod_crop(read_rgb(str(SET5 / "bird.png")), 2)


def test_default_and_explicit_fp32_equal_taid_eval_round_trip(x2, bird):
    ref_small, ref_restored, _ = round_trip(x2.to(memory_format=torch.channels_last), bird)
    for options in (None, InferenceOptions(), InferenceOptions(precision="fp32")):
        small, _ = tiling.downscale_array(x2, bird, 2, inference=options)
        restored, _ = tiling.upscale_array(x2, small, 2, inference=options)
        assert np.array_equal(small, ref_small) and np.array_equal(restored, ref_restored)


def test_bf16_is_close_to_fp32(x2, bird):
    bf16 = InferenceOptions(precision="bf16")
    small, _ = tiling.downscale_array(x2, bird, 2, inference=bf16)
    restored, _ = tiling.upscale_array(x2, small, 2, inference=bf16)
    ref = tiling.upscale_array(x2, tiling.downscale_array(x2, bird, 2)[0], 2)[0]
    assert small.dtype == np.uint8 and restored.shape == bird.shape
    assert not np.array_equal(restored, ref)  # it really ran another numeric path
    assert abs(psnr_y(restored, bird, 2) - psnr_y(ref, bird, 2)) < 0.1  # measured: 0.02 dB


def test_precision_per_device():
    assert InferenceOptions().precision_on("cpu") == "fp32"
    assert InferenceOptions().precision_on("cuda") == inference.GPU_DEFAULT
    assert InferenceOptions(precision="tf32").precision_on("cpu") == "fp32"
    assert InferenceOptions(precision="fp16").precision_on("cuda") == "fp16"
    with pytest.raises(ValueError, match="CUDA"):
        InferenceOptions(precision="fp16").precision_on("cpu")
    with pytest.raises(ValueError):
        InferenceOptions(precision="fp8")


def test_options_come_from_argument_then_pair_then_environment(x2, bird, monkeypatch):
    tile = bird[:64, :64]
    fp32 = tiling.downscale_array(x2, tile, 2, inference=InferenceOptions(precision="fp32"))[0]
    bf16 = tiling.downscale_array(x2, tile, 2, inference=InferenceOptions(precision="bf16"))[0]
    monkeypatch.setenv(inference.ENV_PRECISION, "bf16")
    assert np.array_equal(tiling.downscale_array(x2, tile, 2)[0], bf16)
    with using(x2, InferenceOptions(precision="fp32")):  # the pair's own options win over the environment
        assert np.array_equal(tiling.downscale_array(x2, tile, 2)[0], fp32)
    assert getattr(x2, "inference", None) is None  # restored
    other = configure(load_pair("taid-x2"), InferenceOptions(precision="fp32"))
    assert other.inference.precision == "fp32"


@pytest.mark.parametrize("up", [False, True])
def test_run_batched_equals_one_by_one(x2, up):
    """Tiles of three images in one forward call give each tile's own output, bit for bit (fp32, CPU)."""
    images = [mod_crop(read_rgb(str(SET5 / f"{n}.png")), 2) for n in ("baby", "bird", "woman")]
    size = 48 if up else 96
    tiles = [img[y:y + size, x:x + size] for img in images for y, x in ((0, 0), (40, 56))]
    step = tiling.step(x2, up)
    batched = tiling.run_batched(step, tiles)
    assert len(batched) == len(tiles)
    for tile, out in zip(tiles, batched):
        alone = tiling.run_batched(step, [tile])[0]
        whole = (tiling.upscale_array if up else tiling.downscale_array)(x2, np.ascontiguousarray(tile), 2)[0]
        assert out.shape == ((size * 2, size * 2, 3) if up else (size // 2, size // 2, 3))
        assert np.array_equal(out, alone) and np.array_equal(out, whole)


def test_run_batched_refuses_mixed_sizes(x2):
    step = tiling.step(x2, up=False)
    assert tiling.run_batched(step, []) == []
    with pytest.raises(ValueError, match="same-size"):
        tiling.run_batched(step, [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)])
