"""The training loop of the TAID pair, shared by `taid train` and the Ray Train fine-tuning job.

The per-step pieces (`build_pair`, `make_optimizer`, `learning_rate`, `train_step`, `validate`)
are plain functions so a Ray Train `train_loop_per_worker` can call them on a DDP-wrapped pair
without copying them; `train` is the single-process driver around them.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import AliasChoices, BaseModel, Field, field_validator

from models.channel import LEGACY_KEYS, ChannelFormat, LossyChannel, channel_format, real_round_trip
from models.data import (
    PatchSampler,
    list_images,
    mod_crop,
    read_rgb,
    split_holdout,
    to_tensor,
)
from models.losses import taid_loss
from models.metrics import psnr, psnr_y, to_uint8
from models.networks import GRAY_TASKS, GrayPair, TaskAwarePair, bicubic_resize, bt601_luma

logger = logging.getLogger(__name__)


def _old(field: str) -> list[str]:
    return [old for old, new in LEGACY_KEYS.items() if new == field]


class TrainConfig(BaseModel):
    """Everything that determines a training run (stored inside every checkpoint)."""

    task: Literal["scale", "gray", "luma"] = Field(
        "scale", description="scale: the x2/x4 pair; gray: colour-aware grayscale; luma: its colorization baseline"
    )
    scale: int = Field(2, description="2 or 4 (a power of two)")
    channels: int = 48
    down_blocks: int = 4
    up_blocks: int = 8
    guidance_weight: float = Field(0.02, description="lambda of the L1 guidance to the bicubic thumbnail")
    data: list[str] = Field(default_factory=list, description="image folders, files or fsspec URIs")
    holdout_every: int = Field(20, description="every n-th image is held out for validation (0: none)")
    patch: int = Field(128, description="high-resolution patch side")
    batch: int = 32
    steps: int = 20000
    lr: float = 5e-4
    warmup_steps: int = 500
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    val_every: int = 1000
    ckpt_every: int = 1000
    minutes: float | None = Field(None, description="wall-clock budget: shrink `steps` to fit it")
    init_from: str | None = Field(None, description="weights (zoo name or .pt) to start from, e.g. for fine-tuning")
    # the lossy channel between TAD and TAU (models.channel); stored configs before issue 22 named
    # these codec / codec_quality / codec_gradient and said "webp": still read, written anew
    channel: ChannelFormat | None = Field(
        None, validation_alias=AliasChoices("channel", *_old("channel")),
        description="lossy channel in the loop: jpeg or webp-lossy (None: lossless small image)")
    channel_quality: tuple[int, int] = Field(
        (30, 90), validation_alias=AliasChoices("channel_quality", *_old("channel_quality")),
        description="the channel's quality band; each image draws one uniformly")
    channel_gradient: Literal["ste", "proxy"] = Field(
        "ste", validation_alias=AliasChoices("channel_gradient", *_old("channel_gradient")),
        description="gradient path around the channel")

    @field_validator("channel", mode="before")
    @classmethod
    def _channel_spelling(cls, value):
        return channel_format(value)


def build_pair(cfg: TrainConfig) -> TaskAwarePair | GrayPair:
    if cfg.task in GRAY_TASKS:
        return GrayPair(cfg.channels, cfg.down_blocks, cfg.up_blocks, cfg.task)
    return TaskAwarePair(cfg.scale, cfg.channels, cfg.down_blocks, cfg.up_blocks)


def make_channel(cfg: TrainConfig) -> LossyChannel | None:
    """The lossy round trip between downscaler and upscaler, or None for a lossless pair."""
    if cfg.channel is None:
        return None
    return LossyChannel(cfg.channel, *cfg.channel_quality, gradient=cfg.channel_gradient, seed=cfg.seed)


def make_optimizer(pair: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(pair.parameters(), lr=cfg.lr, betas=(0.9, 0.99))


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train_step(
    pair: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, cfg: TrainConfig, step: int,
    channel: LossyChannel | None = None,
) -> dict[str, float]:
    """One optimisation step on a batch of high-resolution patches; `pair` may be DDP-wrapped."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, cfg)
    pair.train()
    losses = taid_loss(pair(x, channel) if channel is not None else pair(x), x, cfg.guidance_weight)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(pair.parameters(), cfg.grad_clip)
    optimizer.step()
    out = {k: float(v.detach()) for k, v in losses.items()}
    if channel is not None:
        out["small_bpp"] = channel.last_bpp
    return out


