"""Fidelity presets on phone-like JPEG sources: bytes against the source and against AVIF/WebP of
the full image at the same Y-PSNR, guaranteed fidelity, thumbnails.

    python benchmarks/fidelity.py [--data DIR ...] [--every N] [--targets 32 34 ...] [--out DIR]

Sources: the evaluation sets (never tuned on: presets were chosen on held-out training photos),
re-encoded as JPEG at quality 85, 90 and 95 in turn (Pillow, 4:2:0: what cameras and phones
write). The pristine PNG is kept to report fidelity against it too.

Per image and target, the real codec (`pipeline.codec.fidelity.compress_to_target`) picks and verifies
a representation; bytes are everything stored (small file with its metadata + enhancement layer).
Side by side, on the decoded source: full-image AVIF (Pillow, 4:2:0, speed 6, delta-q off: the
layer's own settings; and at Pillow's defaults) and WebP quality sweeps, interpolated (log-rate, piecewise linear) at the Y-PSNR our
representation reached; and "AVIF + preview": that AVIF plus a separate preview of our small
file's size (Pillow bicubic downscale, WebP at the small file's quality).

Writes <out>/fidelity.{json,md,png}: per target the mean ratios, the share of images at or above
target, thumbnail PSNR; RD curves and BD-rate against AVIF and WebP over 32-42 dB.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bdrate import bd_rate  # noqa: E402
from models.metrics import psnr_y  # noqa: E402
from models.zoo import load_pair  # noqa: E402
from pipeline.codec import image as codec, tiling  # noqa: E402
from pipeline.codec.layer import avif_settings  # noqa: E402
from pipeline.codec.fidelity import PRESETS, compress_to_target, fidelity_psnr, resolve_fidelity  # noqa: E402

SOURCE_QUALITIES = (85, 90, 95)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"


def encode(arr: np.ndarray, fmt: str, q: int) -> bytes:
    """Full-image baselines. AVIF: the layer's own settings (pipeline.codec.layer.avif_settings);
    AVIF-default: Pillow's defaults (4:2:0, speed 6, libaom's perceptual delta-q on)."""
    buf = io.BytesIO()
    if fmt == "AVIF":  # quality 0..100 onto the layer's 64 levels
        Image.fromarray(arr).save(buf, "AVIF", **avif_settings(round(q * 63 / 100)))
        return buf.getvalue()
    kw = {"AVIF-default": {}, "WEBP": {"method": 4}, "JPEG": {}}[fmt]
    Image.fromarray(arr).save(buf, fmt.split("-")[0], quality=q, **kw)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def curve(src: np.ndarray, fmt: str, scale: int) -> list[tuple[int, float]]:
    qs = range(20, 100, 4) if fmt.startswith("AVIF") else range(20, 101, 5)
    return [(len(d), fidelity_psnr(decode(d), src, scale)) for d in (encode(src, fmt, q) for q in qs)]


def bytes_at(points: list[tuple[int, float]], target: float) -> float | None:
    """Bytes a codec's sweep needs for `target` dB (log-linear between the two qualities around it)."""
    pts = sorted(points, key=lambda p: p[1])
    best = None
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if p0 <= target <= p1 and p1 > p0:
            t = (target - p0) / (p1 - p0)
            v = math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
            best = v if best is None else min(best, v)
    return best


def images(folders: list[Path], every: int) -> list[Path]:
    files = [p for d in folders for p in sorted(d.iterdir()) if p.suffix.lower() in (".png", ".bmp")]
    return files[::every]


