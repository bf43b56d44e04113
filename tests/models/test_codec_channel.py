"""The lossy channel in the training loop (models.channel): the forward pass is the archive's
real small-file encoder, the backward pass is straight-through or a differentiable JPEG."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.channel import LossyChannel, jpeg_proxy, real_round_trip
from models.data import read_rgb, to_tensor
from models.metrics import psnr
from models.training import (
    TrainConfig,
    build_pair,
    make_channel,
    make_optimizer,
    train,
    train_step,
)
from pipeline.codec import small_file

from tests import DATA
SET14 = DATA / "Set14"


def _patch() -> torch.Tensor:
    return to_tensor(read_rgb(str(SET14 / "lenna.png"))[100:164, 120:200])  # 64 x 80


@pytest.mark.parametrize("fmt", ["jpeg", "webp-lossy"])
@pytest.mark.parametrize("quality", [25, 80])
def test_forward_is_the_archive_codec(fmt, quality):
    """Training must see exactly the pixels a stored small file decodes to (same format names)."""
    x = _patch()
    decoded, bpp = real_round_trip(x, fmt, [quality])
    img = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    stored, written = small_file.encode_small(img, fmt, quality, {"taid_small_file": 1})
    assert written == fmt
    want = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"))
    got = (decoded[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(got, want)
    assert 0 < bpp < 24


@pytest.mark.parametrize("quality", [10, 50, 90])
def test_jpeg_proxy_tracks_real_jpeg(quality):
    x = _patch()
    real, _ = real_round_trip(x, "jpeg", [quality])
    proxy = jpeg_proxy(x, torch.tensor([quality]))
    to8 = lambda t: (t[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    # the proxy is far closer to real JPEG than either is to the input: it models the codec's loss
    assert psnr(to8(proxy), to8(real)) > psnr(to8(real), to8(x)) + 8


def test_proxy_is_lossier_at_lower_quality():
    x = _patch()
    errs = [float((jpeg_proxy(x, torch.tensor([q])) - x).abs().mean()) for q in (10, 40, 90)]
    assert errs[0] > errs[1] > errs[2] > 0


@pytest.mark.parametrize("gradient", ["ste", "proxy"])
def test_value_is_real_codec_and_gradient_reaches_input(gradient):
    x = _patch().requires_grad_(True)
    channel = LossyChannel("webp-lossy", 40, 40, gradient=gradient)
    out = channel(x)
    real, _ = real_round_trip(x.detach(), "webp-lossy", [40])
    assert torch.allclose(out.detach(), real, atol=1e-6)
    out.sum().backward()
    if gradient == "ste":
        assert torch.allclose(x.grad, torch.ones_like(x))  # identity backward
    else:
        assert x.grad.abs().sum() > 0 and not torch.allclose(x.grad, torch.ones_like(x))


def test_each_image_draws_a_quality_in_the_band():
    channel = LossyChannel("jpeg", 20, 30, seed=1)
    qs = channel.rng.integers(20, 31, size=200)
    assert qs.min() >= 20 and qs.max() <= 30 and len(set(qs.tolist())) > 5
    with pytest.raises(ValueError):
        LossyChannel("jpeg", 50, 40)
    with pytest.raises(ValueError):
        LossyChannel("png", 50, 60)
    assert LossyChannel("webp", 50, 60).format == "webp-lossy"  # the spelling of configs before issue 22


def test_codec_training_step_teaches_the_upscaler_to_undo_the_codec():
    """A few steps with the codec in the loop lower the reconstruction loss on the batch they see."""
    torch.manual_seed(0)
    cfg = TrainConfig(scale=2, channels=16, down_blocks=1, up_blocks=2, channel="jpeg", channel_quality=(20, 20),
                      lr=2e-3, warmup_steps=1, steps=100)
    pair = build_pair(cfg)
    opt = make_optimizer(pair, cfg)
    channel = make_channel(cfg)
    x = torch.cat([_patch()[..., :64, :64], to_tensor(read_rgb(str(SET14 / "baboon.png"))[:64, :64])])
    first = train_step(pair, opt, x, cfg, 0, channel)
    for step in range(1, 100):
        last = train_step(pair, opt, x, cfg, step, channel)
    assert 0 < first["small_bpp"] < 24
    assert last["reconstruction"] < 0.93 * first["reconstruction"], (first, last)


def test_codec_run_resumes_exactly(tmp_path):
    """The codec's quality draws are part of the training state: interrupted + resumed == straight."""
    common = dict(scale=2, channels=8, down_blocks=1, up_blocks=1, data=[str(SET14)], patch=32, batch=2, steps=6,
                  warmup_steps=1, val_every=100, ckpt_every=100, holdout_every=0, channel="webp-lossy",
                  channel_quality=(10, 90))
    straight = train(TrainConfig(**common), tmp_path / "a", device="cpu", log=lambda *_: None)
    train(TrainConfig(**common), tmp_path / "b", device="cpu", log=lambda *_: None, until=3)
    resumed = train(TrainConfig(**common), tmp_path / "b", device="cpu", log=lambda *_: None)
    a = torch.load(straight, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetuning_a_codec_aware_pair_keeps_its_codec_in_the_loop():
    """pipeline.jobs.finetune builds its TrainConfig from the base pair: a codec-aware base is tuned with
    the same codec, band and gradient (and the stronger guidance), a lossless base without one."""
    from models.zoo import load_pair
    from pipeline.jobs.finetune import FinetuneConfig

    cfg = FinetuneConfig(data="s3://b/docs/", name="t", out="s3://models/")
    base = load_pair("taid-x2-webp")
    tuned = cfg.train_config(base.arch, base.channel)
    assert tuned.channel == "webp-lossy" and list(tuned.channel_quality) == base.channel["quality_band"]
    assert tuned.channel_gradient == base.channel["gradient"] and tuned.guidance_weight == 1.0
    assert make_channel(tuned) is not None
    plain = cfg.train_config(load_pair("taid-x2").arch, None)
    assert plain.channel is None and plain.guidance_weight == 0.03 and make_channel(plain) is None
    explicit = FinetuneConfig(data="s3://b/docs/", name="t", out="s3://models/", guidance_weight=0.5)
    assert explicit.train_config(base.arch, base.channel).guidance_weight == 0.5
