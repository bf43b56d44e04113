"""Buckets of many objects: incremental planning, the manifest index and lookups at N keys, and
a real nightly run over an unchanged SeaweedFS bucket.

    python benchmarks/scale.py --keys 1000000 [--keys 10000000] [--seaweedfs 100000] [--out DIR]

Per N (no images needed: planning only reads listings and manifests):
- a synthetic archive state under a temp folder: a first run of N `ok` rows (parts of 5000
  rows, as the writer makes them), a nightly run of N/1000 changed rows, an S3 Inventory report
  (Parquet, shuffled, 1M rows a file) of today's bucket: 0.1 % changed, 0.05 % new, 0.05 % deleted;
- index_seconds: the first compaction (every run partition into the index), then
  index_incremental_seconds: one more nightly run folded into it;
- plan: inventory x (index + one unfolded run) -> the objects to process, in a fresh process:
  plan_seconds, plan_peak_rss_mib (and the RSS after imports, plan_base_rss_mib);
- lookups of random keys: warm (one long-lived reader), cold (a fresh reader per lookup: pointer,
  footer, row group) and find_row (the shared reader rehydrate uses), p50/p95 in ms.
`--seaweedfs N` puts N small objects in one flat prefix of a real SeaweedFS, an `ok` manifest for
each, and runs the compress-archive flow on it (listing, and inventory): wall time, driver peak
RSS, model calls (rows written) and whether Ray was started.

Writes benchmarks/results/scale.{json,md,png}; runs of other sizes already in the JSON are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).parent / "results"
PART_ROWS = 5000
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def hex_strings(rng, n: int, width: int, prefix: bytes = b"", suffix: bytes = b""):
    """n random lowercase-hex strings (with a fixed prefix/suffix) as one Arrow array, built
    from a single buffer (10M keys in about a second)."""
    import pyarrow as pa

    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    body = digits[rng.integers(0, 16, size=(n, width), dtype=np.uint8)]
    parts = [np.broadcast_to(np.frombuffer(x, dtype=np.uint8), (n, len(x))) for x in (prefix, suffix) if x]
    full = np.concatenate([parts[0], body, *parts[1:]] if prefix else [body, *parts], axis=1) if parts else body
    size = full.shape[1]
    offsets = np.arange(0, size * (n + 1), size, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(full).tobytes()))


def manifest_rows(keys, etags, sizes, run_id: str, when: datetime, rng):
    """Manifest rows (every SCHEMA column, realistic contents) for the given keys."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.manifest.parts import SCHEMA

    n = len(keys)
    const = lambda v, t: pa.array(np.full(n, v) if not isinstance(v, str) else [v] * n, t)  # noqa: E731
    cols = {
        "run_id": const(run_id, pa.string()), "source_key": keys,
        "source_uri": pc.binary_join_element_wise("s3://photos/", keys, ""), "source_etag": etags, "source_size": sizes,
        "source_sha256": hex_strings(rng, n, 64), "source_format": const("JPEG", pa.string()),
        "source_mode": const("RGB", pa.string()), "width": const(4000, pa.int32()), "height": const(3000, pa.int32()),
        "status": const("ok", pa.string()), "output_uri": pc.binary_join_element_wise("s3://photos-taid/", keys, ".webp", ""),
        "output_format": const("webp-lossy", pa.string()), "small_quality": const(60, pa.int32()),
        "output_size": pa.array(rng.integers(100_000, 400_000, n), pa.int64()), "output_sha256": hex_strings(rng, n, 64),
        "out_width": const(2000, pa.int32()), "out_height": const(1500, pa.int32()), "scale": const(2, pa.int32()),
        "model_id": const("taid-x2-webp", pa.string()), "model_sha256": const("ef" * 32, pa.string()),
        "attempts": const(1, pa.int32()), "pipeline_version": const("0.1.0", pa.string()),
        "processed_at": pa.array(np.full(n, np.datetime64(when.replace(tzinfo=None), "us")), pa.timestamp("us", tz="UTC")),
    }
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in SCHEMA}, schema=SCHEMA)


