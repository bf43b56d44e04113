"""Bare architectures of the TAID pair (no training logic here, BasicSR-style).

Contract (CompressAI-style):
    pair.downscale(x) -> {"small": y}            x: N x 3 x H x W in [0, 1], H and W multiples of scale
    pair.upscale(y)   -> {"restored": x_hat}     y: N x 3 x H/s x W/s on 8-bit levels
    pair(x, channel)  -> {"small", "small_float", "received", "restored", "guide"}   used for training

The colour-aware grayscale pair (`GrayPair`, the paper's second task) has the same contract at
scale 1: its small image is one 8-bit grey channel (handed over as three equal channels, so the
tiling and serving code that moves H x W x 3 uint8 arrays carries it unchanged).

Both networks do their heavy work at the *small* resolution (space-to-depth first in the
downscaler, sub-pixel convolution last in the upscaler) so that a 12-megapixel photo costs
seconds on one CPU core, and both learn a residual on top of a bicubic resize, which keeps the
small image a faithful thumbnail from the first training step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def bicubic_resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bicubic resize by `factor` (<1 shrinks). Antialiased when shrinking, like Pillow's BICUBIC."""
    h, w = x.shape[-2:]
    size = (round(h * factor), round(w * factor))
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=factor < 1)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8-bit levels; the gradient passes straight through the rounding."""
    x = x.clamp(0.0, 1.0)
    return x + (torch.round(x * 255.0) / 255.0 - x).detach()


def scale_steps(scale: int) -> int:
    steps = int(math.log2(scale)) if scale > 0 else 0
    if scale < 2 or 2**steps != scale:
        raise ValueError(f"scale must be a power of two >= 2, got {scale}")
    return steps


class ResidualBlock(nn.Module):
    """EDSR residual block: conv-ReLU-conv, scaled skip, no batch norm."""

    def __init__(self, channels: int, res_scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x), inplace=True))


class TaskAwareDownscaler(nn.Module):
    """TAD: a desubpixel (space-to-depth) stage + conv per x2 step, residual blocks, conv to RGB."""

    def __init__(self, scale: int = 2, channels: int = 32, blocks: int = 4):
        super().__init__()
        self.scale = scale
        stages: list[nn.Module] = []
        in_ch = 3
        for _ in range(scale_steps(scale)):
            stages += [nn.PixelUnshuffle(2), nn.Conv2d(in_ch * 4, channels, 3, padding=1)]
            in_ch = channels
        self.desubpixel = nn.Sequential(*stages)
        self.body = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # start as exactly the bicubic thumbnail
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float small image (not yet clamped or rounded)."""
        feat = self.desubpixel(x)
        return self.tail(self.body(feat)) + bicubic_resize(x, 1.0 / self.scale)


