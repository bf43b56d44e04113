"""Tiled, recursive application of a TAID pair to whole images (uint8 in, uint8 out).

Recursion (the paper's extreme-scaling result): a total scale S = s**k (s = the pair's own scale)
is reached by applying the downscaler k times; every intermediate level is an 8-bit image, exactly
as `models.networks.downscale_recursive` / `upscale_recursive` do (the upscaler re-rounds to 8 bits
between steps). The caller pads the original to a multiple of S once (reflect), so every step
divides exactly.

Tiling: each step is run on overlapping tiles. A tile's *core* is `tile` full-resolution pixels on
a side (`tile // s` pixels at the small side for the upscaler, so the output tile is `tile` again);
each core is extended by a margin of `margin_small(pair)` pixels at the small resolution on every
side that is inside the image, and only the core of the output is kept. The margin is at least the
receptive field of the network (all 3x3 convolutions counted at the small resolution, which
over-counts those at higher resolutions, plus the bicubic skip's support), so every kept output
pixel sees exactly the same input as in an untiled run and tiles leave no seams. At the image
border a tile gets no margin on that side, which is exactly the untiled run's border condition.
The only possible difference left is float reassociation inside convolution kernels chosen for
other tensor shapes; measured on CPU: bit-identical output, 2000x1500 with 12 tiles and x8
recursion with odd sizes (tests/test_codec_tiling.py).

Memory bound (float32): one tile's activations, whatever the image size. For a tile side T
(full resolution), pair scale s, margin m (small pixels) and C channels, the largest live tensors
are a few C-channel maps at the small resolution, (T/s + 2m)^2 * C * 4 bytes each (plus the
s*s*C-channel map before the first PixelShuffle of an x4 upscaler), and the bicubic skip at full
resolution, 3 * (T + 2sm)^2 * 4 bytes. Measured peak RSS growth on CPU with the shipped models
(C = 48) on a 4000x3000 image: 0.07-0.24 GB at T = 512 and 0.27-0.35 GB at T = 1024 (the
default), against 0.55 GB for an *untiled* 2000x1500 image (untiled memory grows linearly with
the pixel count: about 2.3 GB at 12 MP, extrapolated). On a GPU only one tile is on the device at a time.
On top of the tile, the whole image lives as uint8 arrays on the host: decoded input (Pillow's
buffer and the numpy copy), padded input and output, about 9-15 bytes per pixel (+1 per copy for
alpha), i.e. 1.1-1.8 GB at the default limit of 120 MP (`CodecOptions.max_pixels`), plus the
encoded files; lower max_pixels to bound a worker tighter.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from models.networks import TaskAwarePair

DEFAULT_TILE = 1024


def steps_for(pair: TaskAwarePair, scale: int) -> int:
    """Number of applications of `pair` that reach `scale` (a power of pair.scale, 2 <= scale <= 128)."""
    s = int(pair.scale)
    k = round(math.log(scale, s)) if scale >= s else 0
    if k < 1 or s**k != scale or scale > 128:
        allowed = [s**i for i in range(1, 8) if s**i <= 128]
        raise ValueError(f"scale {scale} is not reachable with a x{s} pair (allowed: {allowed})")
    return k


def _count_convs(module: nn.Module) -> int:
    return sum(int(max(m.kernel_size)) // 2 for m in module.modules() if isinstance(m, nn.Conv2d))


def margin_small(pair: TaskAwarePair) -> int:
    """Tile margin in pixels at the small resolution: the larger receptive-field radius of the two
    networks (convs counted at the small resolution) + 2 for the bicubic skip + 4 to spare."""
    return max(_count_convs(pair.downscaler), _count_convs(pair.upscaler)) + 2 + 4


def _to_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """3 x h x w uint8 (CPU) -> 1 x 3 x h x w float in [0, 1] on `device`, channels_last
    (as models.evaluate.round_trip). Only one tile at a time is ever on the device."""
    return x.unsqueeze(0).to(device).float().div_(255.0).contiguous(memory_format=torch.channels_last)


def _to_uint8(y: torch.Tensor) -> torch.Tensor:
    """1 x 3 x h x w float -> 3 x h x w uint8 on the CPU (clamped and rounded like models.metrics.to_uint8)."""
    return y[0].clamp(0, 1).mul(255.0).round().to(torch.uint8).cpu()


def _run_tiled(fn, x: torch.Tensor, up: bool, s: int, core: int, margin: int) -> tuple[torch.Tensor, int]:
    """Apply fn (one scaling step) to 3 x H x W uint8 `x` tile by tile. `core` and `margin` are in
    input pixels (multiples of s when downscaling). Returns (3 x H' x W' uint8, number of tiles)."""
    _, h, w = x.shape
    oh, ow = (h * s, w * s) if up else (h // s, w // s)
    device = fn.device
    if h <= core and w <= core:
        return _to_uint8(fn(_to_float(x, device))), 1
    out = torch.empty((3, oh, ow), dtype=torch.uint8)
    n = 0
    for y0 in range(0, h, core):
        y1 = min(y0 + core, h)
        ay0, ay1 = max(0, y0 - margin), min(h, y1 + margin)
        for x0 in range(0, w, core):
            x1 = min(x0 + core, w)
            ax0, ax1 = max(0, x0 - margin), min(w, x1 + margin)
            res = _to_uint8(fn(_to_float(x[:, ay0:ay1, ax0:ax1], device)))
            if up:
                sl = res[:, (y0 - ay0) * s : (y1 - ay0) * s, (x0 - ax0) * s : (x1 - ax0) * s]
                out[:, y0 * s : y1 * s, x0 * s : x1 * s] = sl
            else:
                sl = res[:, (y0 - ay0) // s : (y1 - ay0) // s, (x0 - ax0) // s : (x1 - ax0) // s]
                out[:, y0 // s : y1 // s, x0 // s : x1 // s] = sl
            n += 1
    return out, n


def _prepare(pair: TaskAwarePair) -> TaskAwarePair:
    """Eval mode and channels_last weights, as models.evaluate.evaluate uses them. Note: this is
    in place on the caller's module (values unchanged); the other layout picks other conv kernels
    whose float rounding can move a rare pixel by one 8-bit level."""
    return pair.eval().to(memory_format=torch.channels_last)


class _Step:
    """One scaling step of the pair, as a callable that knows the pair's device."""

    def __init__(self, pair: TaskAwarePair, up: bool):
        self.pair, self.up = pair, up
        self.device = next(pair.parameters()).device

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.pair.upscale(t)["restored"] if self.up else self.pair.downscale(t)["small"]