def measure(path: Path, i: int, specs: dict, pairs: dict) -> dict:
    pristine = np.asarray(Image.open(path).convert("RGB"))
    q_src = SOURCE_QUALITIES[i % len(SOURCE_QUALITIES)]
    data = encode(pristine, "JPEG", q_src)
    src = decode(data)
    px = src.shape[0] * src.shape[1]
    out = {"image": f"{path.parent.name}/{path.name}", "pixels": px, "source_quality": q_src, "source_bytes": len(data),
           "source_psnr_y_vs_pristine": psnr_y(src, pristine), "runs": {}}
    curves = {fmt: curve(src, fmt, 4) for fmt in ("AVIF", "AVIF-default", "WEBP")}
    out["avif_curve"], out["avif_default_curve"], out["webp_curve"] = curves["AVIF"], curves["AVIF-default"], curves["WEBP"]
    for label, spec in specs.items():
        t0 = time.perf_counter()
        small, layer, rec = compress_to_target(data, pairs, spec)
        seconds = time.perf_counter() - t0
        run = {"status": rec.status, "seconds": seconds, "model_id": rec.model_id, "small_quality": rec.small_quality,
               "layer": rec.enhancement_format, "layer_level": rec.enhancement_level}
        if small is not None:
            stored = len(small) + (len(layer) if layer else 0)
            pair = pairs[rec.model_id]
            restored = decode(codec.rehydrate_image(small, None, pair, layer=layer))
            preview = Image.fromarray(tiling.pad_to_multiple(src, pair.scale)).resize(
                (rec.out_width, rec.out_height), Image.BICUBIC)
            buf = io.BytesIO()
            preview.save(buf, "WEBP", quality=rec.small_quality or 50, method=4)
            avif = bytes_at(curves["AVIF"], rec.psnr_y)
            avif_default = bytes_at(curves["AVIF-default"], rec.psnr_y)
            webp = bytes_at(curves["WEBP"], rec.psnr_y)
            run.update({
                "stored_bytes": stored, "small_bytes": len(small), "layer_bytes": len(layer) if layer else 0,
                "psnr_y": rec.psnr_y, "psnr_rgb": rec.psnr_rgb, "thumbnail_psnr": rec.thumbnail_psnr,
                "psnr_y_vs_pristine": psnr_y(restored, pristine), "ratio_to_source": stored / len(data),
                "ratio_to_avif": stored / avif if avif else None, "ratio_to_webp": stored / webp if webp else None,
                "ratio_to_avif_default": stored / avif_default if avif_default else None,
                "ratio_to_avif_plus_preview": stored / (avif + len(buf.getvalue())) if avif else None,
                "preview_only_psnr_y": psnr_y(decode(codec.rehydrate_image(small, None, pair, layer=layer, preview=True)), src),
            })
        out["runs"][label] = run
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def summarize(per_image: list[dict], specs: dict) -> dict:
    rows = {}
    for label, spec in specs.items():
        runs = [r["runs"][label] for r in per_image]
        ok = [r for r in runs if r["status"] == "ok"]
        rows[label] = {
            "target_psnr": spec.target_psnr, "images": len(runs), "ok": len(ok),
            "at_or_above_target": sum(r["psnr_y"] >= spec.target_psnr for r in ok),
            "mean_psnr_y": _mean(r["psnr_y"] for r in ok), "min_psnr_y": min((r["psnr_y"] for r in ok), default=None),
            "mean_psnr_y_vs_pristine": _mean(r["psnr_y_vs_pristine"] for r in ok),
            "mean_thumbnail_psnr": _mean(r["thumbnail_psnr"] for r in ok),
            "min_thumbnail_psnr": min((r["thumbnail_psnr"] for r in ok), default=None),
            "bytes_vs_source_total": sum(r["stored_bytes"] for r in ok) / sum(
                p["source_bytes"] for p, r in zip(per_image, runs) if r["status"] == "ok") if ok else None,
            "mean_ratio_to_avif": _mean(r["ratio_to_avif"] for r in ok),
            "mean_ratio_to_avif_default": _mean(r.get("ratio_to_avif_default") for r in ok),
            "mean_ratio_to_webp": _mean(r["ratio_to_webp"] for r in ok),
            "mean_ratio_to_avif_plus_preview": _mean(r["ratio_to_avif_plus_preview"] for r in ok),
            "with_layer": sum(1 for r in ok if r["layer"]), "mean_seconds": _mean(r["seconds"] for r in runs),
            "bpp": _mean(r["stored_bytes"] * 8 / p["pixels"] for p, r in zip(per_image, runs) if r["status"] == "ok"),
        }
    return rows


