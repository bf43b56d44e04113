"""The model pair: contract, 8-bit small images, recursion, weights integrity, determinism, training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import PatchSampler, read_rgb, to_tensor
from models.metrics import psnr, psnr_y, ssim_y, to_uint8
from models.networks import TaskAwarePair, downscale_recursive, upscale_recursive
from models.training import TrainConfig, learning_rate, train
from models.zoo import WEIGHTS_DIR, WeightsError, load_pair, sha256_file, zoo_table

from tests import DATA
SET5 = DATA / "Set5"


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("hw", [(32, 48), (36, 20)])
def test_contract_shapes(scale, hw):
    pair = TaskAwarePair(scale, channels=8, down_blocks=1, up_blocks=1).eval()
    h, w = hw[0] // scale * scale, hw[1] // scale * scale
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        small = pair.downscale(x)["small"]
        restored = pair.upscale(small)["restored"]
        out = pair(x)
    assert small.shape == (2, 3, h // scale, w // scale)
    assert restored.shape == x.shape
    assert set(out) == {"small", "small_float", "received", "restored", "guide"}
    assert out["received"] is out["small"]  # no channel: the upscaler sees the 8-bit small image itself
    assert out["guide"].shape == small.shape


@pytest.mark.parametrize("scale", [2, 4])
def test_sizes_not_a_multiple_of_scale_are_refused(scale):
    pair = TaskAwarePair(scale, channels=8, down_blocks=1, up_blocks=1)
    with pytest.raises(ValueError, match="multiples of"):
        pair.downscale(torch.rand(1, 3, 4 * scale + 1, 4 * scale))


@pytest.mark.parametrize("model", ["taid-x2", "taid-x4"])
def test_small_image_is_exact_8bit_levels(model):
    pair = load_pair(model)
    x = to_tensor(read_rgb(str(SET5 / "butterfly.png")))
    with torch.no_grad():
        small = pair.downscale(x)["small"]
    levels = small * 255.0
    assert torch.equal(levels, levels.round())
    assert small.min() >= 0 and small.max() <= 1


def test_straight_through_gradient_reaches_the_downscaler():
    pair = TaskAwarePair(2, channels=8, down_blocks=1, up_blocks=1)
    torch.nn.init.normal_(pair.upscaler.subpixel[-2].weight, std=0.01)  # zero-init tail would block it
    x = torch.rand(1, 3, 16, 16)
    pair(x)["restored"].mean().backward()
    grads = [p.grad for p in pair.downscaler.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_recursive_x8_round_trip_beats_bicubic():
    pair = load_pair("taid-x2")
    img = read_rgb(str(SET5 / "baby.png"))  # 512 x 512, a multiple of 8
    x = to_tensor(img)
    levels = downscale_recursive(pair, x, 3)
    assert [lv.shape[-1] for lv in levels] == [256, 128, 64]
    assert torch.equal(levels[-1] * 255, (levels[-1] * 255).round())
    restored = to_uint8(upscale_recursive(pair, levels[-1], 3))
    assert restored.shape == img.shape
    bicubic = torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(x, scale_factor=1 / 8, mode="bicubic", antialias=True),
        scale_factor=8,
        mode="bicubic",
    )
    assert psnr_y(restored, img, 8) > psnr_y(to_uint8(bicubic), img, 8) + 1.0


def test_inference_is_deterministic():
    pair = load_pair("taid-x2")
    x = to_tensor(read_rgb(str(SET5 / "bird.png")))
    with torch.no_grad():
        a = pair.upscale(pair.downscale(x)["small"])["restored"]
        b = pair.upscale(pair.downscale(x)["small"])["restored"]
    assert torch.equal(a, b)


def test_zoo_entries_match_their_files():
    table = zoo_table()
    assert {"taid-x2", "taid-x4"} <= set(table)
    for model_id, entry in table.items():
        path = WEIGHTS_DIR / entry["file"]
        assert entry["file"] == f"{model_id}-{entry['sha256'][:8]}.pt"
        assert sha256_file(path) == entry["sha256"]
        assert path.stat().st_size < 10 * 2**20


def test_corrupted_weights_are_refused(tmp_path):
    entry = zoo_table()["taid-x2"]
    bad = tmp_path / entry["file"]
    shutil.copy(WEIGHTS_DIR / entry["file"], bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="expected"):
        load_pair(str(bad), expected_sha256=entry["sha256"])
    with pytest.raises(WeightsError, match="does not match the name"):
        load_pair(str(bad))


def test_truncated_weights_with_a_matching_name_are_refused(tmp_path):
    import hashlib

    blob = (WEIGHTS_DIR / zoo_table()["taid-x4"]["file"]).read_bytes()[:5000]
    sha = hashlib.sha256(blob).hexdigest()
    path = tmp_path / f"taid-x4-{sha[:8]}.pt"
    path.write_bytes(blob)
    with pytest.raises(WeightsError, match="not a loadable TAID pair"):
        load_pair(str(path))


def test_unknown_model_is_refused():
    with pytest.raises(WeightsError, match="unknown model"):
        load_pair("taid-x3")


def test_metrics_known_values():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # one channel of one pixel off by the full range
    assert psnr(a, b) == pytest.approx(10 * np.log10(8 * 8 * 3), abs=1e-9)
    assert psnr(a, b, shave=1) == float("inf")
    img = read_rgb(str(SET5 / "head.png"))
    assert ssim_y(img, img) == pytest.approx(1.0)
    assert ssim_y(img, np.clip(img.astype(int) + 40, 0, 255).astype(np.uint8)) < 0.99


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, min_lr_ratio=0.01)
    assert learning_rate(0, cfg) == pytest.approx(1e-4)
    assert learning_rate(9, cfg) == pytest.approx(1e-3)
    assert learning_rate(60, cfg) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert learning_rate(110, cfg) == pytest.approx(1e-5)


def test_patch_sampler_shapes_and_reproducibility():
    img = read_rgb(str(SET5 / "bird.png"))
    a = PatchSampler([img], patch=32, batch=4, seed=3).sample()
    b = PatchSampler([img], patch=32, batch=4, seed=3).sample()
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
    with pytest.raises(ValueError, match="at least"):
        PatchSampler([img[:16]], patch=32, batch=4, seed=0)


def _tiny_config(tmp_path: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        scale=2, channels=8, down_blocks=1, up_blocks=1, data=[str(SET5)], holdout_every=5,
        patch=32, batch=2, steps=steps, warmup_steps=2, val_every=2, ckpt_every=2,
    )


def test_training_resume_equals_uninterrupted_run(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        straight = torch.load(train(_tiny_config(tmp_path, 6), tmp_path / "a", "cpu", log=lambda *_: None), weights_only=True)
        train(_tiny_config(tmp_path, 6), tmp_path / "b", "cpu", log=lambda *_: None, until=3)
        resumed = torch.load(train(_tiny_config(tmp_path, 6), tmp_path / "b", "cpu", log=lambda *_: None), weights_only=True)
    finally:
        torch.use_deterministic_algorithms(False)
    assert straight["step"] == resumed["step"] == 6
    for k, v in straight["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k
    history = [json.loads(line) for line in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 3, 4, 6]
    assert all(np.isfinite(h["psnr_y"]) and h["thumb_psnr_y"] > 30 for h in history)


def test_resume_with_another_architecture_is_refused(tmp_path):
    train(_tiny_config(tmp_path, 2), tmp_path / "c", "cpu", log=lambda *_: None)
    other = _tiny_config(tmp_path, 4).model_copy(update={"channels": 16})
    with pytest.raises(ValueError, match="different architecture"):
        train(other, tmp_path / "c", "cpu", log=lambda *_: None)