def write_run(dest: str, table, run_id: str) -> None:
    """A run partition as the ManifestWriter lays it out: key-sorted parts of PART_ROWS rows."""
    from pipeline.manifest.parts import ManifestWriter
    from pipeline.storage.fs import filesystem

    fs, root = filesystem(dest)
    w = ManifestWriter(fs, root, run_id)
    for start in range(0, table.num_rows, PART_ROWS):
        w.write_table(table.slice(start, PART_ROWS))
    from pipeline.manifest.parts import write_run_stats

    write_run_stats(fs, root, run_id, {"run_id": run_id, "rows": table.num_rows})  # the run completed


def build_state(tmp: str, n: int, seed: int = 0) -> dict:
    """The archive (manifest runs) and today's inventory for N keys; returns paths and counts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.storage.inventory import write_inventory
    from pipeline.storage.fs import filesystem

    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    keys = pc.sort_indices(hex_strings(rng, n, 32, b"images/", b".jpg"))
    keys = hex_strings(np.random.default_rng(seed), n, 32, b"images/", b".jpg").take(keys)
    etags = hex_strings(rng, n, 32)
    sizes = pa.array(rng.integers(200_000, 6_000_000, n), pa.int64())
    dest = os.path.join(tmp, "archive")
    first = manifest_rows(keys, etags, sizes, "run0000", T0, rng)
    write_run(dest, first, "run0000")
    del first
    # an earlier nightly run: 0.1 % of the keys changed since the first run
    nightly = np.sort(rng.choice(n, max(1, n // 1000), replace=False))
    etags_now = etags.to_numpy(zero_copy_only=False).astype(object)
    new_etags = hex_strings(rng, len(nightly), 32)
    etags_now[nightly] = new_etags.to_numpy(zero_copy_only=False)
    write_run(dest, manifest_rows(keys.take(pa.array(nightly)), new_etags, sizes.take(pa.array(nightly)), "run0001",
                                  T0 + timedelta(days=1), rng), "run0001")
    generate_s = time.perf_counter() - t

    # today's bucket: 0.1 % changed, 0.05 % deleted, 0.05 % new
    changed = rng.choice(n, max(1, n // 1000), replace=False)
    etags_now[changed] = hex_strings(rng, len(changed), 32).to_numpy(zero_copy_only=False)
    keep = np.ones(n, dtype=bool)
    keep[rng.choice(n, max(1, n // 2000), replace=False)] = False
    new = hex_strings(rng, max(1, n // 2000), 32, b"images/", b".jpg")
    inv_keys = pa.concat_arrays([keys.filter(pa.array(keep)), new])
    inv = pa.table({"key": inv_keys,
                    "size": pa.concat_arrays([sizes.filter(pa.array(keep)), pa.array(np.full(len(new), 1234), pa.int64())]),
                    "etag": pa.concat_arrays([pa.array(etags_now[keep], pa.string()), hex_strings(rng, len(new), 32)])})
    inv = inv.take(pa.array(rng.permutation(inv.num_rows)))  # inventories promise no order
    fs, _ = filesystem(tmp)
    manifest = write_inventory(fs, os.path.join(tmp, "inventory"), "photos", inv, fmt="Parquet", rows_per_file=1_000_000)
    inventory_bytes = sum(f.stat().st_size for f in Path(tmp, "inventory").rglob("*.parquet"))
    manifest_bytes = sum(f.stat().st_size for f in Path(dest, "_manifest").rglob("*.parquet"))
    sample = [keys[int(i)].as_py() for i in rng.choice(np.flatnonzero(keep), 210, replace=False)]
    return {"dest": dest, "inventory": manifest, "inventory_rows": inv.num_rows, "inventory_bytes": inventory_bytes,
            "manifest_bytes": manifest_bytes, "generate_s": generate_s, "sample": sample}


def in_subprocess(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


COMPACT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
def hwm():  # this process's peak RSS in MiB (ru_maxrss would include the parent's, inherited at fork)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
from pipeline.manifest.index import compact
from pipeline.storage.fs import filesystem
fs, root = filesystem(sys.argv[2])
base = hwm()
t = time.perf_counter(); r = compact(fs, root); dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rows": r["rows"], "keys": r["keys"], "files": len(r["files"]), "folded_parts": r.get("folded_parts"),
                  "base_rss_mib": base, "peak_rss_mib": hwm()}))
"""

