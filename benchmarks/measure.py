"""SSIMULACRA2 (pipeline/codec/measure.py): speed on a 12 MP phone photo and agreement with the
reference implementation (PyPI `ssimulacra2`, the oracle) on crops of real phone photos.

    python benchmarks/measure.py [--photos DIR] [--crops 3] [--repeat 3] [--out DIR]

Speed: one thread (torch.set_num_threads(1)), a 12 MP photo (the iPhone HEIC, decoded with
pillow_heif; a synthetic 12 MP image if the photos are absent) against its AVIF encode; prepare
(the reference side, once per image) and score (one candidate) timed separately, best of
--repeat, CPU seconds and wall seconds; peak RSS measured in a fresh child process (before the
measure, after prepare, after score). Agreement: --crops 768 x 768 crops of each photo, each
distorted by JPEG q50/q80/q90 and AVIF q50/q70/q85, scored by both; per-tile scores of the 12 MP
pair summarised too. The photos are read in place, never copied.

Writes <out>/measure.{json,md,png}.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.codec.measure import PsnrY, Ssimulacra2  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
BIG = "nature-3e12e195-2a45-4b2a-90d6-72dc0bb30bfe.HEIC"  # 4032 x 3024
CROP_PHOTOS = ("cannon.jpg", "lunch.jpg", BIG)
DISTORTIONS = (("JPEG", 50), ("JPEG", 80), ("JPEG", 90), ("AVIF", 50), ("AVIF", 70), ("AVIF", 85))
SIDE = 768


def load(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".heic", ".heif"):
        import pillow_heif

        pillow_heif.register_heif_opener()
    return np.asarray(Image.open(path).convert("RGB"))


def encode(img: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, quality=quality, **({"speed": 8} if fmt == "AVIF" else {}))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def big_pair(photos: Path) -> tuple[np.ndarray, np.ndarray, str]:
    if (photos / BIG).exists():
        ref = load(photos / BIG)
        name = BIG
    else:  # smooth gradients plus texture and edges, 12 MP
        yy, xx = np.mgrid[0:3024, 0:4032].astype(np.float32)
        rng = np.random.default_rng(0)
        ref = np.stack([128 + 90 * np.sin(xx / (97 + 13 * c)) * np.cos(yy / 71) for c in range(3)], axis=2)
        ref[::64] += 40
        ref = np.clip(ref + rng.normal(0, 6, ref.shape), 0, 255).astype(np.uint8)
        name = "synthetic 4032 x 3024"
    return ref, encode(ref, "AVIF", 60), name


def rss_mb() -> float:
    """Peak RSS of this process: VmHWM (ru_maxrss would count the parent's peak: Linux keeps it
    across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_memory(pair: str) -> None:
    """Run in a fresh process on the pair saved as .npy (decoding and encoding would set the peak):
    peak RSS before the measure, after prepare, after one score."""
    import torch

    torch.set_num_threads(1)
    ref, out = np.load(Path(pair) / "ref.npy"), np.load(Path(pair) / "out.npy")
    m = Ssimulacra2()
    steps = {"images": rss_mb()}
    prepared = m.prepare(ref)
    steps["prepare"] = rss_mb()
    m.score(prepared, out)
    steps["score"] = rss_mb()
    print(json.dumps(steps))


def speed(photos: Path, repeat: int) -> dict:
    import torch

    torch.set_num_threads(1)
    ref, out, name = big_pair(photos)
    mp = ref.shape[0] * ref.shape[1] / 1e6
    m = Ssimulacra2()

    def timed(f):
        best_cpu = best_wall = float("inf")
        for _ in range(repeat):
            c, w = time.process_time(), time.perf_counter()
            value = f()
            best_cpu, best_wall = min(best_cpu, time.process_time() - c), min(best_wall, time.perf_counter() - w)
        return value, best_cpu, best_wall

    prepared, prep_cpu, prep_wall = timed(lambda: m.prepare(ref))
    score, score_cpu, score_wall = timed(lambda: m.score(prepared, out))
    psnr_y = PsnrY(scale=4)
    py_prepared = psnr_y.prepare(ref)
    _, py_cpu, py_wall = timed(lambda: psnr_y.score(py_prepared, out))
    with tempfile.TemporaryDirectory() as pair:
        np.save(Path(pair) / "ref.npy", ref)
        np.save(Path(pair) / "out.npy", out)
        memory = json.loads(subprocess.run([sys.executable, __file__, "--child-memory", pair], check=True,
                                           capture_output=True, text=True).stdout.strip().splitlines()[-1])
    return {
        "image": name, "width": ref.shape[1], "height": ref.shape[0], "megapixels": mp, "threads": 1,
        "prepare_cpu_s": prep_cpu, "prepare_wall_s": prep_wall,
        "score_cpu_s": score_cpu, "score_wall_s": score_wall,
        "score_mp_per_cpu_s": mp / score_cpu, "score_mp_per_wall_s": mp / score_wall,
        "psnr_y_score_cpu_s": py_cpu, "psnr_y_score_wall_s": py_wall,
        "peak_rss_mb": memory, "whole": score.whole, "worst_region": score.worst,
        "regions": {"shape": list(score.regions.shape), "min": float(score.regions.min()),
                    "median": float(np.median(score.regions)), "max": float(score.regions.max())},
    }


def agreement(photos: Path, crops: int) -> dict:
    from ssimulacra2 import ssimulacra2 as oracle

    m = Ssimulacra2()
    rows, oracle_s, oracle_px = [], 0.0, 0
    tmp = Path(tempfile.mkdtemp())
    for photo in CROP_PHOTOS:
        if not (photos / photo).exists():
            continue
        img = load(photos / photo)
        h, w = img.shape[:2]
        for k in range(crops):  # along the diagonal, away from the borders
            t = (k + 1) / (crops + 1)
            top, left = int((h - SIDE) * t), int((w - SIDE) * (1 - t))
            ref = np.ascontiguousarray(img[top : top + SIDE, left : left + SIDE])
            Image.fromarray(ref).save(tmp / "ref.png")
            for fmt, q in DISTORTIONS:
                out = encode(ref, fmt, q)
                Image.fromarray(out).save(tmp / "out.png")
                t0 = time.perf_counter()
                expected = float(oracle.compute_ssimulacra2(str(tmp / "ref.png"), str(tmp / "out.png")))
                oracle_s += time.perf_counter() - t0
                oracle_px += SIDE * SIDE
                ours = m.score(ref, out).whole
                rows.append({"photo": photo, "crop": [top, left], "codec": fmt, "quality": q,
                             "ours": ours, "oracle": expected, "diff": ours - expected})
                print(f"{photo} crop {k} {fmt} q{q}: {ours:.3f} vs {expected:.3f}", flush=True)
    diffs = np.array([r["diff"] for r in rows]) if rows else np.zeros(0)
    return {
        "side": SIDE, "pairs": len(rows), "photos": sorted({r["photo"] for r in rows}),
        "max_abs_diff": float(np.abs(diffs).max()) if rows else None,
        "mean_abs_diff": float(np.abs(diffs).mean()) if rows else None,
        "oracle_mp_per_s": oracle_px / 1e6 / oracle_s if oracle_s else None,
        "rows": rows,
    }


def markdown(r: dict) -> str:
    s, a = r["speed"], r["agreement"]
    mem = s["peak_rss_mb"]
    lines = [
        "# SSIMULACRA2 speed and agreement (benchmarks/measure.py)", "",
        f"Machine: {r['machine']}; one thread. {s['image']} ({s['width']} x {s['height']}, "
        f"{s['megapixels']:.1f} MP) against its AVIF q60 encode.", "",
        "| step | CPU s | wall s | MP/s per core (CPU) |",
        "|---|---:|---:|---:|",
        f"| prepare (reference side, once per image) | {s['prepare_cpu_s']:.2f} | {s['prepare_wall_s']:.2f} | "
        f"{s['megapixels'] / s['prepare_cpu_s']:.1f} |",
        f"| score (one candidate) | {s['score_cpu_s']:.2f} | {s['score_wall_s']:.2f} | {s['score_mp_per_cpu_s']:.1f} |",
        f"| Y-PSNR score, for scale | {s['psnr_y_score_cpu_s']:.2f} | {s['psnr_y_score_wall_s']:.2f} | "
        f"{s['megapixels'] / s['psnr_y_score_cpu_s']:.1f} |", "",
        f"Peak RSS (fresh process): {mem['images']:.0f} MB with the two images decoded, {mem['prepare']:.0f} MB after "
        f"prepare, {mem['score']:.0f} MB after a score (measure's own peak: {mem['score'] - mem['images']:.0f} MB).", "",
        f"Score {s['whole']:.2f}; {s['regions']['shape'][0]} x {s['regions']['shape'][1]} tiles of 256: "
        f"min {s['regions']['min']:.2f}, median {s['regions']['median']:.2f}, max {s['regions']['max']:.2f}.", "",
        f"Agreement with the oracle (PyPI ssimulacra2 0.3, float64, {a['oracle_mp_per_s'] or 0:.2f} MP/s here): "
        f"{a['pairs']} pairs, {SIDE} x {SIDE} crops of {', '.join(a['photos'])}, JPEG q50/80/90 and AVIF q50/70/85: "
        f"max |diff| {a['max_abs_diff']:.4f}, mean |diff| {a['mean_abs_diff']:.4f}.", "",
        "| codec | pairs | mean score | max abs diff |", "|---|---:|---:|---:|",
    ]
    for fmt, q in DISTORTIONS:
        g = [x for x in a["rows"] if (x["codec"], x["quality"]) == (fmt, q)]
        if g:
            lines.append(f"| {fmt} q{q} | {len(g)} | {np.mean([x['oracle'] for x in g]):.2f} | "
                         f"{max(abs(x['diff']) for x in g):.4f} |")
    lines += ["", "![ours against the oracle](measure.png)", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["agreement"]["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for fmt, marker in (("JPEG", "o"), ("AVIF", "s")):
        g = [x for x in rows if x["codec"] == fmt]
        ax1.scatter([x["oracle"] for x in g], [x["ours"] for x in g], marker=marker, s=18, label=fmt)
        ax2.scatter([x["oracle"] for x in g], [x["diff"] for x in g], marker=marker, s=18, label=fmt)
    lo = min([x["oracle"] for x in rows] + [0])
    ax1.plot([lo, 100], [lo, 100], "k-", lw=0.6)
    ax1.set(xlabel="oracle (PyPI ssimulacra2)", ylabel="pipeline.codec.measure", title="SSIMULACRA2 on 768 px phone crops")
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set(xlabel="oracle", ylabel="ours - oracle", title=f"difference (max |d| {r['agreement']['max_abs_diff']:.4f})")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", default=str(PHOTOS))
    ap.add_argument("--crops", type=int, default=3, help="crops per photo")
    ap.add_argument("--repeat", type=int, default=3, help="timings: best of this many")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--child-memory", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_memory:
        return child_memory(args.child_memory)
    photos = Path(args.photos)
    result = {"machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
              "speed": speed(photos, args.repeat), "agreement": agreement(photos, args.crops)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "measure.json").write_text(json.dumps(result, indent=1))
    (out / "measure.md").write_text(markdown(result))
    plot(result, out / "measure.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
