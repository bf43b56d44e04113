"""Rate-distortion: bytes actually stored per original pixel vs quality of what comes back.

    python benchmarks/rate_distortion.py [--data DIR [DIR ...]] [--limit N]

TAID rows go through the real codec (`pipeline.codec.compress_image` -> small file with its
embedded metadata -> `rehydrate_image`), so the byte counts are those an archive would hold.
Baselines code the full-resolution image with Pillow's JPEG (4:2:0, optimized), WebP and AVIF,
plus a "plain thumbnail" reference: Pillow bicubic x2 down -> lossy WebP -> bicubic up.
Quality: Y-PSNR (BT.601, no shave: every codec is judged on the whole image) and SSIM on Y,
averaged over images per setting; rate: mean bits per original pixel.

Writes benchmarks/results/rate_distortion.{json,md,png}: the curves, and BD-rate (percent bits
saved at equal Y-PSNR; negative = fewer bits) of every TAID curve against each full-image codec,
over the whole overlap and over 0.1-0.6 bpp.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bdrate import bd_rate, rate_at_equal_quality  # noqa: E402

from models.data import list_images, read_rgb  # noqa: E402
from models.metrics import psnr_y, ssim_y  # noqa: E402
from models.zoo import load_pair  # noqa: E402
from pipeline.codec import CodecOptions, compress_image, decode_output, rehydrate_image  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHARED_EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval"
LOSSY_QUALITIES = (30, 50, 70, 90)
FULL_QUALITIES = {"jpeg": (10, 20, 30, 50, 70, 85, 95), "webp": (5, 15, 30, 50, 70, 85, 95), "avif": (10, 25, 40, 55, 70, 85, 95)}
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


def measure(rows: dict, method: str, setting: str, nbytes: int, restored: np.ndarray, img: np.ndarray) -> None:
    rows[(method, setting)].append(
        {"bpp": nbytes * 8 / (img.shape[0] * img.shape[1]), "psnr_y": psnr_y(restored, img), "ssim": ssim_y(restored, img)}
    )


def run(images: list[str]) -> dict:
    rows: dict = defaultdict(list)
    pairs = {m: load_pair(m) for m in ("taid-x2", "taid-x4")}
    for i, uri in enumerate(images):
        raw = Path(uri).read_bytes() if "://" not in uri else None
        img = read_rgb(uri)
        png = io.BytesIO()
        Image.fromarray(img).save(png, "PNG")  # the codec sees an RGB file (Set14 has one grey image)
        data = png.getvalue() if raw is None or Image.open(io.BytesIO(raw)).mode != "RGB" else raw
        for model, pair in pairs.items():
            settings = [("png", 0), ("webp", 0)] + [(f, q) for f in ("webp-lossy", "jpeg") for q in LOSSY_QUALITIES]
            for fmt, q in settings:
                small, rec = compress_image(data, pair, CodecOptions(model_id=model, scale=pair.scale, small_format=fmt, quality=q or 90))
                assert rec.ok, rec.error_message
                restored = np.asarray(decode_output(rehydrate_image(small, rec, pair, output_format="png")).convert("RGB"))
                measure(rows, f"{model} {fmt}", str(q), len(small), restored, img)
        for codec, qualities in FULL_QUALITIES.items():
            for q in qualities:
                data_q = encode_full(img, codec, q)
                measure(rows, f"{codec} (full image)", str(q), len(data_q), decode(data_q), img)
        h, w = img.shape[:2]
        thumb = Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.BICUBIC)
        for q in (30, 50, 70, 90):
            buf = io.BytesIO()
            thumb.save(buf, "WEBP", quality=q, method=4)
            up = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
            measure(rows, "bicubic x2 + webp", str(q), len(buf.getvalue()), np.asarray(up), img)
        print(f"[{i + 1}/{len(images)}] {Path(uri).name}", flush=True)

    curves: dict = defaultdict(list)
    for (method, setting), vals in rows.items():
        curves[method].append(
            {"setting": setting, **{k: float(np.mean([v[k] for v in vals])) for k in ("bpp", "psnr_y", "ssim")}}
        )
    for pts in curves.values():
        pts.sort(key=lambda p: p["bpp"])
    return dict(curves)


def bd_table(curves: dict) -> list[dict]:
    table = []
    refs = [m for m in curves if m.endswith("(full image)")]
    for method, pts in curves.items():
        if not method.startswith("taid") and not method.startswith("bicubic"):
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


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for method, pts in sorted(curves.items()):
        style = "-" if "full image" in method else ("--" if method.startswith("bicubic") else "-o")
        if len(pts) == 1:
            style = "s"
        ax.plot([p["bpp"] for p in pts], [p["psnr_y"] for p in pts], style, label=method, markersize=4)
    ax.axvspan(*RATE_RANGE, color="0.9", zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("bits per original pixel (bytes stored x 8 / W x H)")
    ax.set_ylabel("Y-PSNR of the image that comes back (dB)")
    ax.set_title("Rate-distortion (grey band: 0.1-0.6 bpp)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = [str(SHARED_EVAL / "Set14")] if SHARED_EVAL.exists() else ["tests/data/Set14"]
    parser.add_argument("--data", nargs="+", default=default)
    parser.add_argument("--limit", type=int, default=None, help="first N images of each folder")
    parser.add_argument("--name", default="rate_distortion", help="output file stem under benchmarks/results/")
    args = parser.parse_args()
    images = [u for d in args.data for u in list_images([d])[: args.limit]]
    t0 = time.perf_counter()
    curves = run(images)
    table = bd_table(curves)
    report = {"data": args.data, "limit": args.limit, "n_images": len(images), "wall_s": time.perf_counter() - t0,
              "rate_range_bpp": RATE_RANGE, "curves": curves, "bd_rate": table}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    plot(curves, RESULTS / f"{args.name}.png")
    fmt = lambda v: "n/a" if v is None else f"{v:+.1f} %"  # noqa: E731
    md = [f"# Rate-distortion on {', '.join(args.data)} ({len(images)} images)", "",
          f"![curves]({args.name}.png)", "", "## Curves (mean over images)", "",
          "| method | setting | bpp | Y-PSNR | SSIM |", "|---|---|---:|---:|---:|"]
    for method, pts in sorted(curves.items()):
        md += [f"| {method} | {p['setting']} | {p['bpp']:.3f} | {p['psnr_y']:.2f} | {p['ssim']:.4f} |" for p in pts]
    md += ["", "## BD-rate at equal Y-PSNR (negative = fewer bytes than the full-image codec)", "",
           "Lossless small files give one point each: their column is the rate change at that point's own quality,",
           "n/a where the full-image codec never reaches it.", "",
           "| method | against | whole overlap | 0.1-0.6 bpp |", "|---|---|---:|---:|"]
    md += [f"| {r['method']} | {r['against']} | {fmt(r['bd_rate_all'])} | {fmt(r['bd_rate_0.1-0.6'])} |" for r in table]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[-len(table) - 4 :]))


if __name__ == "__main__":
    main()
