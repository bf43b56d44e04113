"""Rehydrate on demand: manifest lookup at 1,000,000 rows, one-image latency on a 12 MP photo
(cold and warm model), and batch throughput of the rehydrate flow.

    python benchmarks/rehydrate_latency.py [--rows 1000000] [--repeats 3] [--batch 8]

Writes benchmarks/results/rehydrate_latency.{json,md}. Everything is local (a temp folder as the
archive), so the numbers are CPU + local disk; on S3 add a GET per part footer touched.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.runtime.local_env import LOCAL_ENV  # noqa: E402
RESULTS = Path(__file__).parent / "results"


def synthetic_manifest(dest: str, rows: int, runs: int) -> list[str]:
    """`rows` manifest rows spread over `runs` runs (one part file each, written by the real
    ManifestWriter: key-sorted, same row groups), with realistic column contents."""
    import pyarrow as pa

    from pipeline.manifest.parts import SCHEMA, ManifestWriter
    from pipeline.storage.fs import filesystem

    fs, root = filesystem(dest)
    per_run = rows // runs
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    sample = []
    for r in range(runs):
        idx = range(r * per_run, (r + 1) * per_run)
        keys = [f"camera{i % 97:02d}/2026/{r:03d}/IMG_{i:08d}.jpg" for i in idx]
        n = len(keys)
        cols = {
            "run_id": [f"run{r:03d}"] * n, "source_key": keys, "source_uri": [f"s3://photos/{k}" for k in keys],
            "source_etag": [f"{i * 2654435761 % 2**32:08x}" * 4 for i in idx], "source_size": [3_000_000 + i for i in idx],
            "source_sha256": ["ab" * 32] * n, "source_format": ["JPEG"] * n, "source_mode": ["RGB"] * n,
            "width": [4000] * n, "height": [3000] * n, "status": ["ok"] * n,
            "output_uri": [f"s3://archive/{k}.png" for k in keys], "output_format": ["png"] * n,
            "output_size": [900_000] * n, "output_sha256": ["cd" * 32] * n, "out_width": [2000] * n,
            "out_height": [1500] * n, "scale": [2] * n, "model_id": ["taid-x2"] * n, "model_sha256": ["ef" * 32] * n,
            "pipeline_version": ["0.1.0"] * n, "attempts": [1] * n,
            "processed_at": [t0 + timedelta(seconds=i) for i in idx],
        }
        table = pa.table({f.name: cols.get(f.name, [None] * n) for f in SCHEMA}, schema=SCHEMA)
        w = ManifestWriter(fs, root, f"run{r:03d}")
        w.write_table(table)
        sample += keys[::997]
    return sample


LOOKUP = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from pipeline.archive.access import find_row
keys = json.loads(sys.argv[3])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for k in keys:
    t = time.perf_counter(); row = find_row(sys.argv[2], k); times.append(time.perf_counter() - t)
    assert row["source_key"] == k
print(json.dumps({"times": times, "rss_base_kb": base, "rss_peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

FULL_READ = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from pipeline.manifest.parts import read_manifest
from pipeline.storage.fs import filesystem
fs, root = filesystem(sys.argv[2])
t = time.perf_counter(); n = read_manifest(fs, root).num_rows; dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rows": n, "rss_peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 80 * np.sin(x / 97 + c) * np.cos(y / 131 - c) for c in (0.0, 1.0, 2.0)], axis=2)
    img += rng.normal(0, 12, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=20, help="runs (part files) the rows are spread over")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="images for the batch throughput")
    args = ap.parse_args()
    report: dict = {"benchmark": "rehydrate_latency", "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}

    with tempfile.TemporaryDirectory() as tmp:
        # 1. manifest lookup
        dest = os.path.join(tmp, "big-archive")
        t = time.perf_counter()
        keys = synthetic_manifest(dest, args.rows, args.runs)
        gen = time.perf_counter() - t
        sample = random.Random(0).sample(keys, 20)
        out = subprocess.run([sys.executable, "-c", LOOKUP, str(ROOT), dest, json.dumps(sample)], capture_output=True, text=True, check=True)
        look = json.loads(out.stdout)
        full = json.loads(subprocess.run([sys.executable, "-c", FULL_READ, str(ROOT), dest], capture_output=True, text=True, check=True).stdout)
        size = sum(f.stat().st_size for f in Path(dest).rglob("*.parquet"))
        report["lookup"] = {
            "rows": args.rows, "part_files": args.runs, "manifest_bytes": size, "generate_s": gen,
            "lookups": len(sample), "p50_ms": 1000 * pct(look["times"], 50), "p95_ms": 1000 * pct(look["times"], 95),
            "first_ms": 1000 * look["times"][0], "rss_peak_mb": look["rss_peak_kb"] / 1024,
            "rss_after_import_mb": look["rss_base_kb"] / 1024,
            "full_read_s": full["seconds"], "full_read_rss_peak_mb": full["rss_peak_kb"] / 1024,
        }
        print(json.dumps(report["lookup"]), flush=True)

        # 2. one 12-MP photo: cold (model load included) and warm
        import io

        from PIL import Image

        from models.zoo import load_pair
        from pipeline.archive import access as rh
        from pipeline.codec.options import CodecOptions
        from pipeline.codec.image import compress_image
        from pipeline.manifest.parts import ManifestWriter
        from pipeline.storage.fs import atomic_write, filesystem

        fs, root = filesystem(os.path.join(tmp, "photo-archive"))
        buf = io.BytesIO()
        Image.fromarray(photo(3000, 4000, 1)).save(buf, "JPEG", quality=92)
        latency = {}
        for model in ("taid-x2", "taid-x4"):
            pair = load_pair(model)
            t = time.perf_counter()
            small, _, rec = compress_image(buf.getvalue(), pair, CodecOptions(model_id=model, scale=pair.scale))
            compress_s = time.perf_counter() - t
            key = f"{model}/photo.jpg"
            atomic_write(fs, f"{root}/{key}.png", small)
            w = ManifestWriter(fs, root, f"photo-{model}")
            w.add({**rec.model_dump(), "run_id": f"photo-{model}", "source_key": key, "output_uri": f"{root}/{key}.png",
                   "processed_at": datetime.now(timezone.utc)})
            w.close()
            cold, warm = [], []
            for _ in range(args.repeats):
                rh._pair.cache_clear()
                t = time.perf_counter()
                rh.rehydrate(key, root)
                cold.append(time.perf_counter() - t)
                t = time.perf_counter()
                rh.rehydrate(key, root)
                warm.append(time.perf_counter() - t)
            latency[model] = {"compress_s": compress_s, "small_bytes": len(small), "source_bytes": len(buf.getvalue()),
                              "cold_p50_s": pct(cold, 50), "cold_p95_s": pct(cold, 95),
                              "warm_p50_s": pct(warm, 50), "warm_p95_s": pct(warm, 95), "samples": args.repeats}
            print(model, json.dumps(latency[model]), flush=True)
        report["latency_12mp"] = latency

        # 3. batch throughput of the rehydrate flow (2 Ray workers)
        os.environ.update(LOCAL_ENV)
        import ray

        from flows.compress_archive import compress_archive
        from flows.rehydrate import RehydrateParams, rehydrate
        from pipeline.jobs.params import CompressArchiveParams

        src = Path(tmp) / "batch-src"
        src.mkdir()
        for i in range(args.batch):
            Image.fromarray(photo(768, 1024, 10 + i)).save(src / f"img{i:02d}.jpg", quality=92)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        compress_archive(CompressArchiveParams(source=str(src), dest=str(Path(tmp) / "batch-archive"), model_id="taid-x2"))
        t = time.perf_counter()
        res = rehydrate(RehydrateParams(archive=str(Path(tmp) / "batch-archive"), to=str(Path(tmp) / "batch-out"), prefix="",
                                        workers=2, cpus_per_worker=1.0))
        dt = time.perf_counter() - t
        ray.shutdown()
        mp = args.batch * 768 * 1024 / 1e6
        report["batch"] = {"images": args.batch, "megapixels": mp, "seconds": dt, "images_per_s": args.batch / dt,
                           "megapixels_per_s": mp / dt, "workers": 2, "by_status": res["by_status"]}
        print(json.dumps(report["batch"]), flush=True)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rehydrate_latency.json").write_text(json.dumps(report, indent=2))
    lk = report["lookup"]
    md = [
        "# Rehydrate on demand", "",
        f"`python benchmarks/rehydrate_latency.py` (local disk, 2 cores, load average at start "
        f"{report['load_average_at_start'][0]:.1f}: other jobs shared the machine, so times are upper bounds)", "",
        f"## Manifest lookup: {lk['rows']:,} rows in {lk['part_files']} key-sorted part files ({lk['manifest_bytes'] / 1e6:.1f} MB)", "",
        "| lookups | p50 | p95 | first | peak RSS | full read of the manifest (for contrast) |", "|---:|---:|---:|---:|---:|---:|",
        f"| {lk['lookups']} | {lk['p50_ms']:.0f} ms | {lk['p95_ms']:.0f} ms | {lk['first_ms']:.0f} ms | {lk['rss_peak_mb']:.0f} MB "
        f"(after imports: {lk['rss_after_import_mb']:.0f} MB) | {lk['full_read_s']:.2f} s, peak RSS {lk['full_read_rss_peak_mb']:.0f} MB |",
        "", f"## One 12-MP photo (4000x3000 JPEG), {args.repeats} samples each", "",
        "| model | compress (s) | small file | rehydrate cold p50 / p95 (s) | warm p50 / p95 (s) |", "|---|---:|---:|---:|---:|",
    ]
    for m, r in report["latency_12mp"].items():
        md.append(f"| {m} | {r['compress_s']:.1f} | {r['small_bytes'] / 1e6:.2f} MB (source {r['source_bytes'] / 1e6:.2f} MB) | "
                  f"{r['cold_p50_s']:.1f} / {r['cold_p95_s']:.1f} | {r['warm_p50_s']:.1f} / {r['warm_p95_s']:.1f} |")
    b = report["batch"]
    md += ["", f"## Batch: rehydrate flow, {b['images']} x 0.79 MP JPEGs, {b['workers']} Ray workers", "",
           f"{b['images_per_s']:.2f} images/s, {b['megapixels_per_s']:.2f} MP/s ({b['seconds']:.1f} s including actor start)"]
    (RESULTS / "rehydrate_latency.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
