"""Listings at scale: paged S3 listings in byte order (serial and parallel over prefixes), S3
Inventory reports (CSV and Parquet) generated in SeaweedFS, and the sorted-merge planner."""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from pipeline.jobs.compress import decide
from pipeline.jobs.params import CompressArchiveParams
from pipeline.storage.inventory import InventoryListing, write_inventory
from pipeline.storage.listing import listing_tables
from pipeline.manifest.index import PreviousState
from pipeline.jobs.plan import REASONS, ListingOrderError, aligned, decide_codes
from pipeline.storage.keys import ObjectInfo
from pipeline.storage.fs import filesystem

ODD = ["a.png", "a/x.png", "a0.png", "a/b/c.png", "b c+d%20.png", "é/ü.png", "Z.png", "z/_manifest/kept.png"]
OURS = ["_manifest/run=1/part-00000.parquet", "_runs/1.json", "_index/CURRENT.json"]


def body(key: str) -> bytes:
    return f"object {key}".encode()


def tree() -> list[str]:
    keys = ODD + [f"flat/{i:05d}.jpg" for i in range(1100)] + [f"p{i}/q{j}/{k}.png" for i in range(6)
                                                                for j in range(3) for k in range(4)]
    return keys


def flatten(tables) -> list[tuple]:
    return [r for t in tables for r in zip(*(t.column(c).to_pylist() for c in ("key", "etag", "size")))]


@pytest.fixture(scope="module")
def seeded(s3):
    """One bucket holding tree() under src/ (and our own folders, never listed)."""
    import uuid

    fs = s3.filesystem()
    name = f"l-{uuid.uuid4().hex[:10]}"
    fs.makedirs(name, exist_ok=True)
    fs.pipe({f"{name}/src/{k}": body(k) for k in tree() + OURS})
    return name


def test_s3_listing_pages_in_byte_order_serial_and_parallel(s3, seeded, tmp_path):
    from pipeline.storage import s3 as s3mod

    want = sorted(tree(), key=lambda k: k.encode())
    fs, root = filesystem(f"s3://{seeded}/src")
    before = s3mod.STATS["list_requests"]
    serial = flatten(listing_tables(fs, root, workers=1))
    # one request per folder (root, a, a/b, é, z, z/_manifest, 6 p*, 18 p*/q*) + 2 pages for flat/ (1100 keys)
    assert s3mod.STATS["list_requests"] - before == 30 + 2
    assert [k for k, _, _ in serial] == want
    assert all(e == hashlib.md5(body(k)).hexdigest() and s == len(body(k)) for k, e, s in serial)
    assert flatten(listing_tables(fs, root, workers=4)) == serial  # sub-prefixes listed in parallel
    assert [k for k, _, _ in flatten(listing_tables(fs, root, include=["p1/*"], exclude=["*/q2/*"]))] == [
        f"p1/q{j}/{k}.png" for j in range(2) for k in range(4)]

    for k in tree() + OURS:  # the same tree on local disk: the same order
        (tmp_path / k).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / k).write_bytes(body(k))
    local_fs, local_root = filesystem(str(tmp_path))
    assert [k for k, _, _ in flatten(listing_tables(local_fs, local_root))] == want


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_inventory_report_in_seaweedfs_lists_like_the_bucket(s3, seeded, fmt, monkeypatch):
    import pipeline.storage.inventory

    monkeypatch.setattr(pipeline.storage.inventory, "FAN_IN", 2)  # 5 sorted chunks: merged in rounds of two
    fs, root = filesystem(f"s3://{seeded}/src")
    listed = flatten(listing_tables(fs, root))
    full = [(f"src/{k}", e, s) for k, e, s in listed]
    random.Random(3).shuffle(full)  # inventories promise no order
    rows = pa.table({"key": [k for k, _, _ in full] + ["other/outside.png"], "size": [s for *_, s in full] + [1],
                     "etag": [e for _, e, _ in full] + ["x"]})
    old = pa.table({"key": ["src/deleted.png", "src/a.png"], "size": [1, 2], "etag": ["d", "old"],
                    "is_latest": [True, False], "is_delete_marker": [True, False]})  # a versioned inventory's extras
    manifest = write_inventory(fs, f"{seeded}/inventory/{fmt}", seeded, rows, fmt=fmt, rows_per_file=700,
                               extra_rows=old if fmt == "CSV" else None)
    inventory = InventoryListing(f"s3://{manifest}", f"s3://{seeded}/src", chunk=500)
    assert inventory.prepare() == len(listed)  # not the other prefix, the delete marker or the old version
    got = flatten(inventory.tables())
    assert got == listed


