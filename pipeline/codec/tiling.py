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
recursion with odd sizes (tests/codec/test_codec_tiling.py).

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
from pipeline.codec.inference import InferenceOptions, autocast, options_for, set_backend_flags
from pipeline.codec.options import DEFAULT_TILE  # noqa: F401  (defined with the options, which stay torch-free)


def steps_for(pair: TaskAwarePair, scale: int) -> int:
    """Number of applications of `pair` that reach `scale` (a power of pair.scale, 2 <= scale <= 128)."""
    s = int(pair.scale)
    if s == 1:  # a colour-only pair (taid-gray): one application, no spatial scaling
        if scale != 1:
            raise ValueError(f"scale {scale} is not reachable with a colour-only (x1) pair (allowed: [1])")
        return 1
    k = round(math.log(scale, s)) if scale >= s else 0
    if k < 1 or s**k != scale or scale > 128:
        allowed = [s**i for i in range(1, 8) if s**i <= 128]
        raise ValueError(f"scale {scale} is not reachable with a x{s} pair (allowed: {allowed})")
    return k


def _count_convs(module: nn.Module) -> int:
    return sum(int(max(m.kernel_size)) // 2 for m in module.modules() if isinstance(m, nn.Conv2d))


def margin_small(pair: TaskAwarePair) -> int:
    """Tile margin in pixels at the small resolution: the larger receptive-field radius of the two
    networks (convs counted at the small resolution; times the pair's `feature_stride` where its
    convs run on blocks of pixels, as the grey pair's) + 2 for the bicubic skip + 4 to spare."""
    convs = max(_count_convs(pair.downscaler), _count_convs(pair.upscaler)) * getattr(pair, "feature_stride", 1)
    return convs + 2 + 4


def _to_float(x: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """N x 3 x h x w uint8 (CPU) -> float in [0, 1] on `device`, channels_last by default (as
    models.evaluate.round_trip). Only one tile (or one batch of tiles) is ever on the device."""
    y = x.to(device).float().div_(255.0)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y.contiguous()


def _to_uint8(y: torch.Tensor) -> torch.Tensor:
    """N x 3 x h x w float -> uint8 on the CPU (clamped and rounded like models.metrics.to_uint8)."""
    return y.clamp(0, 1).mul(255.0).round().to(torch.uint8).cpu()


def _run_tiled(fn: "Step", x: torch.Tensor, up: bool, s: int, core: int, margin: int) -> tuple[torch.Tensor, int]:
    """Apply fn (one scaling step) to 3 x H x W uint8 `x` tile by tile. `core` and `margin` are in
    input pixels (multiples of s when downscaling). Returns (3 x H' x W' uint8, number of tiles)."""
    _, h, w = x.shape
    oh, ow = (h * s, w * s) if up else (h // s, w // s)
    if h <= core and w <= core:
        return fn.run_uint8(x[None])[0], 1
    out = torch.empty((3, oh, ow), dtype=torch.uint8)
    n = 0
    for y0 in range(0, h, core):
        y1 = min(y0 + core, h)
        ay0, ay1 = max(0, y0 - margin), min(h, y1 + margin)
        for x0 in range(0, w, core):
            x1 = min(x0 + core, w)
            ax0, ax1 = max(0, x0 - margin), min(w, x1 + margin)
            res = fn.run_uint8(x[None, :, ay0:ay1, ax0:ax1])[0]
            if up:
                sl = res[:, (y0 - ay0) * s : (y1 - ay0) * s, (x0 - ax0) * s : (x1 - ax0) * s]
                out[:, y0 * s : y1 * s, x0 * s : x1 * s] = sl
            else:
                sl = res[:, (y0 - ay0) // s : (y1 - ay0) // s, (x0 - ax0) // s : (x1 - ax0) // s]
                out[:, y0 // s : y1 // s, x0 // s : x1 // s] = sl
            n += 1
    return out, n


def _prepare(pair: TaskAwarePair, options: InferenceOptions) -> TaskAwarePair:
    """Eval mode and channels_last weights, as models.evaluate.evaluate uses them. Note: this is
    in place on the caller's module (values unchanged); the other layout picks other conv kernels
    whose float rounding can move a rare pixel by one 8-bit level. With channels_last off the
    weights are left in whatever layout they have."""
    pair = pair.eval()
    return pair.to(memory_format=torch.channels_last) if options.channels_last else pair


class Step:
    """One scaling step of the pair (TAD when not `up`, TAU when `up`), as a callable that knows
    the pair's device and runs at the options' precision (pipeline.codec.inference)."""

    def __init__(self, pair: TaskAwarePair, up: bool, inference: InferenceOptions | None = None):
        self.options = options_for(pair, inference)
        self.pair, self.up = _prepare(pair, self.options), up
        self.device = next(pair.parameters()).device
        self.precision = self.options.precision_on(self.device)
        set_backend_flags(self.device, self.precision)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """Float N x 3 x h x w on the device -> float32 output (8-bit levels for TAD)."""
        with autocast(self.device, self.precision):
            out = self.pair.upscale(t)["restored"] if self.up else self.pair.downscale(t)["small"]
        return out.float()

    def run_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x h x w uint8 (CPU) -> N x 3 x h' x w' uint8 (CPU), one forward call."""
        with torch.inference_mode():
            return _to_uint8(self(_to_float(x, self.device, self.options.channels_last)))


def step(pair: TaskAwarePair, up: bool, inference: InferenceOptions | None = None) -> Step:
    """TAU (`up`) or TAD of `pair` as a Step, for run_batched."""
    remote = getattr(pair, "remote", None)
    if remote is not None and inference is None:  # bound to a model actor: pipeline.runtime.model_server.bind
        return remote.step(pair, up)
    return Step(pair, up, inference)


def run_batched(step: Step, tiles: list[np.ndarray]) -> list[np.ndarray]:
    """Run one step over same-size h x w x 3 uint8 tiles (from any number of images) in one forward
    call, the tiles stacked on the batch axis: small photos fill a GPU batch instead of running one
    by one. Returns each tile's output (h' x w' x 3 uint8), in order. Convolutions treat batch items
    independently, so each output equals the tile run alone (bit-identical in fp32 on a CPU:
    tests/codec/test_inference_options.py). Tiles must be multiples of the scale for TAD, and the caller
    adds margins (margin_small) if the tiles are cut from larger images."""
    if not tiles:
        return []
    shapes = {t.shape for t in tiles}
    if len(shapes) != 1 or len(tiles[0].shape) != 3 or tiles[0].shape[2] != 3:
        raise ValueError(f"run_batched needs same-size h x w x 3 tiles, got shapes {sorted(shapes)}")
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
    out = step.run_uint8(x).permute(0, 2, 3, 1)
    return [np.ascontiguousarray(o) for o in out.numpy()]


def downscale_array(pair: TaskAwarePair, img: np.ndarray, scale: int, tile: int = DEFAULT_TILE,
                    inference: InferenceOptions | None = None) -> tuple[np.ndarray, int]:
    """H x W x 3 uint8 (H, W multiples of `scale`) -> (H/scale x W/scale x 3 uint8, tiles run).
    `inference`: precision and layout (pipeline.codec.inference); None = the pair's own, else the default."""
    return _apply(step(pair, False, inference), img, scale, tile)


def upscale_array(pair: TaskAwarePair, small: np.ndarray, scale: int, tile: int = DEFAULT_TILE,
                  inference: InferenceOptions | None = None) -> tuple[np.ndarray, int]:
    """h x w x 3 uint8 -> (h*scale x w*scale x 3 uint8, tiles run); 8-bit rounding between steps."""
    return _apply(step(pair, True, inference), small, scale, tile)


def _apply(fn: Step, arr: np.ndarray, scale: int, tile: int) -> tuple[np.ndarray, int]:
    """`fn` applied recursively until `scale` is reached, each step tiled (module docstring)."""
    steps = steps_for(fn.pair, scale)
    s = int(fn.pair.scale)
    if not fn.up and (arr.shape[0] % scale or arr.shape[1] % scale):
        raise ValueError(f"image {arr.shape[:2]} is not a multiple of {scale}: pad first")
    if fn.up:  # core and margin in input pixels: the small side for TAU, full resolution for TAD
        core, margin = max(8, tile // s), margin_small(fn.pair)
    else:
        core, margin = max(s, (tile // s) * s), margin_small(fn.pair) * s
    x = torch.from_numpy(np.require(arr, np.uint8, ["C", "W"])).permute(2, 0, 1)
    total = 0
    for _ in range(steps):
        x, n = _run_tiled(fn, x, fn.up, s, core, margin)
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