class TaskAwareUpscaler(nn.Module):
    """TAU: EDSR-style residual blocks at the small resolution, sub-pixel convolution per x2 step."""

    def __init__(self, scale: int = 2, channels: int = 32, blocks: int = 4):
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(
            *[ResidualBlock(channels) for _ in range(blocks)],
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        steps = scale_steps(scale)
        up: list[nn.Module] = []
        for i in range(steps):
            out_ch = 3 if i == steps - 1 else channels
            up += [nn.Conv2d(channels, out_ch * 4, 3, padding=1), nn.PixelShuffle(2)]
        self.subpixel = nn.Sequential(*up)
        last = self.subpixel[-2]
        nn.init.zeros_(last.weight)  # start as exactly the bicubic upscale
        nn.init.zeros_(last.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        feat = self.head(y)
        feat = feat + self.body(feat)
        return self.subpixel(feat) + bicubic_resize(y, float(self.scale))


class TaskAwarePair(nn.Module):
    """The jointly trained auto-encoder: TAD makes an 8-bit small image, TAU restores the original."""

    def __init__(self, scale: int = 2, channels: int = 32, down_blocks: int = 4, up_blocks: int = 4):
        super().__init__()
        self.scale = scale
        self.arch = {"scale": scale, "channels": channels, "down_blocks": down_blocks, "up_blocks": up_blocks}
        self.downscaler = TaskAwareDownscaler(scale, channels, down_blocks)
        self.upscaler = TaskAwareUpscaler(scale, channels, up_blocks)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W, got {tuple(x.shape)}")
        if x.shape[-2] % self.scale or x.shape[-1] % self.scale:
            raise ValueError(f"H and W must be multiples of {self.scale}, got {tuple(x.shape[-2:])} (pad first)")

    def downscale(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check(x)
        return {"small": quantize_8bit(self.downscaler(x))}

    def upscale(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"restored": self.upscaler(y).clamp(0.0, 1.0)}

    def forward(self, x: torch.Tensor, channel=None) -> dict[str, torch.Tensor]:
        """`channel` (optional) maps the 8-bit small image to what the upscaler will receive, e.g.
        a lossy JPEG or WebP round trip (models.channel.LossyChannel); the guidance still sees
        the small image before the channel: that is what the encoder is given."""
        self._check(x)
        small_float = self.downscaler(x)
        small = quantize_8bit(small_float)
        received = channel(small) if channel is not None else small
        return {
            "small": small,
            "small_float": small_float,
            "received": received,
            "restored": self.upscaler(received),
            "guide": bicubic_resize(x, 1.0 / self.scale),
        }


def bt601_luma(x: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W RGB -> N x 1 x H x W full-range BT.601 luma (what Pillow's convert("L") gives)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _pad_even(x: torch.Tensor) -> torch.Tensor:
    """Replicate-pad bottom/right to even H and W (the grey networks work on 2 x 2 blocks)."""
    ph, pw = x.shape[-2] % 2, x.shape[-1] % 2
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


class ColorToGray(nn.Module):
    """Grey TAD: space-to-depth (2 x 2 blocks), residual blocks, depth-to-space to one channel, on
    top of BT.601 luma (zero-initialised tail: it starts as the plain grayscale conversion)."""

    def __init__(self, channels: int = 32, blocks: int = 3):
        super().__init__()
        self.head = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, channels, 3, padding=1))
        self.body = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])
        self.tail = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.PixelShuffle(2))
        nn.init.zeros_(self.tail[0].weight)
        nn.init.zeros_(self.tail[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(self.head(x))) + bt601_luma(x)


class LumaDownscaler(nn.Module):
    """The colorization baseline's "TAD": plain BT.601 luma, nothing learned."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bt601_luma(x)


class GrayToColor(nn.Module):
    """Grey TAU: space-to-depth, residual blocks, depth-to-space to RGB, on top of the grey image
    repeated in R, G and B (zero-initialised tail)."""

    def __init__(self, channels: int = 32, blocks: int = 6):
        super().__init__()
        self.head = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4, channels, 3, padding=1))
        self.body = nn.Sequential(
            *[ResidualBlock(channels) for _ in range(blocks)],
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.tail = nn.Sequential(nn.Conv2d(channels, 12, 3, padding=1), nn.PixelShuffle(2))
        nn.init.zeros_(self.tail[0].weight)
        nn.init.zeros_(self.tail[0].bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        feat = self.head(y)
        feat = feat + self.body(feat)
        return self.tail(feat) + y.expand(-1, 3, -1, -1)


GRAY_TASKS = ("gray", "luma")  # the taid-gray pair; its colorization baseline (luma in, TAU only)


class GrayPair(nn.Module):
    """Colour-aware grayscale: TAD hides the colours in an ordinary-looking 8-bit grey image, TAU
    restores them. task="luma" is the baseline: the same TAU on plain BT.601 luma (colorization).

    `scale` is 1 (no spatial scaling); `small_channels` 1 tells the codec to store one channel;
    `feature_stride` 2: the convolutions run on 2 x 2 blocks, so a tile margin counted in
    convolutions is twice that many pixels (pipeline.codec.tiling.margin_small)."""

    scale = 1
    small_channels = 1
    feature_stride = 2

    def __init__(self, channels: int = 32, down_blocks: int = 3, up_blocks: int = 6, task: str = "gray"):
        super().__init__()
        if task not in GRAY_TASKS:
            raise ValueError(f"task must be one of {GRAY_TASKS}, got {task!r}")
        self.arch = {"task": task, "scale": 1, "channels": channels, "down_blocks": down_blocks, "up_blocks": up_blocks}
        self.downscaler = ColorToGray(channels, down_blocks) if task == "gray" else LumaDownscaler()
        self.upscaler = GrayToColor(channels, up_blocks)

    def downscale(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """RGB -> {"small": the 8-bit grey image in three equal channels}."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        small = quantize_8bit(self.downscaler(_pad_even(x)))[..., :h, :w]
        return {"small": small.expand(-1, 3, -1, -1)}

    def upscale(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Grey (N x 1, or N x 3 equal channels) -> {"restored": RGB}."""
        h, w = y.shape[-2:]
        restored = self.upscaler(_pad_even(y[:, :1]))[..., :h, :w]
        return {"restored": restored.clamp(0.0, 1.0)}

    def forward(self, x: torch.Tensor, channel=None) -> dict[str, torch.Tensor]:
        """Training pass (H, W even); "guide" is the BT.601 luma the grey image is held close to."""
        if channel is not None:
            raise ValueError("the grey pair is trained without a lossy channel")
        small_float = self.downscaler(x)
        small = quantize_8bit(small_float)
        return {
            "small": small,
            "small_float": small_float,
            "received": small,
            "restored": self.upscaler(small),
            "guide": bt601_luma(x),
        }


def pair_from_config(config: dict) -> nn.Module:
    """The network a checkpoint's `config` describes: a grey pair when it names a grey task."""
    if config.get("task") in GRAY_TASKS:
        return GrayPair(config["channels"], config["down_blocks"], config["up_blocks"], config["task"])
    return TaskAwarePair(config["scale"], config["channels"], config["down_blocks"], config["up_blocks"])


@torch.no_grad()
def downscale_recursive(pair: TaskAwarePair, x: torch.Tensor, times: int) -> list[torch.Tensor]:
    """Apply the pair's downscaler `times` times (x2 pair, times=7 -> x128); returns every level.

    Each level is an 8-bit image; the caller stores only the last one. The input to every step
    must be a multiple of the pair's scale: pad the original to a multiple of scale**times first.
    """
    levels = []
    for _ in range(times):
        x = pair.downscale(x)["small"]
        levels.append(x)
    return levels


@torch.no_grad()
def upscale_recursive(pair: TaskAwarePair, y: torch.Tensor, times: int) -> torch.Tensor:
    """Inverse of downscale_recursive: upscale `times` times, re-rounding to 8 bits in between
    (the intermediate images the downscaler saw were 8-bit too)."""
    for i in range(times):
        y = pair.upscale(y)["restored"]
        if i < times - 1:
            y = torch.round(y * 255.0) / 255.0
    return y