def test_planner_refuses_an_unsorted_listing():
    page = pa.table({"key": ["b", "a"], "etag": ["1", "2"], "size": [1, 2]})
    with pytest.raises(ListingOrderError):
        list(aligned([page], []))


def test_vectorised_decisions_match_decide():
    from pipeline.codec.fidelity import resolve_fidelity

    std = resolve_fidelity("standard")
    obj = ObjectInfo("a.png", "s3://b/a.png", "e1", 10)
    # rows of today (standard: a score), of an archive made when standard was 36 dB Y-PSNR, explicit targets
    prevs = [None] + [PreviousState(e, s, st, m, f, t, sc) for e in ("e1", "e0") for s in (10, 11)
                      for st in ("ok", "failed_decode", "skipped_empty") for m in ("taid-x2", "taid-x4", std.models[0], None)
                      for f, t, sc in ((None, None, None), (std.name, None, std.target_score), (std.name, 36.0, None),
                                       ("target", 30.0, None), ("target", None, 85.0), ("target", None, 80.0))]
    modes = [CompressArchiveParams(source="s", dest="d"), CompressArchiveParams(source="s", dest="d", model_id="taid-x2"),
             CompressArchiveParams(source="s", dest="d", target_psnr=30.0),
             CompressArchiveParams(source="s", dest="d", target_score=85.0),
             CompressArchiveParams(source="s", dest="d", retry_failed=True),
             CompressArchiveParams(source="s", dest="d", incremental=False)]
    listing = pa.table({"key": [f"k{i:04d}" for i in range(len(prevs))], "etag": [obj.etag] * len(prevs),
                        "size": [obj.size] * len(prevs)})
    prev = pa.table({"source_etag": [p.etag if p else None for p in prevs],
                     "source_size": pa.array([p.size if p else None for p in prevs], pa.int64()),
                     "status": [p.status if p else None for p in prevs],
                     "model_id": pa.array([p.model_id if p else None for p in prevs], pa.string()),
                     "fidelity": pa.array([p.fidelity if p else None for p in prevs], pa.string()),
                     "target_psnr": pa.array([p.target_psnr if p else None for p in prevs], pa.float64()),
                     "target_score": pa.array([p.target_score if p else None for p in prevs], pa.float64())})
    for params in modes:
        got = [REASONS[c] for c in decide_codes(listing, prev, params)]
        want = [decide(obj, p, params) for p in prevs]
        assert got == want
        assert "unchanged" in want or params.retry_failed or not params.incremental  # the grid covers a match
    # a nightly run at `standard` over an archive made when standard meant 36 dB does not redo it
    old = PreviousState("e1", 10, "ok", std.models[0], "standard", 36.0, None)
    assert decide(obj, old, modes[0]) == "unchanged"
    assert decide(obj, old, CompressArchiveParams(source="s", dest="d", incremental=False)) == "process"


def test_nightly_run_over_an_unchanged_bucket_starts_no_ray(s3, seeded, tmp_path):
    """A few hundred unchanged objects: the run lists once (or reads the inventory), writes no
    rows and never starts Ray."""
    import ray

    from pipeline.jobs import run_compress
    from pipeline.manifest.parts import ManifestWriter

    fs, root = filesystem(f"s3://{seeded}/src")
    listed = flatten(listing_tables(fs, root))
    dest = f"s3://{seeded}/dest"
    dfs, droot = filesystem(dest)
    writer = ManifestWriter(dfs, droot, "seed", rows_per_part=1000)
    now = datetime.now(timezone.utc)
    for k, e, s in listed:
        writer.add({"run_id": "seed", "source_key": k, "source_etag": e, "source_size": s, "status": "ok",
                    "model_id": "taid-x2", "output_uri": f"{dest}/{k}.png", "processed_at": now})
    writer.close()
    manifest = write_inventory(fs, f"{seeded}/inventory/nightly", seeded,
                               pa.table({"key": [f"src/{k}" for k, _, _ in listed], "size": [s for *_, s in listed],
                                         "etag": [e for _, e, _ in listed]}), fmt="Parquet")
    ray_was_up = ray.is_initialized()
    for extra in ({}, {"inventory": f"s3://{manifest}"}):
        result = run_compress(CompressArchiveParams(source=f"s3://{seeded}/src", dest=dest, model_id="taid-x2", **extra))
        assert result["rows"] == 0 and result["plan"] == {"listed": len(listed), "unchanged": len(listed)}
        assert result["dispatch"] == {"actor_restarts": 0, "batches": 0}  # the actor pool never ran
    assert ray.is_initialized() == ray_was_up
    assert result["index"]["compacted"] is False  # the first run compacted; nothing new since