@torch.no_grad()
def validate(
    pair: TaskAwarePair, images: list[np.ndarray], device: str = "cpu", cfg: TrainConfig | None = None
) -> dict[str, float]:
    """Mean Y-PSNR of the 8-bit reconstruction and of the small image against bicubic (shave = scale).

    With a lossy channel (cfg.channel) the small image goes through the real encoder at the low
    end, middle and top of the quality band; `psnr_y` / `thumb_psnr_y` are then the means over
    those three (what checkpoints are compared on) and each quality also reports its own numbers
    and the small file's bits per *original* pixel."""
    if isinstance(pair, GrayPair):
        return validate_gray(pair, images, device)
    pair.eval()
    s = pair.scale
    qualities: list[int | None] = [None]
    if cfg is not None and cfg.channel:
        lo, hi = cfg.channel_quality
        qualities = sorted({lo, (lo + hi) // 2, hi})
    per_q: dict = {q: {"rec": [], "thumb": [], "bpp": []} for q in qualities}
    for img in images:
        img = mod_crop(img, s)
        x = to_tensor(img).to(device).contiguous(memory_format=torch.channels_last)
        small = pair.downscale(x)["small"]
        guide = to_uint8(bicubic_resize(x, 1.0 / s))
        for q in qualities:
            received, bpp = (small, 0.0) if q is None else real_round_trip(small, cfg.channel, [q])
            restored = pair.upscale(received)["restored"]
            per_q[q]["rec"].append(psnr_y(to_uint8(restored), img, shave=s))
            per_q[q]["thumb"].append(psnr_y(to_uint8(received), guide, shave=1))
            per_q[q]["bpp"].append(bpp / (s * s))
    out = {
        "psnr_y": float(np.mean([np.mean(v["rec"]) for v in per_q.values()])),
        "thumb_psnr_y": float(np.mean([np.mean(v["thumb"]) for v in per_q.values()])),
    }
    for q, v in per_q.items():
        if q is not None:
            out.update({f"psnr_y_q{q}": float(np.mean(v["rec"])), f"thumb_psnr_y_q{q}": float(np.mean(v["thumb"])),
                        f"bpp_q{q}": float(np.mean(v["bpp"]))})
    return out


@torch.no_grad()
def validate_gray(pair: GrayPair, images: list[np.ndarray], device: str = "cpu") -> dict[str, float]:
    """Mean PSNR (RGB and Y) of the 8-bit restored colour image, and of the grey small image
    against BT.601 luma rounded to 8 bits (no shave: nothing is scaled)."""
    pair.eval()
    rgb, y, gray = [], [], []
    for img in images:
        x = to_tensor(img).to(device).contiguous(memory_format=torch.channels_last)
        small = pair.downscale(x)["small"]
        restored = to_uint8(pair.upscale(small)["restored"])
        rgb.append(psnr(restored, img))
        y.append(psnr_y(restored, img))
        gray.append(psnr(to_uint8(small[:, :1]), to_uint8(bt601_luma(x))))
    return {"psnr_y": float(np.mean(y)), "psnr_rgb": float(np.mean(rgb)), "gray_vs_luma_psnr": float(np.mean(gray))}


def save_training_state(
    path: Path, pair, optimizer, cfg: TrainConfig, step: int, sampler, history, channel: LossyChannel | None = None
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "config": cfg.model_dump(),
            "step": step,
            "state_dict": pair.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.state(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
            **({"channel_rng": channel.rng.bit_generator.state} if channel is not None else {}),
        },
        tmp,
    )
    os.replace(tmp, path)  # atomic: a kill mid-save never leaves a broken "last.pt"


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    device: str | None = None,
    resume: bool = True,
    log=None,
    until: int | None = None,
) -> Path:
    """Train (or resume) a pair; writes out_dir/last.pt and out_dir/history.jsonl. Returns last.pt.

    `until` stops (with a checkpoint) at that step without changing the schedule, so a long run
    can be done in chunks across sessions and resumed exactly."""
    log = log or logger.info  # progress lines: the `models` logger unless the caller takes them
    from tqdm import tqdm

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    torch.manual_seed(cfg.seed)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick the fastest kernels

    uris = list_images(cfg.data)
    train_uris, val_uris = split_holdout(uris, cfg.holdout_every)
    log(f"{len(train_uris)} training images, {len(val_uris)} held out for validation, device {device}")
    sampler = PatchSampler([read_rgb(u) for u in train_uris], cfg.patch, cfg.batch, cfg.seed, device)
    val_images = [read_rgb(u) for u in val_uris]

    pair = build_pair(cfg).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(pair, cfg)
    channel = make_channel(cfg)
    step, history = 0, []
    if resume and last.exists():
        state = torch.load(last, map_location=device, weights_only=True)
        stored = TrainConfig(**state["config"])
        arch = ("task", "scale", "channels", "down_blocks", "up_blocks")
        if any(getattr(stored, k) != getattr(cfg, k) for k in arch):
            raise ValueError(f"{last} holds a different architecture: {stored.model_dump(include=set(arch))}")
        pair.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if channel is not None and "channel_rng" in state:
            channel.rng.bit_generator.state = state["channel_rng"]
        step, history = state["step"], state["history"]
        log(f"resumed from {last} at step {step}/{cfg.steps}")
    elif cfg.init_from:
        from models.zoo import load_pair

        pair.load_state_dict(load_pair(cfg.init_from).state_dict())

    start_step = step
    deadline = time.monotonic() + cfg.minutes * 60 if cfg.minutes else None
    timed_from, timed_steps = None, 0
    bar = tqdm(total=cfg.steps, initial=step, desc=f"taid x{cfg.scale}" if cfg.task == "scale" else f"taid {cfg.task}", mininterval=5, dynamic_ncols=True)
    with open(out / "history.jsonl", "a") as hist:
        while step < cfg.steps:
            losses = train_step(pair, optimizer, sampler.sample(), cfg, step, channel)
            step += 1
            bar.update(1)
            if step - start_step == 50:
                timed_from = time.monotonic()
            elif timed_from is not None:
                timed_steps += 1
            # With a time budget, fix the schedule length once the step time is known, so the
            # cosine decay still reaches its end; the shrunk `steps` is stored for reproduction.
            if deadline and timed_steps == 300:
                per_step = (time.monotonic() - timed_from) / timed_steps
                fit = step + int((deadline - time.monotonic()) / per_step * 0.9)
                if fit < cfg.steps:
                    cfg = cfg.model_copy(update={"steps": fit})
                    bar.total = fit
                    log(f"time budget: {per_step * 1000:.1f} ms/step, schedule shortened to {fit} steps")
            stopping = (deadline is not None and time.monotonic() > deadline) or step == until
            if step % cfg.val_every == 0 or step == cfg.steps or stopping:
                metrics = validate(pair, val_images, device, cfg) if val_images else {}
                row = {"step": step, "lr": learning_rate(step - 1, cfg), **losses, **metrics}
                history.append(row)
                hist.write(f"{row}\n".replace("'", '"'))
                hist.flush()
                bar.set_postfix({k: round(v, 3) for k, v in row.items()
                                 if k in ("loss", "psnr_y", "psnr_rgb", "thumb_psnr_y", "gray_vs_luma_psnr", "small_bpp")})
            if step % cfg.ckpt_every == 0 or step == cfg.steps or stopping:
                save_training_state(last, pair, optimizer, cfg, step, sampler, history, channel)
            if stopping:
                log(f"stopped at step {step} of {cfg.steps}; run again to resume")
                break
    bar.close()
    return last
