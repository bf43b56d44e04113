"""The archive as the browser lists it: the latest manifest row per source key (ok, skipped or failed),
filtered by status class and key prefix, one page at a time.

One small function reads the manifest (`latest_rows`), so it can switch to a compacted manifest index
without touching the routes. Fidelity and enhancement columns are read when the schema has them."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.manifest import SCHEMA

COLUMNS = [
    "source_key", "status", "error_message", "width", "height", "out_width", "out_height", "source_size",
    "output_size", "output_format", "model_id", "model_sha256", "roundtrip_psnr", "processed_at", "run_id",
    # the fidelity issue's columns; absent from older schemas
    "fidelity", "target_psnr", "psnr_y", "psnr_rgb", "enhancement_size",
]


def latest_rows(archive: str, storage_options: dict | None = None) -> pa.Table:
    """One row per source key: its newest row across runs, sorted by key (the shared manifest
    reader: the compacted index plus the runs newer than it)."""
    from pipeline.manifest import ManifestReader

    reader = ManifestReader(archive, storage_options)
    columns = [c for c in COLUMNS if c in SCHEMA.names]
    tables = list(reader.latest(columns=columns))
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table().select(columns)


def status_class(status: str | None) -> str:
    """ok / skipped / failed (from ok, skipped_<reason>, failed_<reason>)."""
    return (status or "").split("_", 1)[0]


def page(table: pa.Table, offset: int = 0, limit: int = 50, status: str = "", prefix: str = "") -> dict:
    """A page of rows as plain dicts, with the filtered total and the counts per status class."""
    if prefix:
        table = table.filter(pc.starts_with(table.column("source_key"), prefix))
    classes = [status_class(s) for s in table.column("status").to_pylist()]
    counts = {c: classes.count(c) for c in ("ok", "skipped", "failed")}
    if status:
        mask = [c == status or s == status for c, s in zip(classes, table.column("status").to_pylist())]
        table = table.filter(pa.array(mask, pa.bool_()))
    rows = [browser_row(r) for r in table.slice(offset, limit).to_pylist()]
    return {"total": table.num_rows, "offset": offset, "limit": limit, "counts": counts, "rows": rows}


def browser_row(row: dict) -> dict:
    """What the browser shows of a row: sizes, fidelity (the enhancement layer's PSNR when the archive
    has one, else the recorded round trip) and bytes saved (small file + enhancement layer)."""
    stored = None
    if row.get("output_size") is not None:
        stored = row["output_size"] + (row.get("enhancement_size") or 0)
    saved = row["source_size"] - stored if stored is not None and row.get("source_size") is not None else None
    return {
        "key": row["source_key"], "status": row["status"], "error": row.get("error_message"),
        "width": row.get("width"), "height": row.get("height"),
        "small_width": row.get("out_width"), "small_height": row.get("out_height"),
        "source_bytes": row.get("source_size"), "stored_bytes": stored, "bytes_saved": saved,
        "small_format": row.get("output_format"), "model_id": row.get("model_id"),
        "fidelity": row.get("fidelity"), "psnr_y": row.get("psnr_y"), "target_psnr": row.get("target_psnr"),
        "roundtrip_psnr": row.get("roundtrip_psnr"),
        "processed_at": row["processed_at"].isoformat() if row.get("processed_at") else None,
    }