PLAN = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
def hwm():  # this process's peak RSS in MiB (ru_maxrss would include the parent's, inherited at fork)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
from pipeline.jobs.params import CompressArchiveParams
from pipeline.storage.inventory import InventoryListing
from pipeline.manifest.index import PLAN_COLUMNS, ManifestReader
from pipeline.jobs.plan import plan
base = hwm()
params = CompressArchiveParams(source="s3://photos", dest=sys.argv[2], model_id="taid-x2-webp", inventory=sys.argv[3])
t = time.perf_counter()
inventory = InventoryListing(params.inventory, params.source)
total = inventory.prepare()
prepared = time.perf_counter() - t
reader = ManifestReader(params.dest)
counts = {}
todo = sum(1 for _ in plan(inventory.tables(), reader.latest(PLAN_COLUMNS), params, "s3://photos/", counts))
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "inventory_prepare_s": prepared, "to_process": todo, "counts": counts, "estimate": total,
                  "unfolded_parts": len(reader.snapshot().delta),
                  "base_rss_mib": base, "peak_rss_mib": hwm()}))
"""

LOOKUP = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
def hwm():  # this process's peak RSS in MiB (ru_maxrss would include the parent's, inherited at fork)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
from pipeline.manifest.index import ManifestReader
from pipeline.archive.access import find_row
dest, keys = sys.argv[2], json.loads(sys.argv[3])
def timed(fn):
    out = []
    for k in keys:
        t = time.perf_counter(); row = fn(k); out.append(1000 * (time.perf_counter() - t))
        assert row is not None and row["source_key"] == k, k
    return out
t = time.perf_counter(); first = find_row(dest, keys[0]); first_ms = 1000 * (time.perf_counter() - t)
cold = timed(lambda k: ManifestReader(dest).lookup(k))
warm_reader = ManifestReader(dest, max_age_s=3600)
warm_reader.lookup(keys[0])
warm = timed(warm_reader.lookup)
shared = timed(lambda k: find_row(dest, k))
print(json.dumps({"first_ms": first_ms, "cold": cold, "warm": warm, "find_row": shared,
                  "peak_rss_mib": hwm()}))
"""


def pct(values, q) -> float:
    return round(float(np.percentile(values, q)), 2)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_keys(n: int, workdir: str | None) -> dict:
    import pyarrow as pa  # noqa: F401

    from pipeline.manifest.parts import ManifestWriter
    from pipeline.manifest.index import read_pointer
    from pipeline.storage.fs import filesystem

    with tempfile.TemporaryDirectory(prefix=f"taid-scale-{n}-", dir=workdir) as tmp:
        state = build_state(tmp, n)
        print(f"[{n}] generated in {state['generate_s']:.1f} s", flush=True)
        first = in_subprocess(COMPACT, state["dest"])
        print(f"[{n}] first compaction {first['seconds']:.1f} s", flush=True)
        # one more nightly run folded in: the steady state (index + a small run -> new index)
        rng = np.random.default_rng(1)
        keys = pa.array(sorted(state["sample"][:100]))
        write_run(state["dest"], manifest_rows(keys, pa.array(["f" * 32] * len(keys)), pa.array([1] * len(keys), pa.int64()),
                                         "run0002", T0 + timedelta(days=2), rng), "run0002")
        incremental = in_subprocess(COMPACT, state["dest"])
        print(f"[{n}] incremental compaction {incremental['seconds']:.1f} s", flush=True)
        # a run newer than the index (not compacted): planning and lookups read it too
        fs, root = filesystem(state["dest"])
        w = ManifestWriter(fs, root, "run0003")
        for k in state["sample"][100:110]:
            w.add({"run_id": "run0003", "source_key": k, "source_etag": "0" * 32, "source_size": 1, "status": "failed_read",
                   "model_id": "taid-x2-webp", "processed_at": T0 + timedelta(days=3)})
        w.close()
        plan = in_subprocess(PLAN, state["dest"], state["inventory"])
        print(f"[{n}] plan {plan['seconds']:.1f} s, peak RSS {plan['peak_rss_mib']:.0f} MiB", flush=True)
        look = in_subprocess(LOOKUP, state["dest"], json.dumps(state["sample"][110:210]))
        pointer = read_pointer(fs, root)
        index_bytes = dir_bytes(Path(root, "_index", f"v-{pointer['version']}"))
        return {
            "keys": n, "plan_seconds": round(plan["seconds"], 2), "plan_peak_rss_mib": round(plan["peak_rss_mib"], 1),
            "plan_base_rss_mib": round(plan["base_rss_mib"], 1), "plan_inventory_prepare_seconds": round(plan["inventory_prepare_s"], 2),
            "plan_to_process": plan["to_process"], "plan_counts": plan["counts"], "plan_unfolded_parts": plan["unfolded_parts"],
            "index_seconds": round(first["seconds"], 2), "index_peak_rss_mib": round(first["peak_rss_mib"], 1),
            "index_incremental_seconds": round(incremental["seconds"], 2),
            "index_incremental_peak_rss_mib": round(incremental["peak_rss_mib"], 1),
            "index_bytes": index_bytes, "index_files": incremental["files"], "index_rows": incremental["rows"],
            "manifest_bytes": state["manifest_bytes"], "manifest_parts_folded_first": first["folded_parts"],
            "inventory_rows": state["inventory_rows"], "inventory_bytes": state["inventory_bytes"],
            "lookup_p50_ms": pct(look["warm"], 50), "lookup_p95_ms": pct(look["warm"], 95),
            "lookup_cold_p50_ms": pct(look["cold"], 50), "lookup_cold_p95_ms": pct(look["cold"], 95),
            "find_row_p50_ms": pct(look["find_row"], 50), "find_row_p95_ms": pct(look["find_row"], 95),
            "lookup_first_in_process_ms": round(look["first_ms"], 1), "lookups": len(look["warm"]),
            "generate_seconds": round(state["generate_s"], 1),
        }


