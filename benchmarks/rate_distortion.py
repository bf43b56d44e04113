"""Rate-distortion: bytes actually stored per original pixel vs quality of what comes back.

    python benchmarks/rate_distortion.py [--data DIR [DIR ...]] [--models ID ...] [--limit N] [--workers 2]

TAID rows go through the real codec (`pipeline.codec.image.compress_image` -> small file with its
embedded metadata -> `rehydrate_image`), so the byte counts are those an archive would hold.
Codec-aware pairs (zoo entries with a "channel" block) are swept over qualities in their own small
format; lossless pairs give their PNG point plus a lossy-WebP sweep (to show why #9 exists).
Baselines code the full-resolution image with Pillow's JPEG (4:2:0, optimized), WebP and AVIF down
to their lowest qualities (so the curves overlap 0.1-0.6 bpp), plus "plain thumbnail" references:
Pillow bicubic x2 / x4 down -> lossy WebP -> bicubic up.

Quality: Y-PSNR (BT.601, no shave: every codec is judged on the whole image) and SSIM on Y of the
rehydrated image, and for TAID rows the thumbnail's Y-PSNR (the decoded small file against
Pillow's bicubic downscale). Per setting the values are averaged over all images of all folders
(and per folder in the JSON); rate = mean bits per original pixel.

Writes benchmarks/results/<name>.{json,md,png}: curves, and BD-rate (percent bits at equal
Y-PSNR; negative = fewer bits) of every TAID curve, and of the best-of-scales envelopes, against
each full-image codec over the whole overlap and over 0.1-0.6 bpp.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bdrate import bd_rate, rate_at_equal_quality

from models.data import list_images, read_rgb
from models.metrics import psnr_y, ssim_y
from models.zoo import entry_channel, load_pair, zoo_table

RESULTS = Path(__file__).parent / "results"
SHARED_EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval"
CODEC_AWARE_QUALITIES = (10, 20, 35, 50, 65, 80, 95)
LOSSLESS_MODEL_LOSSY = ("webp-lossy", (30, 70))
FULL_QUALITIES = {
    "jpeg": (1, 3, 5, 8, 12, 20, 30, 50, 70, 90),
    "webp": (0, 3, 8, 15, 25, 40, 60, 80, 95),
    "avif": (1, 5, 12, 25, 40, 55, 70, 85),
}
THUMB_QUALITIES = (10, 30, 50, 70, 90)
RATE_RANGE = (0.1, 0.6)


def encode_full(img: np.ndarray, codec: str, q: int) -> bytes:
    buf = io.BytesIO()
    pil = Image.fromarray(img)
    if codec == "jpeg":
        pil.save(buf, "JPEG", quality=q, optimize=True)
    elif codec == "webp":
        pil.save(buf, "WEBP", quality=q, method=4)
    else:
        pil.save(buf, "AVIF", quality=q)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@functools.cache
def model_channel(model: str) -> dict | None:
    """The zoo's channel block of `model` (None: a lossless pair or not a zoo model); read once."""
    return entry_channel(zoo_table().get(model, {}))


def model_settings(model: str) -> list[tuple[str, int | None]]:
    """(small_format, quality) points for one model: its own channel's format swept, or PNG + a lossy sweep."""
    channel = model_channel(model)
    if channel:
        return [(channel["small_format"], q) for q in CODEC_AWARE_QUALITIES]
    fmt, qualities = LOSSLESS_MODEL_LOSSY
    return [("png", None)] + [(fmt, q) for q in qualities]


def _point(nbytes: int, restored: np.ndarray, img: np.ndarray, thumb: float | None = None) -> dict:
    row = {"bpp": nbytes * 8 / (img.shape[0] * img.shape[1]), "psnr_y": psnr_y(restored, img), "ssim": ssim_y(restored, img)}
    if thumb is not None:
        row["thumb_psnr_y"] = thumb
    return row