def downscale_array(pair: TaskAwarePair, img: np.ndarray, scale: int, tile: int = DEFAULT_TILE) -> tuple[np.ndarray, int]:
    """H x W x 3 uint8 (H, W multiples of `scale`) -> (H/scale x W/scale x 3 uint8, tiles run)."""
    steps = steps_for(pair, scale)
    s = int(pair.scale)
    if img.shape[0] % scale or img.shape[1] % scale:
        raise ValueError(f"image {img.shape[:2]} is not a multiple of {scale}: pad first")
    pair = _prepare(pair)
    core = max(s, (tile // s) * s)
    margin = margin_small(pair) * s
    x = torch.from_numpy(np.require(img, np.uint8, ["C", "W"])).permute(2, 0, 1)
    total = 0
    with torch.inference_mode():
        for _ in range(steps):
            x, n = _run_tiled(_Step(pair, up=False), x, False, s, core, margin)
            total += n
    return x.permute(1, 2, 0).contiguous().numpy(), total


def upscale_array(pair: TaskAwarePair, small: np.ndarray, scale: int, tile: int = DEFAULT_TILE) -> tuple[np.ndarray, int]:
    """h x w x 3 uint8 -> (h*scale x w*scale x 3 uint8, tiles run); 8-bit rounding between steps."""
    steps = steps_for(pair, scale)
    s = int(pair.scale)
    pair = _prepare(pair)
    core = max(8, tile // s)
    margin = margin_small(pair)
    x = torch.from_numpy(np.require(small, np.uint8, ["C", "W"])).permute(2, 0, 1)
    total = 0
    with torch.inference_mode():
        for _ in range(steps):
            x, n = _run_tiled(_Step(pair, up=True), x, True, s, core, margin)
            total += n
    return x.permute(1, 2, 0).contiguous().numpy(), total


def pad_to_multiple(img: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad the bottom/right edges of an H x W (x C) array to a multiple of `multiple`.
    numpy's reflect mode reflects repeatedly when the pad exceeds the image (tiny images at x128);
    a 1-pixel axis is repeated."""
    h, w = img.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return img
    pads = [(0, ph), (0, pw)] + [(0, 0)] * (img.ndim - 2)
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(img, pads, mode=mode)