NIGHTLY = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
def hwm():  # this process's peak RSS in MiB (ru_maxrss would include the parent's, inherited at fork)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
from pipeline.runtime.local_env import set_local_env_defaults
set_local_env_defaults()
from prefect.testing.utilities import prefect_test_harness
import ray
from flows.compress_archive import compress_archive
from pipeline.jobs.params import CompressArchiveParams
base = hwm()
out = {}
with prefect_test_harness(server_startup_timeout=120):
    for name, extra in (("listing", {}), ("inventory", {"inventory": sys.argv[4]})):
        t = time.perf_counter()
        r = compress_archive(CompressArchiveParams(source=sys.argv[2], dest=sys.argv[3], model_id="taid-x2", **extra))
        out[name] = {"seconds": time.perf_counter() - t, "rows": r["rows"], "plan": r["plan"], "dispatch": r["dispatch"],
                     "s3": r.get("s3"), "peak_rss_mib": hwm()}
out["ray_started"] = ray.is_initialized()
out["base_rss_mib"] = base
print(json.dumps(out))
"""


def run_seaweedfs(n: int, workdir: str | None) -> dict:
    import hashlib

    import pyarrow as pa

    from infra.local_s3 import LocalS3
    from pipeline.storage.inventory import write_inventory
    from pipeline.manifest.parts import ManifestWriter
    from pipeline.manifest.index import compact
    from pipeline.storage.fs import filesystem

    with tempfile.TemporaryDirectory(prefix="taid-scale-s3-", dir=workdir) as tmp, LocalS3(tmp) as s3:
        os.environ.update(s3.env())
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        fs = s3.filesystem()
        fs.makedirs("photos", exist_ok=True)
        keys = [f"images/{hashlib.sha1(str(i).encode()).hexdigest()}.jpg" for i in range(n)]
        t = time.perf_counter()
        for start in range(0, n, 2000):
            fs.pipe({f"photos/{k}": k.encode() for k in keys[start:start + 2000]})
        upload_s = time.perf_counter() - t
        print(f"[seaweedfs] {n} objects uploaded in {upload_s:.0f} s", flush=True)
        dfs, droot = filesystem("s3://photos/archive")
        w = ManifestWriter(dfs, droot, "seed")
        for k in sorted(keys):  # source s3://photos/images: keys relative to it
            w.add({"run_id": "seed", "source_key": k.removeprefix("images/"), "source_etag": hashlib.md5(k.encode()).hexdigest(),
                   "source_size": len(k), "status": "ok", "model_id": "taid-x2", "output_uri": f"s3://photos/archive/{k}.png",
                   "processed_at": T0})
        w.close()
        compact(dfs, droot)
        inv = pa.table({"key": keys, "size": [len(k) for k in keys], "etag": [hashlib.md5(k.encode()).hexdigest() for k in keys]})
        manifest = write_inventory(fs, "photos/inventory/today", "photos", inv, fmt="CSV", rows_per_file=50_000)
        out = in_subprocess(NIGHTLY, "s3://photos/images", "s3://photos/archive", f"s3://{manifest}")
        return {"objects": n, "flat_prefix": "images/", "upload_seconds": round(upload_s, 1),
                **{f"nightly_{k}": v for k, v in out.items()}}


def extrapolate(runs: list[dict]) -> dict:
    """Per-key figures of the largest run, scaled to 100M and 1B objects (on paper)."""
    big = max(runs, key=lambda r: r["keys"])
    per_key = {k: big[k] / big["keys"] for k in ("plan_seconds", "index_seconds", "index_bytes", "inventory_bytes")}
    out = {}
    for n in (100_000_000, 1_000_000_000):
        list_requests = n / 1000  # ListObjectsV2, 1000 keys each (flat prefix)
        out[str(n)] = {
            "plan_seconds_2_cores": round(per_key["plan_seconds"] * n), "plan_peak_rss_mib": big["plan_peak_rss_mib"],
            "index_build_seconds_2_cores": round(per_key["index_seconds"] * n),
            "index_gib": round(per_key["index_bytes"] * n / 2**30, 1),
            "list_requests": int(list_requests), "list_cost_usd": round(list_requests / 1000 * 0.005, 2),
            "list_hours_serial_at_100ms": round(list_requests * 0.1 / 3600, 1),
            "inventory_cost_usd": round(n / 1e6 * 0.0025, 2), "inventory_gib": round(per_key["inventory_bytes"] * n / 2**30, 1),
            "index_storage_usd_month": round(per_key["index_bytes"] * n / 1e9 * 0.023, 2),
            "lookup_requests": 3,
        }
    return out


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(report, indent=2))
    runs = sorted(report["runs"], key=lambda r: r["keys"])
    lines = [
        "# Scale: planning, manifest index and lookups at N keys", "",
        f"`python benchmarks/scale.py --keys N` on {report['cpus']} cores (shared machine; load at start "
        f"{report['load_average_at_start']}). Synthetic state per N: a first run of N ok rows (parts of 5000), a nightly "
        "run of N/1000 rows, an S3 Inventory (Parquet, shuffled) of today's bucket with 0.1 % changed, 0.05 % new and "
        "0.05 % deleted objects, and one run newer than the index. Plan = inventory x (index + that run), in a fresh "
        "process; RSS is that process's peak (VmHWM), imports included.", "",
        "| keys | plan s | plan peak RSS MiB (after imports) | to process | index build s | index peak RSS MiB | "
        "fold one run s | index MiB | lookup p50 / p95 ms (warm) | cold | find_row |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['keys']:,} | {r['plan_seconds']} | {r['plan_peak_rss_mib']:.0f} ({r['plan_base_rss_mib']:.0f}) | "
            f"{r['plan_to_process']:,} | {r['index_seconds']} | {r['index_peak_rss_mib']:.0f} | {r['index_incremental_seconds']} | "
            f"{r['index_bytes'] / 2**20:.0f} | {r['lookup_p50_ms']} / {r['lookup_p95_ms']} | "
            f"{r['lookup_cold_p50_ms']} / {r['lookup_cold_p95_ms']} | {r['find_row_p50_ms']} / {r['find_row_p95_ms']} |")
    lines += ["", "Lookups: warm = one long-lived `ManifestReader` (footers cached, one row group read); cold = a new "
              "reader per lookup (pointer + footer + row group); find_row = rehydrate's shared reader (pointer and "
              "run listing re-read every call, footers cached). Local disk, page cache warm."]
    if report.get("seaweedfs"):
        s = report["seaweedfs"]
        lines += ["", f"## Nightly run over {s['objects']:,} unchanged objects in one flat prefix (SeaweedFS)", "",
                  "| listing source | wall s | driver peak RSS MiB | rows written (model calls) | plan | Ray started |",
                  "|---|---:|---:|---:|---|---|"]
        for name in ("listing", "inventory"):
            r = s[f"nightly_{name}"]
            lines.append(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['rows']} | {r['plan']} | "
                         f"{s['nightly_ray_started']} |")
        lines += ["", f"Wall time is the flow call (Prefect test harness already up); the first run (listing) includes the "
                  f"process's first flow run overhead. Upload of the objects: {s['upload_seconds']} s (not part of the run)."]
    ex = report.get("extrapolation", {})
    if ex:
        lines += ["", "## On paper: 100M and 1B objects (per-key figures of the largest run above)", "",
                  "| objects | plan (2 cores) | plan RSS | index build (2 cores) | index size | LIST requests (cost) | "
                  "serial listing at 100 ms/request | inventory cost | index storage / month |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, e in ex.items():
            lines.append(f"| {int(n):,} | {e['plan_seconds_2_cores'] / 60:.0f} min | {e['plan_peak_rss_mib']:.0f} MiB (flat) | "
                         f"{e['index_build_seconds_2_cores'] / 60:.0f} min | {e['index_gib']} GiB | {e['list_requests']:,} "
                         f"(${e['list_cost_usd']}) | {e['list_hours_serial_at_100ms']} h | ${e['inventory_cost_usd']} | "
                         f"${e['index_storage_usd_month']} |")
        lines += ["", "Prices: S3 Standard us-east-1, LIST $0.005 per 1,000 requests, Inventory $0.0025 per million "
                  "objects listed, storage $0.023 per GB-month. A lookup costs 3 requests on S3 (pointer GET, one "
                  "LIST of `_manifest/`, one ranged GET of a row group once the footer is cached). A flat prefix lists "
                  "serially (each page needs the previous page's token), so past ~10M objects under one prefix "
                  "use the daily Inventory; folders (`2024/01/...`) list in parallel (`list_workers`).",
                  "", "What breaks first, on paper: (1) compaction rewrites the whole index, so folding one night into a "
                  "1B-key index costs about as much as the 'fold one run' column x 100 (hours on 2 cores): keep "
                  "`compact: auto` (it folds only when the pending runs reach 8 parts or 2 % of the index) and, beyond "
                  "10^8 keys, a key-range-partitioned index that rewrites only touched ranges would be the next step "
                  "(not built); (2) planning from an Inventory spills sorted chunks to local disk, about 60-80 bytes "
                  "per key (6-8 GB at 100M, 60-80 GB at 1B); (3) planning reads only 9 of the index's columns, so its "
                  "S3 traffic is a fraction of the index size; the first index build of a 1B archive belongs on a "
                  "bigger machine. Driver memory does not grow in any of these."]
    (out / "scale.md").write_text("\n".join(lines) + "\n")
    if not runs:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        xs = [r["keys"] for r in runs]
        ax[0].plot(xs, [r["plan_peak_rss_mib"] for r in runs], "o-", label="plan peak RSS")
        ax[0].plot(xs, [r["index_peak_rss_mib"] for r in runs], "s-", label="index build peak RSS")
        ax[0].axhline(1024, ls="--", c="grey", label="bar (plan): 1 GiB")
        ax[0].set_ylim(0, 1200)
        ax[0].set_xscale("log"), ax[0].set_xlabel("keys"), ax[0].set_ylabel("MiB"), ax[0].legend()
        ax[1].plot(xs, [r["plan_seconds"] for r in runs], "o-", label="plan")
        ax[1].plot(xs, [r["index_seconds"] for r in runs], "s-", label="index build")
        ax[1].axhline(300, ls="--", c="grey", label="bar (plan): 5 min")
        ax[1].set_xscale("log"), ax[1].set_xlabel("keys"), ax[1].set_ylabel("seconds"), ax[1].legend()
        fig.tight_layout()
        fig.savefig(out / "scale.png", dpi=110)
    except ImportError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, action="append", default=[], help="N (repeatable)")
    ap.add_argument("--seaweedfs", type=int, default=0, help="objects for the real nightly run (0: skip)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--workdir", help="where the synthetic state goes (default: the system temp folder)")
    args = ap.parse_args()
    path = args.out / "scale.json"
    report = json.loads(path.read_text()) if path.exists() else {"benchmark": "scale", "runs": []}
    report.update(cpus=os.cpu_count(), load_average_at_start=[round(x, 2) for x in os.getloadavg()])
    for n in args.keys:
        run = run_keys(n, args.workdir)
        report["runs"] = [r for r in report["runs"] if r["keys"] != n] + [run]
        report["extrapolation"] = extrapolate(report["runs"])
        write_report(report, args.out)
        print(json.dumps(run), flush=True)
    if args.seaweedfs:
        report["seaweedfs"] = run_seaweedfs(args.seaweedfs, args.workdir)
        print(json.dumps(report["seaweedfs"]), flush=True)
        write_report(report, args.out)


if __name__ == "__main__":
    main()
