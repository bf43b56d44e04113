"""How a TAID pair runs: numeric precision, memory layout and compilation (issue 17).

    options = InferenceOptions(precision="bf16")
    configure(pair, options)                 # the pair carries them: every tiling call uses them
    small, tiles = tiling.downscale_array(pair, img, 4)

Precision (`precision`):
- `fp32`: IEEE float32 everywhere; on CUDA TF32 is switched off too (PyTorch lets cuDNN use TF32
  for float32 convolutions by default, which is not fp32). On a CPU this is exactly what the codec
  has always done: pixel-identical to `models.evaluate.round_trip` (tests/codec/test_codec_set14.py).
- `tf32`: float32 tensors, TF32 tensor-core convolutions (CUDA only; on a CPU it means fp32).
- `bf16` / `fp16`: `torch.autocast` on the pair's device (fp16 on CUDA only: CPU autocast has no
  fp16 convolutions worth having). Only the networks' convolutions run in the low precision; the
  bicubic skip, the clamp and the rounding to 8-bit levels stay float32 (see `_forward`), so the
  small image and the reconstruction are still exact 8-bit levels of a slightly different float.
- `auto` (the default): `fp32` on a CPU, GPU_DEFAULT on CUDA.

GPU_DEFAULT is chosen by benchmarks/inference_precision.py (bf16 vs fp32 round trips on Set5 +
Set14, CPU autocast as the stand-in for the GPU's bf16): see docs/gpu.md for the numbers.

`channels_last` (default on) keeps the layout the codec has always used; `compile` wraps both
networks in `torch.compile` (off by default: on a CPU it did not pay, and its fused kernels are not
pixel-identical to eager: docs/gpu.md).

Exact fidelity does not depend on any of this: its layer is the source itself (pipeline/codec/layer.py).

Where the options come from, first found wins: the `inference=` argument of the tiling functions,
the pair's `inference` attribute (`configure`), the TAID_PRECISION environment variable (so an
operator can switch a running deployment's actors without a code change), the default.
"""

from __future__ import annotations

import contextlib
from typing import Literal

from pydantic import BaseModel, Field

Precision = Literal["auto", "fp32", "tf32", "bf16", "fp16"]
# bf16 costs 0.011 dB (taid-x2) and 0.002 dB (taid-x4) of mean Y-PSNR on Set5 + Set14, 0.029 dB on
# the worst image (benchmarks/results/inference_precision.md): far below what anyone sees, for
# tensor-core speed on a GPU. fp32 stays the CPU default (pixel-exact with taid eval).
GPU_DEFAULT: str = "bf16"
# Rehydrating on another numeric path than the one that compressed (GPU vs CPU, bf16 vs fp32):
# the largest Y-PSNR drop and per-pixel difference (8-bit levels) a lossy fidelity archive may show.
# Measured with bf16 vs fp32 on a CPU (the harsher proxy): 0.015 dB and 2 levels (TAU alone: 3);
# tests/codec/test_cross_device.py asserts these bounds, benchmarks/gpu.py measures the real GPU vs CPU.
CROSS_DEVICE_MAX_PSNR_DROP_DB = 0.05
CROSS_DEVICE_MAX_ABS_DIFF = 4
ENV_PRECISION = "TAID_PRECISION"  # read through pipeline.settings
_AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}  # torch dtypes by name: importing this module loads no torch


class InferenceOptions(BaseModel):
    precision: Precision = Field("auto", description="auto = fp32 on a CPU, GPU_DEFAULT on CUDA")
    channels_last: bool = Field(True, description="NHWC tensors and weights (what the codec has always used)")
    compile: bool = Field(False, description="torch.compile both networks (did not pay on a CPU: docs/gpu.md)")

    @classmethod
    def from_env(cls) -> "InferenceOptions":
        """The default options, with the TAID_PRECISION setting's precision when it is set."""
        from pipeline.settings import get_settings

        value = get_settings().precision
        return cls(precision=value) if value else cls()

    def precision_on(self, device: torch.device | str) -> str:
        """The concrete precision on `device` (never `auto`); ValueError for fp16 off CUDA."""
        kind = device.split(":")[0] if isinstance(device, str) else device.type
        if self.precision == "auto":
            return GPU_DEFAULT if kind == "cuda" else "fp32"
        if self.precision == "fp16" and kind != "cuda":
            raise ValueError("fp16 inference needs a CUDA device (use bf16 or fp32 on a CPU)")
        if self.precision == "tf32" and kind != "cuda":
            return "fp32"
        return self.precision


def options_for(pair, inference: InferenceOptions | None = None) -> InferenceOptions:
    """The options a call uses: the argument, else the pair's own (`configure`), else from_env()."""
    return inference or getattr(pair, "inference", None) or InferenceOptions.from_env()


def configure(pair, options: InferenceOptions):
    """Attach `options` to `pair` (in place; returns it), compiling its networks if asked: a worker
    calls this once after models.zoo.load_pair, and every later tiling call runs that way."""
    pair.inference = options
    if options.compile and not getattr(pair, "_taid_compiled", False):
        pair.downscaler.compile(dynamic=True)  # tiles vary in size: one graph for all shapes
        pair.upscaler.compile(dynamic=True)
        pair._taid_compiled = True
    return pair


def set_backend_flags(device: torch.device, precision: str) -> None:
    """On CUDA, TF32 on for `tf32` and off otherwise (process-wide: a worker runs one precision)."""
    if device.type == "cuda":
        import torch

        tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32


def autocast(device: torch.device, precision: str):
    """The context a forward pass runs in: torch.autocast for bf16/fp16, nothing otherwise."""
    dtype = _AUTOCAST.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


@contextlib.contextmanager
def using(pairs, options: InferenceOptions):
    """Run `pairs` (one pair or several) at `options` inside the block, then restore what they had:
    benchmarks and tests compare numeric paths on the same loaded pair."""
    pairs = [pairs] if hasattr(pairs, "upscaler") else list(pairs)
    saved = [getattr(p, "inference", None) for p in pairs]
    for p in pairs:
        p.inference = options
    try:
        yield
    finally:
        for p, s in zip(pairs, saved):
            p.inference = s
