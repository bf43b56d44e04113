"""The lossy channel of training: between the downscaler (TAD) and the upscaler (TAU) the small
image goes through a real Pillow JPEG or lossy-WebP encode/decode, as it will in the archive.

The channel's formats are spelled as the archive's small formats (`pipeline.codec.small_file`):
"jpeg" and "webp-lossy". Training configs stored before that spelled lossy WebP "webp" and called
the three settings codec / codec_quality / codec_gradient (LEGACY_KEYS); they are still read.

Forward pass: the *real* encoder, with the exact settings `pipeline.codec.small_file` uses, so the
upscaler trains on the very artefacts it will meet. Backward pass (the encoder has no gradient):

- `ste`: straight-through, the channel counts as the identity for the downscaler's gradient;
- `proxy`: the gradient of a differentiable JPEG (8x8 DCT of YCbCr, the quality-scaled IJG
  quantisation tables, soft rounding) at a matching quality, so the downscaler learns that
  high frequencies are what the channel throws away. The forward value is still the real one:
  `proxy(x) + (real(x) - proxy(x)).detach()`. WebP (VP8) is also a block-DCT codec; its proxy
  is the JPEG one at the same quality number, a rough but monotone match.

Each image of a batch gets its own quality, drawn uniformly from the training band, so one pair
serves a band of qualities without being told which (the artefacts themselves tell the upscaler).
"""

from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ChannelFormat = Literal["jpeg", "webp-lossy"]
Gradient = Literal["ste", "proxy"]
CHANNEL_FORMATS: tuple[str, ...] = ("jpeg", "webp-lossy")  # the small format a channel-trained pair's files use
LEGACY_FORMATS = {"webp": "webp-lossy"}  # stored training configs before issue 22 said "webp" for lossy WebP
# stored training configs before issue 22: old key -> TrainConfig field (weights blobs, checkpoints)
LEGACY_KEYS = {"codec": "channel", "codec_quality": "channel_quality", "codec_gradient": "channel_gradient"}


def channel_format(name: str | None) -> ChannelFormat | None:
    """A channel format as now spelled ("webp" read as "webp-lossy"); None or "" for no channel."""
    if not name:
        return None
    fmt = LEGACY_FORMATS.get(name, name)
    if fmt not in CHANNEL_FORMATS:
        raise ValueError(f"unknown channel format {name!r} (known: {', '.join(CHANNEL_FORMATS)})")
    return fmt


def channel_settings(train_config: dict) -> dict:
    """channel / channel_quality / channel_gradient of a stored training config, old keys read too."""
    out = {new: train_config[old] for old, new in LEGACY_KEYS.items() if old in train_config}
    out.update({k: train_config[k] for k in LEGACY_KEYS.values() if k in train_config})  # the new key wins
    if "channel" in out:
        out["channel"] = channel_format(out["channel"])
    return out


def pillow_encode(img: Image.Image, fmt: ChannelFormat, quality: int) -> bytes:
    """The small-file encoder settings (pipeline.codec.small_file.encode_small), without metadata."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality, subsampling=0)
    elif fmt == "webp-lossy":
        img.save(buf, "WEBP", quality=quality, method=4, exact=True)
    else:
        raise ValueError(f"unknown channel format {fmt!r} (known: {', '.join(CHANNEL_FORMATS)})")
    return buf.getvalue()


def real_round_trip(small: torch.Tensor, fmt: ChannelFormat, qualities: list[int]) -> tuple[torch.Tensor, float]:
    """Encode and decode every image of an N x 3 x h x w batch (values in [0, 1], 8-bit levels)
    at its own quality; returns the decoded batch and the mean bits per small pixel."""
    arr = (small.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out, bits = np.empty_like(arr), 0
    for i, q in enumerate(qualities):
        data = pillow_encode(Image.fromarray(arr[i]), fmt, int(q))
        bits += 8 * len(data)
        out[i] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    decoded = torch.from_numpy(out).to(small.device).permute(0, 3, 1, 2).float() / 255.0
    return decoded.contiguous(memory_format=torch.channels_last), bits / (arr.shape[0] * arr.shape[1] * arr.shape[2])


# --- differentiable JPEG (gradient path only) ----------------------------------------------------

_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


def quant_tables(quality: torch.Tensor) -> torch.Tensor:
    """IJG quality scaling of the standard tables: N qualities -> N x 3 x 64 (Y, Cb, Cr)."""
    q = quality.float().clamp(1, 100)
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)[:, None]
    base = torch.tensor([_LUMA, _CHROMA, _CHROMA], dtype=torch.float32, device=quality.device)
    return ((base[None] * scale[:, None] + 50.0) / 100.0).floor().clamp(1, 255)


def _dct_matrix(device) -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float32, device=device)
    m = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * 0.5
    m[0] /= math.sqrt(2)
    return m  # orthonormal 8-point DCT-II


def soft_round(x: torch.Tensor) -> torch.Tensor:
    """Rounding with a usable gradient (Shin & Song 2017): round(x) + (x - round(x))^3."""
    r = torch.round(x)
    return r + (x - r) ** 3


def jpeg_proxy(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Differentiable approximation of a 4:4:4 JPEG round trip of x (N x 3 x h x w in [0, 1])."""
    n, _, h, w = x.shape
    ph, pw = -h % 8, -w % 8
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    ycc = torch.stack(
        [0.299 * r + 0.587 * g + 0.114 * b, -0.168736 * r - 0.331264 * g + 0.5 * b, 0.5 * r - 0.418688 * g - 0.081312 * b],
        dim=1,
    ) * 255.0
    ycc = ycc - torch.tensor([128.0, 0.0, 0.0], device=x.device)[None, :, None, None]
    H, W = ycc.shape[-2:]
    blocks = ycc.reshape(n, 3, H // 8, 8, W // 8, 8).permute(0, 1, 2, 4, 3, 5)  # n,3,bh,bw,8,8
    d = _dct_matrix(x.device)
    coef = d @ blocks @ d.T
    table = quant_tables(quality).reshape(n, 3, 1, 1, 8, 8)
    coef = soft_round(coef / table) * table
    blocks = d.T @ coef @ d
    ycc = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, 3, H, W)
    y, cb, cr = ycc[:, 0] + 128.0, ycc[:, 1], ycc[:, 2]
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1) / 255.0
    return rgb[..., :h, :w]


class LossyChannel:
    """Callable small -> decoded small with a gradient path; `last_bpp` holds the bits per small
    pixel of the latest batch (for logging the rate the pair is being trained at)."""

    def __init__(self, fmt: str, q_min: int, q_max: int, gradient: Gradient = "ste", seed: int = 0):
        fmt = channel_format(fmt)
        if fmt is None:
            raise ValueError("a lossy channel needs a format (jpeg or webp-lossy)")
        if not 1 <= q_min <= q_max <= 100:
            raise ValueError(f"need 1 <= q_min <= q_max <= 100, got {q_min}..{q_max}")
        self.format, self.q_min, self.q_max, self.gradient = fmt, q_min, q_max, gradient
        self.rng = np.random.default_rng(seed)
        self.last_bpp = float("nan")

    def __call__(self, small: torch.Tensor, qualities: list[int] | None = None) -> torch.Tensor:
        if qualities is None:
            qualities = self.rng.integers(self.q_min, self.q_max + 1, size=small.shape[0]).tolist()
        decoded, self.last_bpp = real_round_trip(small, self.format, qualities)
        if self.gradient == "ste":
            return small + (decoded - small).detach()
        proxy = jpeg_proxy(small, torch.tensor(qualities, device=small.device))
        return proxy + (decoded - proxy).detach()
