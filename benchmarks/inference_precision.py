"""Inference precision and cross-device archives (issue 17), on a CPU.

    python benchmarks/inference_precision.py [--data tests/data/Set5 tests/data/Set14] [--out DIR]
                                             [--fidelity-images 5] [--no-compile]

1. Round trips (TAD then TAU, 8-bit small image) of taid-x2 and taid-x4 on every image, mod-cropped
   to the scale, at fp32 and at bf16 (torch.autocast on the CPU: the stand-in for a GPU's bf16),
   and "cross": fp32 TAD, bf16 TAU (compressed on one numeric path, rehydrated on another). Y-PSNR
   with `scale` border pixels shaved (models.evaluate's convention); max |difference| of the bf16
   reconstruction against the fp32 one from the same small image; seconds per megapixel.
2. Fidelity archives across numeric paths: each image as a JPEG q90 source (benchmarks/fidelity.py's
   phone-like sources) compressed by pipeline.codec.fidelity.compress_to_target at fp32 (standard, high,
   lossless), then rehydrated at fp32 and at bf16: the Y-PSNR drop and max |difference|.
3. The lossless layer's bytes: the residual against TAU (mod 256, as written before issue 17) with
   the small file at its layer quality, against WebP lossless of the source itself with the
   cheapest faithful thumbnail (what the lossless preset writes now), Set5 + Set14 as JPEG q90 and
   as PNG sources.
4. torch.compile on a CPU: first call (compilation) and steady-state seconds for one 512 x 512 TAD
   + TAU, eager vs compiled (`--no-compile` skips it).

Writes <out>/inference_precision.{json,md} (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.data import list_images, mod_crop, read_rgb  # noqa: E402
from models.metrics import psnr_y  # noqa: E402
from models.zoo import load_pair  # noqa: E402
from pipeline.codec import image as codec, layer as enhancement, fidelity, image_io, tiling  # noqa: E402
from pipeline.codec.inference import InferenceOptions, configure, using  # noqa: E402
from pipeline.manifest.parts import json_safe  # noqa: E402

DATA = [str(ROOT / "tests" / "data" / "Set5"), str(ROOT / "tests" / "data" / "Set14")]
FP32, BF16 = InferenceOptions(precision="fp32"), InferenceOptions(precision="bf16")


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    return np.asarray(codec.decode_output(data).convert("RGB"))


def difference(other: np.ndarray, same: np.ndarray, ref: np.ndarray, scale: int) -> dict:
    """How far `other` (rehydrated on another path) is from `same` (the compressing path's own),
    and what that costs in fidelity against `ref`, the decoded source."""
    d = np.abs(other.astype(np.int16) - same.astype(np.int16))
    p_same, p_other = fidelity.fidelity_psnr(same, ref, scale), fidelity.fidelity_psnr(other, ref, scale)
    drop = 0.0 if p_same == p_other else p_same - p_other  # inf - inf is nan: equal means no drop
    return {"psnr_y_same": p_same, "psnr_y_other": p_other, "psnr_drop_db": drop, "max_abs_diff": int(d.max()),
            "differing_fraction": float((d > 0).mean()), "identical": bool(not d.any())}


def restore(small: bytes, layer: bytes | None, pair, options: InferenceOptions) -> np.ndarray:
    """The rehydrated RGB pixels of an archive with `pair` running at `options`."""
    with using(pair, options):
        return decode_rgb(codec.rehydrate_image(small, None, pair, layer=layer))


def round_trip(pair, img: np.ndarray, down: InferenceOptions, up: InferenceOptions) -> tuple[np.ndarray, np.ndarray]:
    s = pair.scale
    small, _ = tiling.downscale_array(pair, img, s, inference=down)
    return small, tiling.upscale_array(pair, small, s, inference=up)[0]


def timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def precision_rows(model: str, uris: list[str]) -> list[dict]:
    pair = load_pair(model)
    s = pair.scale
    round_trip(pair, read_rgb(uris[0])[:64, :64], FP32, BF16)  # warm-up (oneDNN kernels, threads)
    rows = []
    for uri in uris:
        img = mod_crop(read_rgb(uri), s)
        mp = img.shape[0] * img.shape[1] / 1e6
        (small32, out32), t32 = timed(lambda: round_trip(pair, img, FP32, FP32))
        (small16, out16), t16 = timed(lambda: round_trip(pair, img, BF16, BF16))
        cross = tiling.upscale_array(pair, small32, s, inference=BF16)[0]
        d = np.abs(cross.astype(np.int16) - out32.astype(np.int16))
        rows.append({
            "model": model, "image": Path(uri).stem, "megapixels": mp,
            "psnr_y_fp32": psnr_y(out32, img, s), "psnr_y_bf16": psnr_y(out16, img, s),
            "psnr_y_cross": psnr_y(cross, img, s),
            "small_differing_fraction": float((small16 != small32).any(axis=2).mean()),
            "tau_max_abs_diff": int(d.max()), "tau_differing_fraction": float((d > 0).any(axis=2).mean()),
            "s_per_mp_fp32": t32 / mp, "s_per_mp_bf16": t16 / mp,
        })
        print(f"{model} {rows[-1]['image']}: fp32 {rows[-1]['psnr_y_fp32']:.3f} bf16 {rows[-1]['psnr_y_bf16']:.3f} "
              f"cross {rows[-1]['psnr_y_cross']:.3f} dB", flush=True)
    return rows


def summarize_precision(rows: list[dict]) -> dict:
    out = {}
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        mean = {k: float(np.mean([r[k] for r in mine])) for k in (
            "psnr_y_fp32", "psnr_y_bf16", "psnr_y_cross", "small_differing_fraction", "tau_differing_fraction")}
        mp = sum(r["megapixels"] for r in mine)
        out[model] = {
            "images": len(mine), **mean,
            "bf16_psnr_delta_db": mean["psnr_y_bf16"] - mean["psnr_y_fp32"],
            "cross_psnr_delta_db": mean["psnr_y_cross"] - mean["psnr_y_fp32"],
            "worst_bf16_psnr_delta_db": min(r["psnr_y_bf16"] - r["psnr_y_fp32"] for r in mine),
            "tau_max_abs_diff": max(r["tau_max_abs_diff"] for r in mine),
            "cpu_s_per_mp_fp32": sum(r["s_per_mp_fp32"] * r["megapixels"] for r in mine) / mp,
            "cpu_s_per_mp_bf16": sum(r["s_per_mp_bf16"] * r["megapixels"] for r in mine) / mp,
        }
    return out


def fidelity_rows(uris: list[str]) -> list[dict]:
    """Section 2: presets compressed at fp32, rehydrated at fp32 and bf16."""
    pairs = {m: load_pair(m) for p in ("standard", "high", "lossless") for m in fidelity.PRESETS[p].models}
    rows = []
    for uri in uris:
        data = jpeg(read_rgb(uri))
        ref = decode_rgb(data)
        for preset in ("standard", "high", "lossless"):
            with using(pairs.values(), FP32):
                small, layer, rec = fidelity.compress_to_target(data, pairs, fidelity.PRESETS[preset])
            pair = pairs[rec.model_id]
            same, other = restore(small, layer, pair, FP32), restore(small, layer, pair, BF16)
            rows.append({"image": Path(uri).stem, "preset": preset, "layer": rec.enhancement_format,
                         **difference(other, same, ref, pair.scale)})
    return rows


def summarize_fidelity(rows: list[dict]) -> dict:
    out = {}
    for preset in ("standard", "high", "lossless"):
        mine = [r for r in rows if r["preset"] == preset]
        out[preset] = {
            "images": len(mine), "layers": sorted({str(r["layer"]) for r in mine}),
            "max_psnr_drop_db": max(r["psnr_drop_db"] for r in mine),
            "mean_psnr_drop_db": float(np.mean([r["psnr_drop_db"] for r in mine])),
            "max_abs_diff": max(r["max_abs_diff"] for r in mine),
            "max_differing_fraction": max(r["differing_fraction"] for r in mine),
            "all_identical": all(r["identical"] for r in mine),
        }
    return out


def exact_layer_rows(uris: list[str]) -> list[dict]:
    """Section 3: the lossless layer against the residual mod 256, per source kind."""
    spec = fidelity.PRESETS["lossless"]
    (base,) = spec.bases
    pair = load_pair(base.model_id)
    rows = []
    for uri in uris:
        img = read_rgb(uri)
        for kind, data in (("jpeg90", jpeg(img)), ("png", _png(img))):
            dec = image_io.decode_image(data, codec.DEFAULT_MAX_PIXELS, "skip", "skip")
            rec = codec.CompressRecord(**codec._known(dec.info))
            b = fidelity._Base(dec, pair, base, codec.CodecOptions(), rec)
            size, pred = b.prediction(base.layer_quality)
            ref = codec.reference_rgb(dec)
            residual = enhancement.encode_layer(ref, pred, "webp-lossless")
            small, layer, new = fidelity.compress_to_target(data, {base.model_id: pair}, spec)
            rows.append({"image": Path(uri).stem, "source": kind, "source_bytes": len(data),
                         "residual_total_bytes": size + len(residual), "full_total_bytes": len(small) + len(layer),
                         "layer": new.enhancement_format})
    return rows


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def summarize_exact(rows: list[dict]) -> dict:
    out = {}
    for kind in sorted({r["source"] for r in rows}):
        mine = [r for r in rows if r["source"] == kind]
        ratios = [r["full_total_bytes"] / r["residual_total_bytes"] - 1 for r in mine]
        out[kind] = {"images": len(mine), "residual_total_bytes": sum(r["residual_total_bytes"] for r in mine),
                     "full_total_bytes": sum(r["full_total_bytes"] for r in mine),
                     "change_total": sum(r["full_total_bytes"] for r in mine) / sum(r["residual_total_bytes"] for r in mine) - 1,
                     "change_min": min(ratios), "change_max": max(ratios)}
    return out


def compile_timing(side: int = 512, repeats: int = 5) -> dict:
    """Section 4: eager vs torch.compile (taid-x4, fp32, TAD + TAU): the first call at one size and
    at a second size (compilation), the median of interleaved repeats (a shared machine's load hits
    both alike), and whether the pixels are identical."""
    rng = np.random.default_rng(0)
    img, other = (rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((side, side, 3), (side * 3 // 4, side * 5 // 4, 3)))
    pairs = {"eager": configure(load_pair("taid-x4"), FP32),
             "compiled": configure(load_pair("taid-x4"), FP32.model_copy(update={"compile": True}))}
    out: dict = {"side": side, "second_shape": list(other.shape[:2])}
    results = {}
    for label, pair in pairs.items():
        results[label], first = timed(lambda: round_trip(pair, img, FP32, FP32))
        out[label] = {"first_call_s": first, "second_shape_first_call_s": timed(lambda: round_trip(pair, other, FP32, FP32))[1]}
    steady: dict = {label: [] for label in pairs}
    for _ in range(repeats):
        for label, pair in pairs.items():
            steady[label].append(timed(lambda: round_trip(pair, img, FP32, FP32))[1])
    for label in pairs:
        out[label]["steady_s"] = float(np.median(steady[label]))
    out["speedup"] = out["eager"]["steady_s"] / out["compiled"]["steady_s"]
    out["identical_pixels"] = all(np.array_equal(a, b) for a, b in zip(results["eager"], results["compiled"]))
    return out


def markdown(report: dict) -> str:
    lines = ["# Inference precision and cross-device archives (CPU)", "",
             f"{report['cpu']}, torch {report['torch']}, {report['threads']} threads. "
             "Produced by `benchmarks/inference_precision.py`.", "",
             "## 1. Round trips, bf16 vs fp32 (Y-PSNR, border shaved = scale)", "",
             "| model | images | fp32 dB | bf16 dB | delta | worst image | fp32 TAD + bf16 TAU | TAU max abs diff | "
             "pixels differing | CPU s/MP fp32 | bf16 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, r in report["precision"].items():
        lines.append(f"| {model} | {r['images']} | {r['psnr_y_fp32']:.3f} | {r['psnr_y_bf16']:.3f} | "
                     f"{r['bf16_psnr_delta_db']:+.3f} | {r['worst_bf16_psnr_delta_db']:+.3f} | "
                     f"{r['cross_psnr_delta_db']:+.3f} | {r['tau_max_abs_diff']} | {r['tau_differing_fraction']:.1%} | "
                     f"{r['cpu_s_per_mp_fp32']:.2f} | {r['cpu_s_per_mp_bf16']:.2f} |")
    lines += ["", "## 2. Fidelity archives compressed at fp32, rehydrated at bf16", "",
              "| preset | images | layers | max Y-PSNR drop dB | mean drop | max abs diff | max pixels differing | exact |",
              "|---|---|---|---|---|---|---|---|"]
    for preset, r in report["fidelity"].items():
        lines.append(f"| {preset} | {r['images']} | {', '.join(r['layers'])} | {r['max_psnr_drop_db']:.4f} | "
                     f"{r['mean_psnr_drop_db']:.4f} | {r['max_abs_diff']} | {r['max_differing_fraction']:.1%} | "
                     f"{'yes' if r['all_identical'] else 'no'} |")
    lines += ["", "## 3. Lossless layer: source itself vs residual mod 256 (small file + layer bytes)", "",
              "| sources | images | residual (before) | source itself (now) | change | per image |", "|---|---|---|---|---|---|"]
    for kind, r in report["exact_layer"].items():
        lines.append(f"| {kind} | {r['images']} | {r['residual_total_bytes']} | {r['full_total_bytes']} | "
                     f"{r['change_total']:+.1%} | {r['change_min']:+.1%} .. {r['change_max']:+.1%} |")
    c = report.get("compile")
    if c:
        lines += ["", f"## 4. torch.compile on the CPU ({c['side']} x {c['side']} TAD + TAU, taid-x4, fp32)", "",
                  "| | first call s | first call at a second size s | steady s (median) |", "|---|---|---|---|",
                  *(f"| {k} | {c[k]['first_call_s']:.2f} | {c[k]['second_shape_first_call_s']:.2f} | {c[k]['steady_s']:.3f} |"
                    for k in ("eager", "compiled")),
                  "", f"Steady-state speed-up: {c['speedup']:.2f}x; pixels identical to eager: "
                  f"{'yes' if c['identical_pixels'] else 'no'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=DATA)
    ap.add_argument("--fidelity-images", type=int, default=5, help="images for section 2 (the first ones)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    uris = list_images(args.data)
    rows = [r for model in ("taid-x2", "taid-x4") for r in precision_rows(model, uris)]
    fid = fidelity_rows(uris[: args.fidelity_images])
    exact = exact_layer_rows(uris)
    report = {
        "benchmark": "inference_precision", "cpu": _cpu(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "data": [os.path.relpath(d, ROOT) for d in args.data],
        "precision": summarize_precision(rows), "fidelity": summarize_fidelity(fid), "exact_layer": summarize_exact(exact),
        "compile": None if args.no_compile else compile_timing(),
        "images": rows, "fidelity_images": fid, "exact_layer_images": exact,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference_precision.json").write_text(json.dumps(json_safe(report), indent=1, default=str) + "\n")
    (out / "inference_precision.md").write_text(markdown(report))
    print(markdown(report))


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