def _bicubic_thumb(img: np.ndarray, scale: int) -> np.ndarray:
    """Pillow bicubic of the image reflect-padded to a multiple of scale: the codec's geometry."""
    from pipeline.codec.tiling import pad_to_multiple

    padded = pad_to_multiple(img, scale)
    h, w = padded.shape[:2]
    return np.asarray(Image.fromarray(padded).resize((w // scale, h // scale), Image.Resampling.BICUBIC))


_PAIRS: dict = {}


def _init_worker(models: list[str]) -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: the image loop parallelises better than the convs
    for m in models:
        _PAIRS[m] = load_pair(m)


def measure_image(uri: str) -> dict:
    """Every (method, setting) point for one image."""
    from pipeline.codec.options import CodecOptions
    from pipeline.codec.image import compress_image, decode_output, rehydrate_image

    img = read_rgb(uri)
    png = io.BytesIO()
    Image.fromarray(img).save(png, "PNG")  # the codec sees an RGB file (Set14 has one grey image)
    data = png.getvalue()
    out: dict = {}
    for model, pair in _PAIRS.items():
        thumb_ref = _bicubic_thumb(img, pair.scale)
        for fmt, q in model_settings(model):
            opts = CodecOptions(model_id=model, scale=pair.scale, small_format=fmt, quality=q or 90)
            small, _, rec = compress_image(data, pair, opts)
            assert rec.ok, rec.error_message
            restored = np.asarray(decode_output(rehydrate_image(small, rec, pair, restored_format="png")).convert("RGB"))
            thumb = psnr_y(np.asarray(Image.open(io.BytesIO(small)).convert("RGB")), thumb_ref)
            out[(f"{model} {fmt}", str(q or 0))] = _point(len(small), restored, img, thumb)
    for codec, qualities in FULL_QUALITIES.items():
        for q in qualities:
            coded = encode_full(img, codec, q)
            out[(f"{codec} (full image)", str(q))] = _point(len(coded), decode(coded), img)
    h, w = img.shape[:2]
    for s in (2, 4):
        thumb = Image.fromarray(img).resize((w // s, h // s), Image.Resampling.BICUBIC)
        for q in THUMB_QUALITIES:
            buf = io.BytesIO()
            thumb.save(buf, "WEBP", quality=q, method=4)
            up = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
            out[(f"bicubic x{s} + webp", str(q))] = _point(len(buf.getvalue()), np.asarray(up), img)
    return out


def average(per_image: list[dict]) -> dict[str, list[dict]]:
    """{method: [mean point per setting, sorted by bpp]}."""
    acc: dict = defaultdict(list)
    for points in per_image:
        for key, p in points.items():
            acc[key].append(p)
    curves: dict = defaultdict(list)
    for (method, setting), vals in acc.items():
        curves[method].append({"setting": setting, **{k: float(np.mean([v[k] for v in vals])) for k in vals[0]}})
    for pts in curves.values():
        pts.sort(key=lambda p: p["bpp"])
    return dict(curves)


def add_envelopes(curves: dict) -> dict:
    """Best of the codec-aware scales per small format: a user picks the scale per target rate,
    so the union of points (dominated ones drop out in BD-rate) is the product's curve."""
    by_format: dict = defaultdict(list)
    for method, pts in curves.items():
        model, _, fmt = method.partition(" ")
        if model_channel(model):
            by_format[fmt].extend({**p, "setting": f"{model} q{p['setting']}"} for p in pts)
    for fmt, pts in by_format.items():
        curves[f"taid best-of-scales {fmt}"] = sorted(pts, key=lambda p: p["bpp"])
    return curves


def bd_table(curves: dict) -> list[dict]:
    table = []
    refs = [m for m in curves if m.endswith("(full image)")]
    for method, pts in curves.items():
        if not method.startswith(("taid", "bicubic")):
            continue
        for ref in refs:
            a = [(p["bpp"], p["psnr_y"]) for p in curves[ref]]
            b = [(p["bpp"], p["psnr_y"]) for p in pts]
            if len(b) == 1:  # a lossless setting: one point, compared at its own quality
                row = {"bd_rate_all": rate_at_equal_quality(a, b[0]), "bd_rate_0.1-0.6": None}
            else:
                row = {"bd_rate_all": bd_rate(a, b), "bd_rate_0.1-0.6": bd_rate(a, b, RATE_RANGE)}
            table.append({"method": method, "against": ref, **row})
    return table


def settings_table(curves: dict) -> list[dict]:
    """Per codec-aware setting: its point, and the rate change against each full-image codec at
    that setting's own Y-PSNR (None where that codec's curve does not reach it): which setting to
    pick for a target rate or quality."""
    refs = [m for m in curves if m.endswith("(full image)")]
    rows = []
    for method, pts in curves.items():
        if "best-of-scales" in method or not model_channel(method.split(" ")[0]):
            continue
        for p in pts:
            vs = {ref.split(" ")[0]: rate_at_equal_quality([(r["bpp"], r["psnr_y"]) for r in curves[ref]],
                                                           (p["bpp"], p["psnr_y"])) for ref in refs}
            rows.append({"method": method, **p, "vs": vs})
    return sorted(rows, key=lambda r: r["bpp"])


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    for ax, key, label in ((axes[0], "psnr_y", "Y-PSNR (dB)"), (axes[1], "ssim", "SSIM (Y)")):
        for method, pts in sorted(curves.items()):
            if "best-of-scales" in method:
                continue
            if "full image" in method:
                style = "-"
            elif method.startswith("bicubic"):
                style = ":"
            elif model_channel(method.split(" ")[0]):
                style = "-o"
            else:
                style = "--x"
            if len(pts) == 1:
                style = "s"
            ax.plot([p["bpp"] for p in pts], [p[key] for p in pts], style, label=method, markersize=3,
                    linewidth=2 if style == "-o" else 1)
        ax.axvspan(*RATE_RANGE, color="0.92", zorder=0)
        ax.set_xscale("log")
        ax.set_xlim(0.05, 5)
        ax.set_xlabel("bits per original pixel (bytes stored x 8 / W x H)")
        ax.set_ylabel(f"{label} of the image that comes back")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title(title)
    axes[1].legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def default_models() -> list[str]:
    table = zoo_table()
    return [m for m in ("taid-x2", "taid-x4", "taid-x2-webp", "taid-x4-webp", "taid-x4-jpeg", "taid-x2-jpeg") if m in table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = [str(SHARED_EVAL / s) for s in ("Set14", "B100")] if SHARED_EVAL.exists() else ["tests/data/Set14"]
    parser.add_argument("--data", nargs="+", default=default)
    parser.add_argument("--models", nargs="+", default=None, help="zoo ids (default: every shipped pair)")
    parser.add_argument("--limit", type=int, default=None, help="first N images of each folder")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--name", default="rate_distortion", help="output file stem under benchmarks/results/")
    args = parser.parse_args()
    models = args.models or default_models()
    folders = {d: list_images([d])[: args.limit] for d in args.data}
    images = [u for us in folders.values() for u in us]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=_init_worker, initargs=(models,)) as pool:
        per_image = []
        for i, points in enumerate(pool.map(measure_image, images, chunksize=1)):
            per_image.append(points)
            print(f"[{i + 1}/{len(images)}] {Path(images[i]).name}", flush=True)
    curves = add_envelopes(average(per_image))
    table = bd_table(curves)
    per_folder, start = {}, 0
    for d, us in folders.items():
        fc = add_envelopes(average(per_image[start : start + len(us)]))
        per_folder[d] = {"n_images": len(us), "curves": fc, "bd_rate": bd_table(fc)}
        start += len(us)
    report = {"data": args.data, "models": models, "limit": args.limit, "n_images": len(images),
              "wall_s": time.perf_counter() - t0, "rate_range_bpp": RATE_RANGE, "curves": curves, "bd_rate": table, "settings": settings_table(curves),
              "per_folder": per_folder}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    names = " + ".join(Path(d).name for d in args.data)
    plot(curves, RESULTS / f"{args.name}.png", f"{names} ({len(images)} images); grey band: 0.1-0.6 bpp")
    (RESULTS / f"{args.name}.md").write_text(markdown(report, names, args.name))
    print(markdown_bd(table, per_folder))


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:+.1f} %"


def markdown_bd(table: list[dict], per_folder: dict) -> str:
    md = ["| method | against | whole overlap | 0.1-0.6 bpp | " + " | ".join(f"0.1-0.6, {Path(d).name}" for d in per_folder) + " |",
          "|---|---|---:|---:|" + "---:|" * len(per_folder)]
    for i, r in enumerate(table):
        cols = [_fmt(f["bd_rate"][i]["bd_rate_0.1-0.6"]) for f in per_folder.values()]
        md.append(f"| {r['method']} | {r['against']} | {_fmt(r['bd_rate_all'])} | {_fmt(r['bd_rate_0.1-0.6'])} | " + " | ".join(cols) + " |")
    return "\n".join(md)


def markdown(report: dict, names: str, stem: str) -> str:
    curves = report["curves"]
    md = [f"# Rate-distortion on {names} ({report['n_images']} images)", "",
          (f"`python benchmarks/rate_distortion.py` ({report['wall_s'] / 60:.1f} min). Every byte counted is a byte "
           "stored: TAID small files include their embedded metadata."), "", f"![curves]({stem}.png)", "",
          "## BD-rate at equal Y-PSNR (negative = fewer bytes than the full-image codec)", "",
          ("Lossless small files give one point each: their column is the rate change at that point's own quality, "
           "n/a where the full-image codec never reaches it. Best-of-scales = the union of the x2 and x4 points "
           "of one small format (pick the scale per target rate)."), "", markdown_bd(report["bd_rate"], report["per_folder"]), "",
          "## Codec-aware settings: rate change at equal Y-PSNR against each full-image codec", "",
          ("Each row is one (model, quality) setting of a codec-aware pair; negative = the TAID small file needs fewer "
           "bytes than that codec needs for the same Y-PSNR (n/a: the codec's tested qualities do not reach that "
           "quality). Thumbnail = decoded small file vs Pillow bicubic."), "",
          "| model | quality | bpp | Y-PSNR | SSIM | thumbnail Y-PSNR | vs JPEG | vs WebP | vs AVIF |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
          *[f"| {r['method']} | {r['setting']} | {r['bpp']:.3f} | {r['psnr_y']:.2f} | {r['ssim']:.4f} | "
            f"{r['thumb_psnr_y']:.2f} | {_fmt(r['vs'].get('jpeg'))} | {_fmt(r['vs'].get('webp'))} | "
            f"{_fmt(r['vs'].get('avif'))} |" for r in report["settings"]], "",
          "## Curves (mean over all images)", "",
          "| method | setting | bpp | Y-PSNR | SSIM | thumbnail Y-PSNR |", "|---|---|---:|---:|---:|---:|"]
    for method, pts in sorted(curves.items()):
        if "best-of-scales" in method:
            continue
        md += [f"| {method} | {p['setting']} | {p['bpp']:.3f} | {p['psnr_y']:.2f} | {p['ssim']:.4f} | "
               f"{p['thumb_psnr_y']:.2f} |" if "thumb_psnr_y" in p else
               f"| {method} | {p['setting']} | {p['bpp']:.3f} | {p['psnr_y']:.2f} | {p['ssim']:.4f} | |" for p in pts]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
