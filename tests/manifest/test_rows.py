"""The row models: one definition per manifest kind, the Arrow schema derived from it, one
constructor per kind of row with the invariants readers rely on."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.codec.options import CompressRecord
from pipeline.manifest.parts import SCHEMA, ManifestWriter
from pipeline.manifest.rows import CODEC_COLUMNS, RESTORED_SCHEMA, ArchiveRow, ArchiveRows, RestoredRows
from pipeline.storage.keys import ObjectInfo
from pipeline.storage.fs import filesystem

OBJ = ObjectInfo(key="a/cat.jpg", uri="s3://b/a/cat.jpg", etag="e1", size=1234)


def test_schemas_are_derived_from_the_models():
    assert SCHEMA.names == list(ArchiveRow.model_fields)
    assert SCHEMA.field("width").type == pa.int32() and SCHEMA.field("source_size").type == pa.int64()
    assert SCHEMA.field("processed_at").type == pa.timestamp("us", tz="UTC")
    assert SCHEMA.metadata == {b"taid_manifest_schema": b"5"}
    assert all(SCHEMA.field(f"cpu_{stage}_s").type == pa.float64()
               for stage in ("decode", "tad", "tau", "search", "encode", "verify"))
    assert {"small_uri", "restored_uri", "restored_sha256"} <= set(RESTORED_SCHEMA.names)
    assert not any(n.startswith("output_") for n in RESTORED_SCHEMA.names)  # one meaning per name


def test_codec_columns_are_fields_of_the_codec_record():
    """The codec's record fills these columns: a column renamed on one side only fails here."""
    assert CODEC_COLUMNS <= set(CompressRecord.model_fields)
    assert {"output_sha256", "psnr_y", "enhancement_sha256", "status"} <= CODEC_COLUMNS


def test_constructors_keep_the_invariants():
    rows = ArchiveRows("run1", {"model_id": None, "fidelity": "standard", "target_psnr": 36.0}, "9.9")
    record = CompressRecord(source_size=1234, status="ok", output_format="webp-lossy", output_size=99,
                            output_sha256="ab", model_id="taid-x4-webp", psnr_y=37.0)
    ok = rows.ok(OBJ, 1, record, "s3://d/a/cat.jpg.webp", None)
    assert (ok.status, ok.output_uri, ok.model_id, ok.fidelity, ok.source_etag) == (
        "ok", "s3://d/a/cat.jpg.webp", "taid-x4-webp", "standard", "e1")
    failed = rows.failed(OBJ, 2, "failed_write", OSError("disk full"), record)
    assert failed.output_uri is None and failed.error_message == "OSError: disk full" and failed.attempts == 2
    bad = CompressRecord(status="skipped_not_image", error_message="not an image")
    assert rows.from_codec(OBJ, 1, bad).status == "skipped_not_image"
    crash = rows.crash(OBJ.__dict__, 3, RuntimeError())
    assert (crash.status, crash.attempts, crash.error_message) == ("failed_worker_crash", 3, "RuntimeError on 3 attempts")
    with pytest.raises(AssertionError):
        rows.skipped(OBJ, 1, "failed_read", "wrong constructor for a failure")
    with pytest.raises(ValueError):
        ArchiveRow(run_id="r", source_key="k", status="ok", no_such_column=1)  # a typo is an error, not a silent drop


def test_rows_round_trip_through_parquet(tmp_path):
    fs, root = filesystem(str(tmp_path))
    rows = RestoredRows("run2")
    archive_row = {"source_key": "a/cat.jpg", "output_uri": "s3://d/a/cat.jpg.webp", "output_sha256": "ab",
                   "model_id": "taid-x2", "model_sha256": "cd", "width": 10, "height": 20}
    writer = ManifestWriter(fs, root, "run2", schema=RESTORED_SCHEMA)
    writer.add(rows.ok(archive_row, 1, "file:///r/a/cat.jpg.png", "png", b"pixels", preview=False))
    writer.add(rows.refused(archive_row, 1, "small file modified"))
    writer.close()
    from pipeline.manifest.parts import read_manifest

    got = sorted(read_manifest(fs, root, schema=RESTORED_SCHEMA).to_pylist(), key=lambda r: r["status"])
    assert [r["status"] for r in got] == ["ok", "refused"]
    assert got[0]["small_uri"] == "s3://d/a/cat.jpg.webp" and got[0]["restored_size"] == 6
    assert got[1]["restored_uri"] is None and got[1]["error_message"] == "small file modified"
