"""Does the archive pay for itself? Bytes, CPU seconds and payback on photographs of the size people keep.

    python benchmarks/economics.py [--sizes 9.4 12 16] [--presets standard high] [--out DIR]
    python benchmarks/economics.py --photos ../shared/data/photos --efforts default   # real phone photos

Presets are score targets since issue 29 (SSIMULACRA2 of the worst region): their overshoot is in
score points above the target, and their bytes against full-image codecs at the same score are
benchmarks/perceptual.py's; the AVIF comparison at equal Y-PSNR below is made for `--target-psnr`
presets (`--presets psnr36` = --target-psnr 36) only. `--photos DIR` runs on real photos (JPEG and
HEIC, kept where they are) instead of mosaics: what the payback bar of issue 29 is measured on.

Sources: no large photos ship with the project, so each source is a mosaic of real photographs
(the B100 evaluation set, never tuned on; tests/data/Set14 where ../shared is absent), mirrored
tiles laid edge to edge to 9-16 MP, saved as JPEG at quality 85, 90 and 95 in turn (Pillow 4:2:0:
what cameras write). A mosaic has more edges per pixel than one large photo, so its bytes per pixel
are higher than a camera's; ratios against AVIF are what to read.

Per image, side by side in one process (one thread: CPU seconds are per core):
- every preset x effort through the real codec (`pipeline.codec.fidelity.compress_to_target`): stored
  bytes (small file + layer), verified Y-PSNR and its overshoot above the target, CPU seconds by
  stage, MP/s per core;
- full-image AVIF at libaom speed 6 and 8 with the layer's settings, its bytes interpolated (log-rate,
  linear between two adjacent levels) at the Y-PSNR our archive reached;
- `original`: JPEG XL recompression of the JPEG, thumbnail included, and whether rehydration gives
  the JPEG back byte for byte;
- rehydration (`codec.rehydrate_image`, PNG out) CPU and wall seconds per layer kind;
- payback months on each storage class of the default price table (pipeline.jobs.prices), on the
  busy CPU-seconds measured here and, beside them, on held time: a run pays for every core it
  holds, busy or not, so the held CPU-s of an image are its busy CPU-s / the utilisation a real run
  reaches (`--utilization`, default: the largest "after" run of benchmarks/results/utilization.json,
  else 1; docs/costs.md#held-and-busy-why-the-cost-charges-held-cores).

Writes <out>/economics.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.zoo import load_pair  # noqa: E402
from pipeline.codec import image as codec, layer as enhancement, fidelity, image_io  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "eval" / "B100"
SIZES = {9.4: (4096, 2304), 12: (4000, 3000), 16: (4608, 3456), 24: (6000, 4000)}
QUALITIES = (90, 85, 95)
EFFORTS = ("fast", "default", "best")
EFFORTS_RUN = list(EFFORTS)  # main(): --efforts
# what-if rows: the default effort at other final speeds, so the table shows why the default is what it is
VARIANTS = (("default", 8), ("default", 6))
HORIZON_MONTHS = 36  # total cost per image over this long: compute + requests + storage
UTILIZATION = [1.0]  # busy / held of a real run (main(): --utilization or benchmarks/results/utilization.json)


def measured_utilization(path: Path = ROOT / "benchmarks" / "results" / "utilization.json") -> float:
    """The utilisation of the largest 'after' run of benchmarks/utilization.py, else 1 (busy = held)."""
    try:
        runs = [r for r in json.loads(path.read_text())["runs"] if r["mode"] == "after" and r["utilization"]]
    except (OSError, ValueError, KeyError):
        return 1.0
    return max(runs, key=lambda r: r["size"])["utilization"] if runs else 1.0


def photos() -> list[Path]:
    found = sorted(SHARED.glob("*.png")) if SHARED.is_dir() else []
    return found or sorted((ROOT / "tests" / "data" / "Set14").glob("*.png"))


def mosaic(files: list[Path], width: int, height: int, seed: int) -> np.ndarray:
    """Real photos laid edge to edge (landscape, mirrored on alternate rows) to width x height."""
    rng = np.random.default_rng(seed)
    order = [files[i] for i in rng.permutation(len(files))]
    canvas = np.zeros((height, width, 3), np.uint8)
    y = i = 0
    while y < height:
        x, row_h = 0, 0
        while x < width:
            im = Image.open(order[i % len(order)]).convert("RGB")
            i += 1
            if im.height > im.width:
                im = im.transpose(Image.Transpose.ROTATE_90)
            a = np.asarray(im)[: height - y, : width - x]
            canvas[y:y + a.shape[0], x:x + a.shape[1]] = a if (y // 300) % 2 == 0 else a[:, ::-1]
            x, row_h = x + a.shape[1], max(row_h, a.shape[0])
        y += row_h
    return canvas


def jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def cpu_wall(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


def avif_curve(ref: fidelity.Reference, lo: float, hi: float, speed: int) -> dict[int, tuple[int, float, float]]:
    """Full-image AVIF (the layer's settings) at the levels that bracket Y-PSNR `lo`..`hi`:
    level -> (bytes, Y-PSNR, CPU seconds of that encode)."""
    measure = fidelity._measurer("avif-full", ref.rgb, None, ref, 4, speed, False)
    seen: dict[int, tuple[int, float, float]] = {}

    def timed(level: int):
        (layer, p), cpu, _ = cpu_wall(lambda: measure(level))
        seen[level] = (len(layer), p, cpu)
        return layer, p
    top = enhancement.AVIF_LEVELS
    first = fidelity._lowest_quality(timed, lo, start=30, top=top)
    level = first[0] if first else top
    if level > 0 and level - 1 not in seen:
        timed(level - 1)
    while seen[level][1] < hi and level < top:
        level += 1
        if level not in seen:
            timed(level)
    return seen


def bytes_at(curve: dict[int, tuple[int, float, float]], psnr: float) -> float:
    """Bytes at exactly `psnr`, interpolated log-linearly between the adjacent levels around it."""
    points = sorted((p, b) for b, p, _ in curve.values())
    for (p0, b0), (p1, b1) in zip(points, points[1:]):
        if p0 <= psnr <= p1 and p1 > p0:
            t = (psnr - p0) / (p1 - p0)
            return math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
    return float("nan")


def payback(source: int, objects: list[int], cpu_s: float) -> dict:
    """Months to pay back per storage class of the default price table (each object billed at
    least the class's minimum size)."""
    from pipeline.jobs import prices

    table = prices.load_prices(None)
    return {cls: prices.payback_months(source, objects, len(objects), cpu_s, table, cls) for cls in table.storage}


def horizon_cost(source: int, objects: list[int], cpu_s: float) -> dict:
    """Per storage class: what the archived image costs over HORIZON_MONTHS (compute + PUTs +
    storage) as a fraction of keeping the source for as long."""
    from pipeline.jobs import prices

    table = prices.load_prices(None)
    out = {}
    for cls in table.storage:
        keep = prices.monthly_saving(prices.billable_bytes(source, table.storage_class(cls)), 0, table, cls)
        store = prices.monthly_saving(prices.billable_bytes(objects, table.storage_class(cls)), 0, table, cls)
        once = prices.one_time_cost(len(objects), cpu_s, table, cls)
        out[cls] = (once + store * HORIZON_MONTHS) / (keep * HORIZON_MONTHS)
    return out


def run_image(data: bytes, presets: list[str], pairs: dict, rows: list, name: str) -> None:
    dec = image_io.decode_image(data, 10**9)
    ref = fidelity.Reference(codec.reference_rgb(dec))
    mp = ref.shape[0] * ref.shape[1] / 1e6
    print(f"{name}: {mp:.1f} MP, {len(data)} B", flush=True)
    for preset in presets:
        scored = not preset.startswith("psnr")
        for effort, speed in [(e, None) for e in EFFORTS_RUN] + (list(VARIANTS) if not scored else []):
            spec = (fidelity.resolve_fidelity(preset, effort=effort) if scored else
                    fidelity.resolve_fidelity(target_psnr=float(preset[4:]), effort=effort))
            saved = fidelity.EFFORTS[effort]
            if speed is not None:
                fidelity.EFFORTS[effort] = saved._replace(final_speed=speed)
                effort = f"{effort}@s{speed}"
            try:
                (small, layer, rec), cpu, wall = cpu_wall(lambda: fidelity.compress_to_target(data, pairs, spec))
            finally:
                fidelity.EFFORTS[spec.effort] = saved
            stored = len(small) + len(layer or b"")
            out, r_cpu, r_wall = cpu_wall(lambda: codec.rehydrate_image(small, rec, pairs[rec.model_id],
                                                                         restored_format="png", layer=layer))
            row = {"image": name, "megapixels": mp, "source_bytes": len(data), "preset": preset, "effort": effort,
                   "status": rec.status, "stored_bytes": stored, "small_bytes": len(small),
                   "layer": rec.enhancement_format, "level": rec.enhancement_level, "preview": [rec.out_width, rec.out_height],
                   "psnr_y": rec.psnr_y, "score_worst": rec.score_worst, "score_whole": rec.score_whole,
                   "encodes": rec.encodes,
                   # score targets: points above the target; PSNR targets: dB
                   "overshoot_db": ((rec.score_worst - spec.target_score) if scored and rec.score_worst is not None
                                    else (rec.psnr_y - rec.target_psnr) if not scored else None),
                   "cpu_s": cpu, "wall_s": wall,
                   "mp_per_s_per_core": mp / cpu, "stages": {k: getattr(rec, f"cpu_{k}_s") for k in fidelity.Stages.NAMES},
                   "stored_over_source": stored / len(data), "rehydrate_cpu_s": r_cpu, "rehydrate_wall_s": r_wall,
                   "rehydrate_mp_per_s": mp / r_wall, "objects": [len(small)] + ([len(layer)] if layer else [])}
            rows.append(row)
            print(f"  {preset}/{effort}: {stored} B ({stored / len(data):.3f}x) {rec.psnr_y:.2f} dB "
                  f"score {rec.score_worst} {cpu:.1f} CPU-s ({mp / cpu:.2f} MP/s) rehydrate {r_wall:.1f} s", flush=True)
        ours = [r for r in rows if r["image"] == name and r["preset"] == preset and r["status"] == "ok"]
        if scored:  # bytes against full-image codecs at the same score: benchmarks/perceptual.py
            continue
        lo, hi = min(r["psnr_y"] for r in ours), max(r["psnr_y"] for r in ours)
        for speed in (6, 8):
            curve = avif_curve(ref, lo, hi, speed)
            one_encode = float(np.median([c for _, _, c in curve.values()]))
            for row in ours:
                row[f"avif_s{speed}_bytes"] = bytes_at(curve, row["psnr_y"])
                row[f"avif_s{speed}_encode_cpu_s"] = one_encode
                row[f"over_avif_s{speed}"] = row["stored_bytes"] / row[f"avif_s{speed}_bytes"]
                row[f"cpu_over_avif_s{speed}"] = row["cpu_s"] / one_encode
            ratios = ", ".join(f"{r['effort']} {r[f'over_avif_s{speed}']:.3f}x" for r in ours)
            print(f"  AVIF speed {speed}: ours / AVIF {ratios}; one encode {one_encode:.1f} CPU-s", flush=True)
    spec = fidelity.resolve_fidelity("original")
    (small, layer, rec), cpu, _ = cpu_wall(lambda: fidelity.compress_to_target(data, pairs, spec))
    back, r_cpu, r_wall = cpu_wall(lambda: codec.rehydrate_image(small, rec, pairs[rec.model_id], layer=layer))
    stored = len(small) + len(layer)
    rows.append({"image": name, "megapixels": mp, "source_bytes": len(data), "preset": "original", "effort": "-",
                 "status": rec.status, "stored_bytes": stored, "small_bytes": len(small), "layer": rec.enhancement_format,
                 "stored_over_source": stored / len(data), "cpu_s": cpu, "mp_per_s_per_core": mp / cpu,
                 "byte_exact": hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest(),
                 "rehydrate_cpu_s": r_cpu, "rehydrate_wall_s": r_wall, "rehydrate_mp_per_s": mp / r_wall,
                 "objects": [len(small), len(layer)], "overshoot_db": None})
    print(f"  original: {stored / len(data):.3f}x, byte-exact {rows[-1]['byte_exact']}, {cpu:.1f} CPU-s", flush=True)
    for row in rows:
        if row["image"] == name:
            row["payback_months"] = payback(row["source_bytes"], row["objects"], row["cpu_s"])
            row["held_cpu_s"] = row["cpu_s"] / UTILIZATION[0]
            row["payback_months_held"] = payback(row["source_bytes"], row["objects"], row["held_cpu_s"])
            row["horizon_cost"] = horizon_cost(row["source_bytes"], row["objects"], row["held_cpu_s"])


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _median(xs):
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    order = list(EFFORTS) + [f"{e}@s{v}" for e, v in VARIANTS]
    keys = sorted({(r["preset"], r["effort"]) for r in rows}, key=lambda k: (k[0], order.index(k[1]) if k[1] in order else 99))
    for preset, effort in keys:
        rs = [r for r in rows if r["preset"] == preset and r["effort"] == effort]
        over = [r["overshoot_db"] for r in rs if r.get("overshoot_db") is not None]
        out.append({
            "preset": preset, "effort": effort, "images": len(rs), "ok": sum(r["status"] == "ok" for r in rs),
            "mp_per_s_per_core": sum(r["megapixels"] for r in rs) / sum(r["cpu_s"] for r in rs),
            "stored_over_source": sum(r["stored_bytes"] for r in rs) / sum(r["source_bytes"] for r in rs),
            "over_avif_s6": _mean(r.get("over_avif_s6") for r in rs), "over_avif_s8": _mean(r.get("over_avif_s8") for r in rs),
            "cpu_over_avif_s6": _mean(r.get("cpu_over_avif_s6") for r in rs),
            "overshoot_mean_db": _mean(over), "overshoot_p95_db": float(np.percentile(over, 95)) if over else None,
            "rehydrate_mp_per_s": _mean(r["rehydrate_mp_per_s"] for r in rs),
            "payback_months": {cls: _mean(r["payback_months"][cls] for r in rs if math.isfinite(r["payback_months"][cls]))
                               for cls in rs[0]["payback_months"]},
            "payback_months_median": {cls: _median(r["payback_months"][cls] for r in rs) for cls in rs[0]["payback_months"]},
            "payback_months_held_median": {cls: _median(r["payback_months_held"][cls] for r in rs)
                                           for cls in rs[0].get("payback_months_held", {})},
            "score_worst_min": min((r["score_worst"] for r in rs if r.get("score_worst") is not None), default=None),
            "encodes_mean": _mean(r.get("encodes") for r in rs),
            "payback_months_held": {cls: _mean(r["payback_months_held"][cls] for r in rs
                                               if math.isfinite(r["payback_months_held"][cls]))
                                    for cls in rs[0].get("payback_months_held", {})},
            "byte_exact": all(r.get("byte_exact", True) for r in rs),
            "horizon_cost": {cls: _mean(r["horizon_cost"][cls] for r in rs) for cls in rs[0]["horizon_cost"]},
        })
    return out


def markdown(summary: list[dict], rows: list[dict], meta: dict) -> str:
    f = lambda v, d=3: "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
    classes = list(summary[0]["payback_months"]) if summary else []
    lines = ["# Economics: bytes, CPU and payback on large photos", "",
             f"`python benchmarks/economics.py` ({meta['when']}, {meta['machine']}). Sources: {meta['sources']}.",
             f"Payback on busy CPU-s (measured here, one thread) / on held time (busy / utilisation "
             f"{meta.get('utilization', 1.0):.3f}, a real run's: benchmarks/results/utilization.md).", "",
             "| preset | effort | ok | MP/s per core | CPU / one AVIF s6 encode | stored / source | bytes vs AVIF s6 | vs AVIF s8 "
             "| overshoot mean / p95 (dB) | rehydrate MP/s | " + " | ".join(f"payback {c} (months): busy / held" for c in classes)
             + f" | cost over {HORIZON_MONTHS} months / keeping the source ({classes[0] if classes else '-'}, held) |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|" + "---:|" * len(classes) + "---:|"]
    for s in summary:
        lines.append(f"| {s['preset']} | {s['effort']} | {s['ok']}/{s['images']} | {f(s['mp_per_s_per_core'], 2)} | "
                     f"{f(s['cpu_over_avif_s6'], 2)} | {f(s['stored_over_source'])} | {f(s['over_avif_s6'])} | {f(s['over_avif_s8'])} | "
                     f"{f(s['overshoot_mean_db'], 2)} / {f(s['overshoot_p95_db'], 2)} | {f(s['rehydrate_mp_per_s'], 2)} | "
                     + " | ".join(f"{f(s['payback_months'][c], 1)} / {f(s.get('payback_months_held', {}).get(c), 1)}"
                                  for c in classes)
                     + f" | {f(s['horizon_cost'][classes[0]], 3)} |")
    lines += ["", "Median payback per image (months; busy / held), score worst region min, encodes per image:", "",
              "| preset | effort | " + " | ".join(f"{c} median" for c in classes) + " | worst region min | encodes |",
              "|---|---|" + "---:|" * len(classes) + "---:|---:|"]
    for s in summary:
        lines.append(f"| {s['preset']} | {s['effort']} | "
                     + " | ".join(f"{f(s.get('payback_months_median', {}).get(c), 1)} / "
                                  f"{f(s.get('payback_months_held_median', {}).get(c), 1)}" for c in classes)
                     + f" | {f(s.get('score_worst_min'), 1)} | {f(s.get('encodes_mean'), 1)} |")
    kinds = sorted({r["layer"] for r in rows if r.get("layer")})
    if kinds:
        lines += ["", "Rehydration (`codec.rehydrate_image`, PNG out, one process) by layer kind:", "",
                  "| layer | images | CPU s per MP | wall MP/s |", "|---|---:|---:|---:|"]
        for kind in kinds:
            rs = [r for r in rows if r.get("layer") == kind]
            mp = sum(r["megapixels"] for r in rs)
            lines.append(f"| {kind} | {len(rs)} | {sum(r['rehydrate_cpu_s'] for r in rs) / mp:.3f} | "
                         f"{mp / sum(r['rehydrate_wall_s'] for r in rs):.2f} |")
    lines += ["", "Per image:", "", "| image | MP | preset | effort | layer | preview | bytes | Y-PSNR | CPU s (tad/search/encode/verify) | rehydrate s |",
              "|---|---:|---|---|---|---|---:|---:|---|---:|"]
    for r in rows:
        st = r.get("stages") or {}
        lines.append(f"| {r['image']} | {r['megapixels']:.1f} | {r['preset']} | {r['effort']} | {r['layer']} | "
                     f"{'x'.join(map(str, r.get('preview') or [])) or '-'} | {r['stored_bytes']} | {f(r.get('psnr_y'), 2)} | "
                     f"{r['cpu_s']:.1f} ({'/'.join(f(st.get(k), 1) for k in ('tad', 'search', 'encode', 'verify'))}) | "
                     f"{r['rehydrate_wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def calibrate(out: Path) -> None:
    """pipeline.codec.fidelity.SAMPLE_OFFSET_DB: Y-PSNR of a full-size encode at each final speed minus
    that of the sample mosaic at the search speed, at one level, on mosaics of *training* photos
    (BSD200; the evaluation photos never tune anything)."""
    train = sorted((ROOT.parent / "shared" / "data" / "train" / "BSD200").glob("*.png"))
    offsets: dict[int, list[float]] = {6: [], 7: [], 8: [], 9: []}
    for i, size in enumerate((9.4, 12)):
        w, h = SIZES[size]
        data = jpeg(mosaic(train, w, h, seed=100 + i), QUALITIES[i])
        ref = fidelity.Reference(codec.reference_rgb(image_io.decode_image(data, 10**9)))
        sample = fidelity._measurer("avif-full", fidelity._mosaic(ref.rgb), None, None, 4, 9, False)
        for level in (26, 30, 34):
            m9 = sample(level)[1]
            for speed in offsets:
                full = fidelity._measurer("avif-full", ref.rgb, None, ref, 4, speed, False)(level)[1]
                offsets[speed].append(full - m9)
                print(f"train mosaic {i} level {level} speed {speed}: full - sample = {full - m9:+.3f} dB", flush=True)
    result = {speed: {"median_db": float(np.median(v)), "min_db": min(v), "max_db": max(v), "n": len(v)}
              for speed, v in offsets.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "economics_calibration.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def probe_settle(out: Path) -> None:
    """How the band settling's aim and trim trade encodes against overshoot, on mosaics of
    *training* photos (BSD200): the settings `pipeline.codec.fidelity.EFFORTS` was chosen from."""
    train = sorted((ROOT.parent / "shared" / "data" / "train" / "BSD200").glob("*.png"))
    datas = [jpeg(mosaic(train, *SIZES[size], seed=200 + i), QUALITIES[i % 3]) for i, size in enumerate((9.4, 12, 9.4, 12))]
    pairs = {m: load_pair(m) for m in ("taid-x2-webp", "taid-x4-webp")}
    encodes = [0]
    real = fidelity._Bands.encode

    def counted(self, i, level):
        encodes[0] += 1
        return real(self, i, level)
    fidelity._Bands.encode = counted
    base, result = fidelity.EFFORTS["default"], []
    try:
        for aim, trim in ((0.2, 0.4), (0.0, 0.5), (0.0, 0.8), (0.3, math.inf)):
            fidelity.EFFORTS["default"] = base._replace(aim_above=aim, trim_above=trim)
            encodes[0], over = 0, []
            for data in datas:
                rec = fidelity.compress_to_target(data, pairs, fidelity.resolve_fidelity("standard"))[2]
                over.append(rec.psnr_y - rec.target_psnr)
            result.append({"aim_above": aim, "trim_above": trim, "speed": base.final_speed,
                           "full_encodes_per_image": encodes[0] / len(datas) / fidelity.MAX_BANDS,
                           "overshoot_mean_db": float(np.mean(over)), "overshoot_max_db": max(over)})
            print(result[-1], flush=True)
    finally:
        fidelity.EFFORTS["default"], fidelity._Bands.encode = base, real
    out.mkdir(parents=True, exist_ok=True)
    (out / "economics_settle.json").write_text(json.dumps(result, indent=2, default=str))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[9.4, 12, 16])
    ap.add_argument("--presets", nargs="+", default=["standard", "high"], help="preset names, or psnrDB for a "
                    "Y-PSNR target (psnr36)")
    ap.add_argument("--efforts", nargs="+", choices=EFFORTS, default=list(EFFORTS))
    ap.add_argument("--photos", type=Path, help="a folder of real photos (JPEG, HEIC) to run on instead of mosaics")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--utilization", type=float, help="busy / held of a real run for the held-time payback "
                    "(default: benchmarks/results/utilization.json's largest 'after' run, else 1)")
    ap.add_argument("--calibrate", action="store_true", help="measure SAMPLE_OFFSET_DB on training photos instead")
    ap.add_argument("--from-json", type=Path, help="rewrite the Markdown from an earlier economics.json (no measuring)")
    ap.add_argument("--probe-settle", action="store_true", help="how the bands' aim and trim trade encodes against "
                    "overshoot, on training photos")
    args = ap.parse_args(argv)
    if args.calibrate:
        return calibrate(args.out)
    if args.probe_settle:
        return probe_settle(args.out)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        (args.out / "economics.md").write_text(markdown(result["summary"], result["images"], result["meta"]))
        return None
    UTILIZATION[0] = args.utilization or measured_utilization()
    EFFORTS_RUN[:] = args.efforts
    pairs = {m: load_pair(m) for m in ("taid-x2-webp", "taid-x4-webp")}
    rows: list[dict] = []
    if args.photos:
        import pillow_heif

        pillow_heif.register_heif_opener()
        found = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".heic", ".png"))
        for path in found:
            run_image(path.read_bytes(), args.presets, pairs, rows, path.name)
        sources = f"{len(found)} real photos from {args.photos} (JPEG and HEIC, as their cameras wrote them)"
    else:
        files = photos()
        for i, size in enumerate(args.sizes):
            w, h = SIZES[size]
            q = QUALITIES[i % len(QUALITIES)]
            run_image(jpeg(mosaic(files, w, h, seed=i), q), args.presets, pairs, rows, f"mosaic{i + 1}-{size:g}MP-q{q}")
        sources = (f"JPEG mosaics of {'B100' if SHARED.is_dir() else 'Set14'} photos, "
                   f"{', '.join(f'{s:g}' for s in args.sizes)} MP")
    summary = summarize(rows)
    meta = {"when": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, one thread, shared VM",
            "utilization": UTILIZATION[0], "sources": sources}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "economics.json").write_text(json.dumps({"meta": meta, "summary": summary, "images": rows}, indent=2))
    (args.out / "economics.md").write_text(markdown(summary, rows, meta))
    print(markdown(summary, [], meta))


if __name__ == "__main__":
    main()
