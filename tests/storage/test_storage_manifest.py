"""Pure pieces of compress-archive: keys, listing, atomic writes, manifest schema and reader."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pyarrow.dataset as ds
import pytest

from pipeline.jobs.compress import decide
from pipeline.jobs.params import CompressArchiveParams
from pipeline.manifest.parts import SCHEMA, ManifestWriter, read_manifest
from pipeline.manifest.index import PreviousState, latest_states
from pipeline.storage.keys import ObjectInfo, UnsafeKeyError, safe_join
from pipeline.storage.fs import atomic_write, filesystem
from pipeline.storage.listing import list_objects


@pytest.mark.parametrize("key", ["../x.png", "a/../../x.png", "/etc/passwd", "a//b.png", "a/./b.png", "a\\..\\b", ""])
def test_safe_join_refuses_escaping_keys(key):
    with pytest.raises(UnsafeKeyError):
        safe_join("bucket/dest", key)


def test_safe_join_keeps_ordinary_keys():
    assert safe_join("bucket/dest/", "2024/cat..jpg") == "bucket/dest/2024/cat..jpg"


def test_listing_is_relative_filtered_and_skips_our_own_folders(tmp_path):
    for rel in ["a/1.png", "a/b/2.jpg", "c.txt", "_manifest/run=x/part-0.parquet", "_runs/x.json"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * 3)
    fs, root = filesystem(str(tmp_path))
    keys = [o.key for o in list_objects(fs, root)]
    assert sorted(keys) == ["a/1.png", "a/b/2.jpg", "c.txt"]
    assert [o.key for o in list_objects(fs, root, include=["*.png", "*.jpg"], exclude=["a/b/*"])] == ["a/1.png"]
    obj = next(iter(list_objects(fs, root, include=["c.txt"])))
    assert obj.size == 3 and obj.etag.endswith("-3")


def test_local_etag_changes_when_the_file_changes(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"abc")
    fs, root = filesystem(str(tmp_path))
    before = next(iter(list_objects(fs, root))).etag
    os.utime(path, ns=(1, 10**18))
    assert next(iter(list_objects(fs, root))).etag != before


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    fs, root = filesystem(str(tmp_path))
    atomic_write(fs, f"{root}/deep/a.bin", b"123")
    atomic_write(fs, f"{root}/deep/a.bin", b"4567")
    assert (tmp_path / "deep" / "a.bin").read_bytes() == b"4567"
    assert os.listdir(tmp_path / "deep") == ["a.bin"]


def _row(key, status, when, etag="e1", run="r1"):
    return {"run_id": run, "source_key": key, "source_etag": etag, "source_size": 10, "status": status,
            "model_id": "taid-x2", "processed_at": when}


def test_manifest_parts_schema_and_latest_state(tmp_path):
    fs, root = filesystem(str(tmp_path))
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    w = ManifestWriter(fs, root, "r1", rows_per_part=2)
    for i, status in enumerate(["ok", "failed_decode", "ok"]):
        w.add(_row(f"k{i}", status, t0))
    w.close()
    assert w.parts == 2 and w.rows == 3
    w2 = ManifestWriter(fs, root, "r2")
    w2.add(_row("k1", "ok", t0 + timedelta(hours=1), etag="e2", run="r2"))
    w2.close()

    table = ds.dataset(str(tmp_path / "_manifest"), format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 4
    assert read_manifest(fs, root).schema.equals(SCHEMA, check_metadata=False)
    states = latest_states(fs, root)
    assert states["k1"] == PreviousState("e2", 10, "ok", "taid-x2")
    assert states["k0"].status == "ok"


def test_decide_incremental_and_retry_modes():
    obj = ObjectInfo("a.png", "s3://b/a.png", "e1", 10)
    inc = CompressArchiveParams(source="s", dest="d", model_id="taid-x2")  # one fixed layer (the default is a fidelity)
    retry = CompressArchiveParams(source="s", dest="d", model_id="taid-x2", retry_failed=True)
    ok, failed = PreviousState("e1", 10, "ok", "taid-x2"), PreviousState("e1", 10, "failed_decode", "taid-x2")
    assert decide(obj, None, inc) == "process"
    assert decide(obj, ok, inc) == "unchanged"
    assert decide(obj, PreviousState("e0", 10, "ok", "taid-x2"), inc) == "process"  # changed object
    assert decide(obj, PreviousState("e1", 10, "ok", "taid-x4"), inc) == "process"  # another model
    assert decide(obj, failed, inc) == "failed_before"
    assert decide(obj, PreviousState("e1", 10, "skipped_empty", "taid-x2"), inc) == "skipped_before"
    assert decide(obj, PreviousState("e1", 10, "skipped_empty", "taid-x2"), retry) == "not_failed"
    assert decide(obj, failed, retry) == "process"
    assert decide(obj, ok, retry) == "not_failed"
    assert decide(obj, ok, CompressArchiveParams(source="s", dest="d", model_id="taid-x2", incremental=False)) == "process"
    # fidelity runs: the same preset (or target) by one of its pairs is unchanged; anything else is redone
    std = CompressArchiveParams(source="s", dest="d")
    assert decide(obj, ok, std) == "process"  # a fixed-layer row does not meet a fidelity
    done = PreviousState("e1", 10, "ok", "taid-x4-webp", "standard", 36.0)
    assert decide(obj, done, std) == "unchanged"
    assert decide(obj, done, CompressArchiveParams(source="s", dest="d", fidelity="high")) == "process"
    assert decide(obj, done, CompressArchiveParams(source="s", dest="d", target_psnr=36)) == "process"  # "target" != preset
    assert decide(obj, done, inc) == "process"
    with pytest.raises(ValueError, match="retry_failed"):
        CompressArchiveParams(source="s", dest="d", incremental=False, retry_failed=True)


def test_version_1_part_files_still_read_and_rehydrate(tmp_path):
    """Parts written before `small_quality` existed (schema version 1) read with nulls there, next
    to new parts, and their rows still rehydrate."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from models.zoo import load_pair
    from pipeline.codec.options import CodecOptions
    from pipeline.codec.image import compress_image, decode_output
    from pipeline.archive.access import rehydrate

    v1 = pa.schema([f for f in SCHEMA if f.name != "small_quality"], metadata={"taid_manifest_schema": "1"})
    pair = load_pair("taid-x2")
    fs, root = filesystem(str(tmp_path))
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for run, (key, fmt) in enumerate([("old.png", "png"), ("new.png", "webp-lossy")]):
        buf = io.BytesIO()
        Image.fromarray(np.full((24, 32, 3), 40 * (run + 1), np.uint8)).save(buf, "PNG")
        small, _, rec = compress_image(buf.getvalue(), pair, CodecOptions(small_format=fmt))
        (tmp_path / f"{key}.small").write_bytes(small)
        writer = ManifestWriter(fs, root, f"r{run}", schema=v1 if run == 0 else SCHEMA)
        writer.add({**rec.model_dump(), "run_id": f"r{run}", "source_key": key, "output_uri": str(tmp_path / f"{key}.small"),
                    "processed_at": t0 + timedelta(hours=run)})
        writer.close()
    assert "small_quality" not in pq.read_schema(tmp_path / "_manifest" / "run=r0" / "part-00000.parquet").names

    table = read_manifest(fs, root)
    assert table.schema.equals(SCHEMA, check_metadata=False)
    assert dict(zip(table.column("source_key").to_pylist(), table.column("small_quality").to_pylist())) == {
        "old.png": None, "new.png": 90}
    assert set(latest_states(fs, root)) == {"old.png", "new.png"}
    assert decode_output(rehydrate("old.png", str(tmp_path))).size == (32, 24)