def rd_curves(per_image: list[dict], specs: dict, targets: list[float]) -> dict:
    """Mean (bpp, Y-PSNR) per setting: TAID per target, AVIF/WebP per quality index."""
    def mean_curve(key):
        n = len(per_image[0][key])
        return [(float(np.mean([p[key][k][0] * 8 / p["pixels"] for p in per_image])),
                 float(np.mean([p[key][k][1] for p in per_image]))) for k in range(n)]

    taid = []
    for t in targets:
        runs = [(p, p["runs"][f"target {t:g}"]) for p in per_image]
        ok = [(p, r) for p, r in runs if r["status"] == "ok"]
        taid.append((float(np.mean([r["stored_bytes"] * 8 / p["pixels"] for p, r in ok])),
                     float(np.mean([min(r["psnr_y"], 60.0) for _, r in ok]))))
    return {"taid": taid, "avif": mean_curve("avif_curve"), "webp": mean_curve("webp_curve")}


def per_image_bd(per_image: list[dict], targets: list[float]) -> dict:
    """BD-rate of each image's TAID points (one per target) against its own AVIF / WebP sweep,
    then the mean: the mean curves above mix images of very different rates at one quality."""
    out = {}
    for key, name in (("avif_curve", "avif"), ("webp_curve", "webp")):
        values = []
        for p in per_image:
            runs = [p["runs"][f"target {t:g}"] for t in targets]
            pts = [(r["stored_bytes"] * 8 / p["pixels"], r["psnr_y"]) for r in runs if r["status"] == "ok"]
            ref = [(b * 8 / p["pixels"], q) for b, q in p[key]]
            v = bd_rate(ref, pts)
            if v is not None:
                values.append(v)
        out[name] = {"mean": float(np.mean(values)) if values else None, "images": len(values)}
    return out


