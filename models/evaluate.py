"""`taid eval`: reconstruction quality of a pair against bicubic / Lanczos down+up baselines.

Conventions (those of the SR papers): each original is cropped to a multiple of the scale
(bottom/right), reconstructions are rounded to 8 bits, PSNR and SSIM are reported on Y (BT.601)
with `scale` pixels shaved from every border, and PSNR also on RGB with the same shave.
`thumb_psnr_y` compares the 8-bit small image with Pillow's bicubic downscale of the same
original (no shave): is the small image still a faithful thumbnail?

With a lossy channel (`channel`/`quality`: jpeg or webp-lossy, by default a codec-aware model's
own, see the zoo's "channel" block) the small image goes through that real encoder
(models.channel) before the upscaler, the thumbnail is the *decoded* small image, `bpp` is the
coded small image's bits per original pixel (image payload only; the archive adds ~0.2 KB of
metadata per file), and the baselines code Pillow's downscale through the same channel and quality
before upscaling it. The report's `channel` is then {format, quality} (None: lossless small image).

A colour-aware grayscale pair (taid-gray, `models.networks.GrayPair`) is evaluated by
`evaluate_gray`: nothing is scaled, so no mod-crop and no shave; `psnr_rgb` / `psnr_y` / `ssim`
of the 8-bit restored colour image, `gray_vs_luma_psnr` of the 8-bit grey small image against
Pillow's BT.601 grayscale (convert("L")) of the original, and under `baseline` the same numbers
for the colorization baseline named by the zoo entry's "baseline" (taid-gray-luma: the same TAU
trained on plain luma). `baselines.gray_only` is the grey image itself as RGB (no colour at all),
averaged over the images that have colour (an all-grey one would count as infinitely good).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.channel import ChannelFormat, channel_format, pillow_encode, real_round_trip
from models.data import list_images, mod_crop, read_rgb, to_tensor
from models.metrics import psnr, psnr_y, ssim_y, to_uint8
from models.networks import GrayPair, TaskAwarePair
from models.zoo import entry_channel, load_pair, zoo_table

BASELINES = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def pil_down_up(
    img: np.ndarray, scale: int, method: Image.Resampling, channel: ChannelFormat | None = None, q: int = 90
) -> tuple[np.ndarray, np.ndarray, int]:
    """(small, restored, coded bytes) with the same Pillow filter both ways, the small image
    optionally through the lossy `channel` at quality `q` in between."""
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((w // scale, h // scale), method)
    nbytes = 0
    if channel:
        data = pillow_encode(small, channel, q)
        nbytes = len(data)
        small = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(small), np.asarray(small.resize((w, h), method)), nbytes


# Extra measures of a restored image against its original: name -> fn(restored, original) -> float.
# models/ imports nothing of pipeline/, so `taid eval` hands the perceptual measure in
# (pipeline.codec.measure: SSIMULACRA2, whole image) through `evaluate(measures=...)`.
Measures = dict


def quality_of(restored: np.ndarray, original: np.ndarray, scale: int, measures: Measures | None = None
               ) -> dict[str, float]:
    return {
        "psnr_y": psnr_y(restored, original, shave=scale),
        "psnr_rgb": psnr(restored, original, shave=scale),
        "ssim": ssim_y(restored, original, shave=scale),
        **{name: float(fn(restored, original)) for name, fn in (measures or {}).items()},
    }


@torch.no_grad()
def round_trip(
    pair: TaskAwarePair, img: np.ndarray, device: str = "cpu", channel: ChannelFormat | None = None, q: int = 90
) -> tuple[np.ndarray, np.ndarray, float]:
    """(8-bit small image as the upscaler receives it, 8-bit reconstruction, small bits per small
    pixel) of an H x W x 3 uint8 image (multiple of scale); a lossy `channel` codes the small image first."""
    x = to_tensor(img).to(device).contiguous(memory_format=torch.channels_last)
    small = pair.downscale(x)["small"]
    bits = 0.0
    if channel:
        small, bits = real_round_trip(small, channel, [q])
    return to_uint8(small), to_uint8(pair.upscale(small)["restored"]), bits


def model_channel(model: str | TaskAwarePair) -> tuple[ChannelFormat | None, int | None]:
    """A codec-aware model's own lossy channel and default quality: the loaded pair's `channel`
    (models.zoo.load_pair sets it from the zoo entry or the checkpoint), else the zoo's block."""
    block = getattr(model, "channel", None) if not isinstance(model, str) else entry_channel(zoo_table().get(model, {}))
    if not block:
        return None, None
    return channel_format(block["small_format"]), int(block["quality"])


