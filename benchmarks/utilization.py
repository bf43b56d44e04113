"""How much of what a compress run holds does work: held core-seconds, busy CPU-seconds, utilisation
and where the idle time went, for runs of 1, 6, 20 and 100 images on this machine.

    python benchmarks/utilization.py [--quick] [--sizes 1 6 20 100] [--modes before after] [--out DIR]
    python benchmarks/utilization.py --folder DIR --out DIR2     # the same on a folder of your own

Each run is the real command (`python -m flows.cli compress-archive SRC DEST --workers 2`, default
fidelity), timed from its start to its exit; its numbers come from the run stats it prints
(`utilization`, `cpu_s.total`; pipeline/runtime/utilization.py). Two modes, one after the other on
the same images, so they see the same machine:
  * before: the behaviour before issue 30 (`--in-process never --no-start-on-driver
    --largest-first 0`, batches by count): Ray always, idle while it starts, listing order;
  * after: the defaults (in-process for small plans, the driver works while Ray starts, largest
    first, batches by bytes).

Images (mixed sizes, never copied into the repository: made in a temporary folder):
  * 1: one 0.4 MP JPEG mosaic;
  * 6: the six JPEG and HEIC phone photos of ../shared/data/photos (3-12 MP);
  * 20: the nine phone photos plus eleven JPEG mosaics of 1-9.8 MP;
  * 100: five phone photos plus 95 small JPEG mosaics of 0.05-0.5 MP.
Mosaics are of ../shared/data/eval/B100 photos (benchmarks/economics.py). `--quick`: 1 and 6 only.

Writes <out>/utilization.{json,md,png} (the plot: busy cores over time for each run). Times on a
shared 2-core machine are noisy: the load average before each run is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).parent / "results"
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
BEFORE = ["--in-process", "never", "--no-start-on-driver", "--largest-first", "0", "--batch-bytes", "0"]


def _photos() -> list[Path]:
    return sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".heic"))


def _mosaic(path: Path, mp: float, seed: int) -> None:
    from benchmarks.economics import jpeg, mosaic, photos

    w = int((mp * 1e6 * 16 / 9) ** 0.5)
    h = int(mp * 1e6 / w)
    path.write_bytes(jpeg(mosaic(photos(), w, h, seed), (90, 85, 95)[seed % 3]))


def make_set(n: int, folder: Path) -> Path:
    src = folder / f"src{n}"
    if src.is_dir():
        return src
    src.mkdir(parents=True)
    photos = _photos()
    if n == 1:
        _mosaic(src / "one.jpg", 0.4, 1)
    elif n == 6:
        jpgs = [p for p in photos if p.suffix.lower() == ".jpg"][:4]
        heics = [p for p in photos if p.suffix.lower() == ".heic"][:2]
        for p in jpgs + heics:
            shutil.copy(p, src / p.name)
    elif n == 20:
        for p in photos:
            shutil.copy(p, src / p.name)
        for i in range(20 - len(photos)):
            _mosaic(src / f"mosaic-{i:02d}.jpg", 1.0 + 8.8 * i / 10, 20 + i)
    else:
        for p in photos[:5]:
            shutil.copy(p, src / p.name)
        for i in range(n - 5):
            _mosaic(src / f"small-{i:03d}.jpg", 0.05 + 0.45 * (i % 10) / 9, 100 + i)
    return src


def run(src: Path, dest: Path, extra: list[str]) -> dict:
    load = os.getloadavg()[0]
    shutil.rmtree(dest, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "compress-archive", str(src), str(dest), "--workers",
                           "2", *extra], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.time() - t0
    if done.returncode != 0:
        raise SystemExit(f"compress-archive failed ({done.returncode}): {done.stderr[-3000:]}")
    r = json.loads(done.stdout)
    u = r["utilization"]
    busy = r["cpu_s"]["total"] or 0.0
    cores = os.cpu_count() or 1
    return {"images": r["rows"], "by_status": r["by_status"], "megapixels": round(r["megapixels_per_s"] * r["seconds"], 2),
            "wall_s": round(wall, 2), "busy_cpu_s": round(busy, 2), "held_core_s": round(u["held_core_s"], 2),
            "utilization": round(u["utilization"], 4) if u["utilization"] is not None else None,
            "busy_of_cores_x_wall": round(busy / (cores * wall), 4), "basis": u["basis"], "stages": r["dispatch"].get("stages"),
            "driver_items": r["dispatch"].get("driver_items", 0), "first_batch_s": u["first_batch_s"],
            "idle_core_s": u["idle_core_s"], "phases_s": u["phases_s"], "timeline": u["timeline"],
            "payback_months_held": {k: v["months"] for k, v in r["payback"].items()},
            "payback_months_busy": {k: v.get("months_busy") for k, v in r["payback"].items()},
            "load_before": round(load, 2)}


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [f"# Utilisation of compress runs ({m['when']}, {m['machine']})", "",
             "Each run is `taid compress-archive SRC DEST --workers 2` at the default fidelity, timed from the command "
             "to its exit; held, busy and idle come from its own run stats (`utilization`). *before* = the "
             "pre-issue-30 behaviour (`" + " ".join(BEFORE) + "`), *after* = the defaults, one right after the "
             "other on the same images. `busy / (cores x wall)` is the issue's bar (>= 90 % for 18 large photos).", "",
             "| images | mode | where | wall s | held core-s | busy CPU-s | utilisation | busy / (cores x wall) | "
             "first image at s | idle core-s: startup / planning / driver / storage / tail / finish / in work | "
             "payback months S3 Standard: held (busy) | load |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in result["runs"]:
        i = r["idle_core_s"]
        idle = " / ".join(f"{i[k]:.1f}" for k in ("startup", "planning", "driver", "storage", "tail", "finish",
                                                  "in_work"))
        held_m, busy_m = r["payback_months_held"].get("standard"), r["payback_months_busy"].get("standard")
        pay = "never" if held_m is None else f"{held_m:.2f} ({busy_m:.2f})"
        lines.append(f"| {r['images']} | {r['mode']} | {r['stages']}{' +driver' if r['driver_items'] else ''} | "
                     f"{r['wall_s']:.1f} | {r['held_core_s']:.1f} | {r['busy_cpu_s']:.1f} | "
                     f"{100 * (r['utilization'] or 0):.1f} % | {100 * r['busy_of_cores_x_wall']:.1f} % | "
                     f"{r['first_batch_s']} | {idle} | {pay} | {r['load_before']} |")
    lines += ["", "Busy cores over time: utilization.png. The load average is the machine's (other work runs "
              "beside these runs: `in work` idle grows with it)."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in result["runs"]})
    fig, axes = plt.subplots(len(sizes), 1, figsize=(9, 2.4 * len(sizes)), squeeze=False)
    for ax, size in zip(axes[:, 0], sizes):
        for r in (r for r in result["runs"] if r["size"] == size):
            t = r["timeline"]
            xs = [t["bin_s"] * (k + 0.5) for k in range(len(t["busy_cores"]))]
            ax.plot(xs, t["busy_cores"], label=f"{r['mode']}: {r['wall_s']:.0f} s, {100 * r['utilization']:.0f} % busy")
        ax.axhline(os.cpu_count() or 1, color="grey", lw=0.5, ls="--")
        ax.set_title(f"{size} image{'s' if size > 1 else ''}", fontsize=9)
        ax.set_ylabel("busy cores")
        ax.legend(fontsize=7, loc="lower center")
    axes[-1, 0].set_xlabel("seconds since the command started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 6, 20, 100])
    ap.add_argument("--modes", nargs="+", default=["before", "after"], choices=["before", "after"])
    ap.add_argument("--quick", action="store_true", help="runs of 1 and 6 images only")
    ap.add_argument("--folder", type=Path, help="run this folder's images instead of the built-in sets")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    sizes = [1, 6] if args.quick else args.sizes
    if args.folder:
        sizes = [len([p for p in args.folder.iterdir() if p.is_file()])]
    runs = []
    with tempfile.TemporaryDirectory(prefix="taid-util-") as tmp:
        for size in sizes:
            src = args.folder or make_set(size, Path(tmp))
            for mode in args.modes:
                r = run(src, Path(tmp) / f"dest-{size}-{mode}", BEFORE if mode == "before" else [])
                r.update(size=size, mode=mode)
                runs.append(r)
                print(f"{size} images, {mode}: wall {r['wall_s']} s, held {r['held_core_s']}, busy {r['busy_cpu_s']}, "
                      f"utilisation {r['utilization']}, busy/(cores x wall) {r['busy_of_cores_x_wall']}, "
                      f"idle {r['idle_core_s']}, load {r['load_before']}", flush=True)
    result = {"meta": {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores, shared VM"},
              "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "utilization.json").write_text(json.dumps(result, indent=2))
    (args.out / "utilization.md").write_text(markdown(result))
    plot(result, args.out / "utilization.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