def by_source_quality(per_image: list[dict], specs: dict) -> dict:
    """Stored / source bytes per source JPEG quality and setting; AVIF alone at the same fidelity beside it."""
    out = {}
    for q in SOURCE_QUALITIES:
        group = [p for p in per_image if p["source_quality"] == q]
        src = sum(p["source_bytes"] for p in group)
        row = {}
        for label in specs:
            ok = [(p, p["runs"][label]) for p in group if p["runs"][label]["status"] == "ok"]
            avif = [bytes_at(p["avif_curve"], r["psnr_y"]) for p, r in ok]
            row[label] = {"taid": sum(r["stored_bytes"] for _, r in ok) / src if src else None,
                          "avif": sum(a for a in avif if a) / src if src and all(avif) else None}
        out[q] = {"images": len(group), "bpp": float(np.mean([p["source_bytes"] * 8 / p["pixels"] for p in group])),
                  "settings": row}
    return out


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in curves.items():
        x, y = zip(*sorted(pts))
        ax.plot(x, y, marker="o", label={"taid": "TAID small file + layer (verified targets)"}.get(name, f"{name.upper()} full image"))
    ax.set_xlabel("bits per pixel (everything stored)")
    ax.set_ylabel("Y-PSNR vs decoded JPEG source (dB)")
    ax.set_ylim(28, 46)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(result: dict) -> str:
    lines = [
        "# Fidelity presets on JPEG sources (benchmarks/fidelity.py)", "",
        f"{result['images']} images ({', '.join(result['folders'])}, every {result['every']}th), each re-encoded as JPEG "
        f"q85/q90/q95 in turn; fidelity = Y-PSNR against the decoded JPEG (lower of whole and shaved). Bytes = small "
        "file + enhancement layer. AVIF/WebP: the full image at the same Y-PSNR (per-image sweep, interpolated). "
        f"Source JPEGs: {result['source_bpp']:.2f} bpp, {result['source_psnr_y_vs_pristine']:.2f} dB from the pristine PNGs.", "",
        "| setting | target dB | ok | >= target | mean / min Y-PSNR | vs pristine | bytes / source | / AVIF | / AVIF (Pillow defaults) | / WebP | / (AVIF + preview) | bpp | thumbnail mean / min | with layer | s/image |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    f = lambda v, d=2: "n/a" if v is None else ("exact" if v == math.inf else f"{v:.{d}f}")  # noqa: E731
    for label, r in result["summary"].items():
        lines.append(
            f"| {label} | {f(r['target_psnr'], 1)} | {r['ok']}/{r['images']} | {r['at_or_above_target']} | "
            f"{f(r['mean_psnr_y'])} / {f(r['min_psnr_y'])} | {f(r['mean_psnr_y_vs_pristine'])} | {f(r['bytes_vs_source_total'], 3)} | "
            f"{f(r['mean_ratio_to_avif'], 3)} | {f(r.get('mean_ratio_to_avif_default'), 3)} | {f(r['mean_ratio_to_webp'], 3)} | {f(r['mean_ratio_to_avif_plus_preview'], 3)} | "
            f"{f(r['bpp'], 3)} | {f(r['mean_thumbnail_psnr'])} / {f(r['min_thumbnail_psnr'])} | {r['with_layer']} | {f(r['mean_seconds'], 1)} |")
    lines += ["", "Stored / source bytes by the source JPEG's quality (AVIF alone at the same fidelity in brackets):", "",
              "| source | images | source bpp | " + " | ".join(result["summary"]) + " |",
              "|---|---:|---:|" + "---:|" * len(result["summary"])]
    for q, g in result["by_source_quality"].items():
        cells = [f"{f(v['taid'], 3)} ({f(v['avif'], 3)})" for v in g["settings"].values()]
        lines.append(f"| JPEG q{q} | {g['images']} | {g['bpp']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "BD-rate over the targets' range (32-42 dB; negative = TAID needs fewer bytes):", ""]
    lines += [f"- vs {k}: mean curves {f(v, 1)} %; per image, then averaged: "
              f"{f(result['bd_rate_per_image'][k]['mean'], 1)} %" for k, v in result["bd_rate"].items()]
    lines += ["", "![RD curves](fidelity.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", default=[str(SHARED / "Set14"), str(SHARED / "B100")])
    ap.add_argument("--every", type=int, default=3, help="every Nth image of the folders, in name order")
    ap.add_argument("--targets", nargs="+", type=float, default=[32, 34, 36, 38, 40, 42])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--from-json", help="recompute the tables and plot from an earlier fidelity.json (no measuring)")
    args = ap.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        return write(finish(result, result["per_image"], args.targets), Path(args.out))
    import torch

    torch.set_num_threads(1)
    files = images([Path(d) for d in args.data], args.every)
    specs = {"preview": PRESETS["preview"], **{f"target {t:g}": resolve_fidelity(target_psnr=t) for t in args.targets}}
    pairs = {m: load_pair(m) for s in specs.values() for m in s.models}
    per_image = []
    for i, path in enumerate(files):
        per_image.append(measure(path, i, specs, pairs))
        print(f"{i + 1}/{len(files)} {path.name}", {k: (round(v.get("ratio_to_avif") or 0, 3), v["status"])
                                                   for k, v in per_image[-1]["runs"].items()}, flush=True)
    result = {"folders": [Path(d).name for d in args.data], "every": args.every, "images": len(files)}
    write(finish(result, per_image, args.targets), Path(args.out))


def finish(result: dict, per_image: list[dict], targets: list[float]) -> dict:
    specs = {"preview": PRESETS["preview"], **{f"target {t:g}": resolve_fidelity(target_psnr=t) for t in targets}}
    curves = rd_curves(per_image, specs, targets)
    return {
        **{k: result[k] for k in ("folders", "every", "images")},
        "source_bpp": float(np.mean([p["source_bytes"] * 8 / p["pixels"] for p in per_image])),
        "source_psnr_y_vs_pristine": float(np.mean([p["source_psnr_y_vs_pristine"] for p in per_image])),
        "summary": summarize(per_image, specs), "by_source_quality": by_source_quality(per_image, specs), "curves": curves,
        "bd_rate": {"avif": bd_rate(curves["avif"], curves["taid"]), "webp": bd_rate(curves["webp"], curves["taid"])},
        "bd_rate_per_image": per_image_bd(per_image, targets),
        "per_image": per_image,
    }


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps(result, indent=1, default=lambda v: None))
    (out / "fidelity.md").write_text(markdown(result))
    plot(result["curves"], out / "fidelity.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
