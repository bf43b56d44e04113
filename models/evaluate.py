"""`taid eval`: reconstruction quality of a pair against bicubic / Lanczos down+up baselines.

Conventions (those of the SR papers): each original is cropped to a multiple of the scale
(bottom/right), reconstructions are rounded to 8 bits, PSNR and SSIM are reported on Y (BT.601)
with `scale` pixels shaved from every border, and PSNR also on RGB with the same shave.
`thumb_psnr_y` compares the 8-bit small image with Pillow's bicubic downscale of the same
original (no shave): is the small image still a faithful thumbnail?
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.data import list_images, mod_crop, read_rgb, to_tensor
from models.metrics import psnr, psnr_y, ssim_y, to_uint8
from models.networks import TaskAwarePair
from models.zoo import load_pair

BASELINES = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def pil_down_up(img: np.ndarray, scale: int, method: Image.Resampling) -> tuple[np.ndarray, np.ndarray]:
    """(small, restored) with the same Pillow filter both ways."""
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((w // scale, h // scale), method)
    return np.asarray(small), np.asarray(small.resize((w, h), method))


def quality(restored: np.ndarray, original: np.ndarray, scale: int) -> dict[str, float]:
    return {
        "psnr_y": psnr_y(restored, original, shave=scale),
        "psnr_rgb": psnr(restored, original, shave=scale),
        "ssim": ssim_y(restored, original, shave=scale),
    }


@torch.no_grad()
def round_trip(pair: TaskAwarePair, img: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(8-bit small image, 8-bit reconstruction) of an H x W x 3 uint8 image (multiple of scale)."""
    x = to_tensor(img).to(device).contiguous(memory_format=torch.channels_last)
    small = pair.downscale(x)["small"]
    return to_uint8(small), to_uint8(pair.upscale(small)["restored"])


def _mean(rows: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def evaluate(
    model: str | TaskAwarePair, data: str | list[str], device: str = "cpu", limit: int | None = None
) -> dict:
    """`data` is a folder / URI of images, or an explicit list of image URIs (a held-out split)."""
    pair = load_pair(model, device) if isinstance(model, str) else model.to(device).eval()
    pair = pair.to(memory_format=torch.channels_last)
    s = pair.scale
    uris = (list_images([data]) if isinstance(data, str) else list(data))[:limit]
    data = data if isinstance(data, str) else f"{len(uris)} listed images"
    if not uris:
        raise FileNotFoundError(f"no images under {data}")
    rows, base_rows = [], {name: [] for name in BASELINES}
    for uri in uris:
        img = mod_crop(read_rgb(uri), s)
        small, restored = round_trip(pair, img, device)
        bicubic_small, _ = pil_down_up(img, s, BASELINES["bicubic"])
        rows.append({"name": Path(uri).stem, **quality(restored, img, s), "thumb_psnr_y": psnr_y(small, bicubic_small)})
        for name, method in BASELINES.items():
            base_rows[name].append(quality(pil_down_up(img, s, method)[1], img, s))
    keys = ("psnr_y", "psnr_rgb", "ssim")
    return {
        "model": model if isinstance(model, str) else getattr(model, "model_id", "in-memory"),
        "model_sha256": getattr(pair, "weights_sha256", None),
        "scale": s,
        "data": data,
        "n_images": len(rows),
        "conventions": f"mod-crop to {s}, 8-bit outputs, Y = BT.601 luma, shave {s} px (thumb: no shave)",
        "mean": _mean(rows, (*keys, "thumb_psnr_y")),
        "images": rows,
        "baselines": {name: _mean(r, keys) for name, r in base_rows.items()},
    }


def format_table(report: dict) -> str:
    lines = [f"{report['model']} x{report['scale']} on {report['data']} ({report['n_images']} images)"]
    lines.append(f"{'image':<24}{'PSNR-Y':>9}{'PSNR-RGB':>10}{'SSIM':>8}{'thumb-Y':>9}")
    for r in report["images"]:
        lines.append(f"{r['name']:<24}{r['psnr_y']:9.2f}{r['psnr_rgb']:10.2f}{r['ssim']:8.4f}{r['thumb_psnr_y']:9.2f}")
    m = report["mean"]
    lines.append(f"{'mean':<24}{m['psnr_y']:9.2f}{m['psnr_rgb']:10.2f}{m['ssim']:8.4f}{m['thumb_psnr_y']:9.2f}")
    for name, b in report["baselines"].items():
        lines.append(f"{name + ' down+up':<24}{b['psnr_y']:9.2f}{b['psnr_rgb']:10.2f}{b['ssim']:8.4f}{'':>9}")
    return "\n".join(lines)