def _mean(rows: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def evaluate(
    model: str | TaskAwarePair, data: str | list[str], device: str = "cpu", limit: int | None = None,
    channel: str | None = None, quality: int | None = None, lossless: bool = False,
    measures: Measures | None = None,
) -> dict:
    """`data` is a folder / URI of images, or an explicit list of image URIs (a held-out split).

    A codec-aware model is evaluated through its own lossy channel and default quality unless
    `channel` (jpeg or webp-lossy; "webp" is read as webp-lossy) / `quality` say otherwise or
    `lossless` is set. `measures`: more scores per image (name -> fn(restored, original)), beside
    the papers' PSNR and SSIM, e.g. SSIMULACRA2 from `taid eval`."""
    default_channel, default_q = model_channel(model)
    channel = None if lossless else (channel_format(channel) or default_channel)
    q = quality or default_q or 90
    pair = load_pair(model, device) if isinstance(model, str) else model.to(device).eval()
    pair = pair.to(memory_format=torch.channels_last)
    s = pair.scale
    uris = (list_images([data]) if isinstance(data, str) else list(data))[:limit]
    data = data if isinstance(data, str) else f"{len(uris)} listed images"
    if not uris:
        raise FileNotFoundError(f"no images under {data}")
    if isinstance(pair, GrayPair):
        if channel:
            raise ValueError("the grey pair is evaluated on its lossless small image only (no lossy channel)")
        baseline = zoo_table().get(model, {}).get("baseline") if isinstance(model, str) else None
        return evaluate_gray(pair, uris, data, device, baseline)
    rows, base_rows = [], {name: [] for name in BASELINES}
    for uri in uris:
        img = mod_crop(read_rgb(uri), s)
        small, restored, bits = round_trip(pair, img, device, channel, q)
        bicubic_small, _, _ = pil_down_up(img, s, BASELINES["bicubic"])
        row = {"name": Path(uri).stem, **quality_of(restored, img, s, measures),
               "thumb_psnr_y": psnr_y(small, bicubic_small)}
        if channel:
            row["bpp"] = bits / (s * s)
        rows.append(row)
        for name, method in BASELINES.items():
            _, base, nbytes = pil_down_up(img, s, method, channel, q)
            base_rows[name].append({**quality_of(base, img, s, measures),
                                    "bpp": nbytes * 8 / img.shape[0] / img.shape[1]})
    keys = ("psnr_y", "psnr_rgb", "ssim", *(measures or {}))
    return {
        "model": model if isinstance(model, str) else getattr(model, "model_id", "in-memory"),
        "model_sha256": getattr(pair, "weights_sha256", None),
        "scale": s,
        "data": data,
        "n_images": len(rows),
        "channel": {"format": channel, "quality": q} if channel else None,
        "conventions": f"mod-crop to {s}, 8-bit outputs, Y = BT.601 luma, shave {s} px (thumb: no shave)",
        "mean": _mean(rows, (*keys, "thumb_psnr_y", *(("bpp",) if channel else ()))),
        "images": rows,
        "baselines": {name: _mean(r, (*keys, *(("bpp",) if channel else ()))) for name, r in base_rows.items()},
    }


@torch.no_grad()
def gray_round_trip(pair: GrayPair, img: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(H x W uint8 grey small image, H x W x 3 uint8 restored colour) of an H x W x 3 uint8 image."""
    x = to_tensor(img).to(device).contiguous(memory_format=torch.channels_last)
    small = pair.downscale(x)["small"]
    return to_uint8(small)[..., 0], to_uint8(pair.upscale(small)["restored"])


def gray_quality(pair: GrayPair, img: np.ndarray, device: str = "cpu") -> dict[str, float]:
    """One image's numbers (module docstring): restored colour, and grey vs Pillow's BT.601 luma."""
    gray, restored = gray_round_trip(pair, img, device)
    luma = np.asarray(Image.fromarray(img).convert("L"))
    return {**quality_of(restored, img, 0), "gray_vs_luma_psnr": psnr(gray, luma)}


def evaluate_gray(pair: GrayPair, uris: list[str], data: str, device: str = "cpu", baseline: str | None = None) -> dict:
    keys = ("psnr_y", "psnr_rgb", "ssim")
    rows, base_rows, gray_only = [], [], []
    base = load_pair(baseline, device).to(memory_format=torch.channels_last) if baseline else None
    for uri in uris:
        img = read_rgb(uri)
        rows.append({"name": Path(uri).stem, **gray_quality(pair, img, device)})
        if not (np.all(img[..., 0] == img[..., 1]) and np.all(img[..., 1] == img[..., 2])):  # a grey one is exact (inf dB)
            gray_only.append(quality_of(np.asarray(Image.fromarray(img).convert("L").convert("RGB")), img, 0))
        if base is not None:
            base_rows.append(quality_of(gray_round_trip(base, img, device)[1], img, 0))
    mean = _mean(rows, (*keys, "gray_vs_luma_psnr"))
    return {
        "model": getattr(pair, "model_id", "in-memory"),
        "model_sha256": getattr(pair, "weights_sha256", None),
        "scale": 1,
        "data": data,
        "n_images": len(rows),
        "channel": None,
        "conventions": "colour to grey and back: no crop, no shave, 8-bit outputs, Y = BT.601 luma; "
                       "gray_vs_luma_psnr: grey small image vs Pillow convert('L')",
        **mean,
        "mean": mean,
        "images": rows,
        "baseline": {"model": baseline, "model_sha256": base.weights_sha256, **_mean(base_rows, keys)} if base else None,
        "baselines": {"gray_only": {**_mean(gray_only, keys), "n_images": len(gray_only)}} if gray_only else {},
    }


def format_table(report: dict) -> str:
    if "gray_vs_luma_psnr" in report:
        return _format_gray(report)
    lines = [f"{report['model']} x{report['scale']} on {report['data']} ({report['n_images']} images)"]
    if report.get("channel"):
        c = report["channel"]
        lines[0] += f", small image coded as {c['format']} q{c['quality']} ({report['mean']['bpp']:.3f} bpp)"
    extra = [k for k in report["mean"] if k not in ("psnr_y", "psnr_rgb", "ssim", "thumb_psnr_y", "bpp")]
    head = "".join(f"{k.upper():>13}" for k in extra)
    lines.append(f"{'image':<24}{'PSNR-Y':>9}{'PSNR-RGB':>10}{'SSIM':>8}{'thumb-Y':>9}{head}")

    def more(r: dict) -> str:
        return "".join(f"{r[k]:13.2f}" for k in extra)
    for r in report["images"]:
        lines.append(f"{r['name']:<24}{r['psnr_y']:9.2f}{r['psnr_rgb']:10.2f}{r['ssim']:8.4f}{r['thumb_psnr_y']:9.2f}"
                     f"{more(r)}")
    m = report["mean"]
    lines.append(f"{'mean':<24}{m['psnr_y']:9.2f}{m['psnr_rgb']:10.2f}{m['ssim']:8.4f}{m['thumb_psnr_y']:9.2f}{more(m)}")
    for name, b in report["baselines"].items():
        lines.append(f"{name + ' down+up':<24}{b['psnr_y']:9.2f}{b['psnr_rgb']:10.2f}{b['ssim']:8.4f}{'':>9}{more(b)}")
    return "\n".join(lines)


def _format_gray(report: dict) -> str:
    lines = [f"{report['model']} (colour to grey and back) on {report['data']} ({report['n_images']} images)",
             f"{'image':<24}{'PSNR-Y':>9}{'PSNR-RGB':>10}{'SSIM':>8}{'grey-vs-luma':>14}"]
    for r in [*report["images"], {"name": "mean", **report["mean"]}]:
        lines.append(f"{r['name']:<24}{r['psnr_y']:9.2f}{r['psnr_rgb']:10.2f}{r['ssim']:8.4f}{r['gray_vs_luma_psnr']:14.2f}")
    rows = {**({f"{report['baseline']['model']} (luma)": report["baseline"]} if report.get("baseline") else {}),
            **({"grey only": report["baselines"]["gray_only"]} if report["baselines"] else {})}
    for name, b in rows.items():
        lines.append(f"{name:<24}{b['psnr_y']:9.2f}{b['psnr_rgb']:10.2f}{b['ssim']:8.4f}{'':>14}")
    return "\n".join(lines)
