"""Tiling: a 2000x1500 image tiled vs untiled (within 0.05 dB; in fact bit-identical), and seams."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import psnr
from models.zoo import load_pair
from pipeline.codec import tiling
from pipeline.codec.options import CodecOptions
from pipeline.codec.image import compress_image, decode_output, rehydrate_image
from tests.codec.test_codec import encode, smooth_rgb


@pytest.fixture(scope="module")
def x4():
    return load_pair("taid-x4")


def test_tiled_equals_untiled_on_2000x1500(x4):
    img = smooth_rgb(1500, 2000)
    data = encode(img)
    results = {}
    for tile in (4096, 512):  # one tile vs 4 x 3 tiles of 512 (interior tiles have margins on all sides)
        small, _, rec = compress_image(data, x4, CodecOptions(model_id="taid-x4", scale=4, tile=tile))
        assert rec.status == "ok"
        out = np.asarray(decode_output(rehydrate_image(small, rec, x4, tile=tile)))
        results[tile] = (small, rec.tiles, out, psnr(out, img))
    assert results[4096][1] == 1 and results[512][1] == 12
    diff_db = abs(results[4096][3] - results[512][3])
    assert diff_db < 0.05, diff_db
    # stronger: the receptive-field margin makes tiles exact, so the outputs are the same pixels
    assert results[4096][0] == results[512][0]
    assert np.array_equal(results[4096][2], results[512][2])


def test_no_seams_with_recursion_and_odd_sizes():
    """x8 by recursion of the x2 pair, an odd-sized image and tiles that do not divide it."""
    x2 = load_pair("taid-x2")
    img = smooth_rgb(203, 317)
    padded = tiling.pad_to_multiple(img, 8)
    a, n_a = tiling.downscale_array(x2, padded, 8, tile=4096)
    b, n_b = tiling.downscale_array(x2, padded, 8, tile=128)
    assert n_a == 3 and n_b > 6
    assert np.array_equal(a, b)
    ua, _ = tiling.upscale_array(x2, a, 8, tile=4096)
    ub, n_ub = tiling.upscale_array(x2, a, 8, tile=128)
    assert n_ub > 6 and np.array_equal(ua, ub)


def test_tile_margin_covers_receptive_field():
    """Perturbing one input pixel changes the output only within the margin (so margins suffice)."""
    import torch

    x2 = load_pair("taid-x2")
    m = tiling.margin_small(x2)
    img = smooth_rgb(256, 256)
    a, _ = tiling.downscale_array(x2, img, 2, tile=4096)
    img2 = img.copy()
    img2[128, 128] = 255 - img2[128, 128]
    b, _ = tiling.downscale_array(x2, img2, 2, tile=4096)
    ys, xs = np.nonzero(np.any(a != b, axis=2))
    assert len(ys) and max(abs(ys - 64).max(), abs(xs - 64).max()) <= m
    with torch.inference_mode():
        y = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
        y2 = y.clone()
        y2[0, :, 64, 64] = 1 - y2[0, :, 64, 64]
        d = (x2.upscale(y)["restored"] - x2.upscale(y2)["restored"]).abs().amax(dim=1)[0]
    ys, xs = torch.nonzero(d > 0, as_tuple=True)
    assert max((ys - 128).abs().max().item(), (xs - 128).abs().max().item()) <= m * 2


def test_pad_to_multiple_reflects_and_steps_for():
    img = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    padded = tiling.pad_to_multiple(img, 8)
    assert padded.shape == (8, 8, 3)
    assert np.array_equal(padded[:2, :5], img)  # the original stays top-left, cropped back exactly
    assert np.array_equal(padded[:2, 5], img[:, 3]) and np.array_equal(padded[2, :5], img[0])  # reflect, no edge repeat
    assert np.array_equal(tiling.pad_to_multiple(np.zeros((1, 1, 3), np.uint8) + 7, 128), np.full((128, 128, 3), 7))
    assert tiling.pad_to_multiple(img, 1) is img
    x2, x4 = load_pair("taid-x2"), load_pair("taid-x4")
    assert [tiling.steps_for(x2, s) for s in (2, 4, 8, 128)] == [1, 2, 3, 7]
    assert [tiling.steps_for(x4, s) for s in (4, 16, 64)] == [1, 2, 3]
    for bad in (1, 3, 6, 256):
        with pytest.raises(ValueError):
            tiling.steps_for(x2, bad)
    with pytest.raises(ValueError):
        tiling.steps_for(x4, 2)
