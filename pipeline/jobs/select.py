"""Batch rehydration pieces (pure of Prefect): parameters, selection from the manifest, output
names. The job is `pipeline.jobs.rehydrate`, its actor `pipeline.jobs.workers.RehydrateWorker`, its rows
`pipeline.manifest.rows.RestoredRow`."""

from __future__ import annotations

import fnmatch

import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.archive import restored_key
from pipeline.jobs.params import RehydrateParams
from pipeline.manifest import RESTORED_SCHEMA, read_manifest
from pipeline.storage import UnsafeKeyError, protocol_prefix, safe_join

REHYDRATE_SCHEMA = RESTORED_SCHEMA  # derived from pipeline.manifest.rows.RestoredRow


def select_rows(params: RehydrateParams) -> list[dict]:
    """Latest ok row per selected key, through the shared manifest reader (index + newer runs;
    a run_id selection reads only that run's partition), file paths resolved to URIs."""
    from pipeline.errors import StorageConfigError
    from pipeline.manifest import ManifestReader, keep_latest_ok, resolve_table, run_rows

    reader = ManifestReader(params.archive, params.fsspec_options())
    if not reader.has_manifest():
        raise StorageConfigError(f"{params.archive} has no manifest: not a compress-archive destination")
    filters = []
    if params.source_keys:
        filters.append(ds.field("source_key").isin(params.source_keys))
    if params.prefix is not None:
        filters.append(pc.starts_with(ds.field("source_key"), params.prefix))
    if not (filters or params.glob or params.run_id):  # never everything by accident: prefix="" asks for all
        raise ValueError("select something: source_keys, prefix, glob or run_id")
    expr = ds.field("status") == "ok"
    for f in filters:
        expr = expr & f
    if params.run_id:
        tables = [resolve_table(keep_latest_ok(run_rows(reader, params.run_id, expr)), reader.base)]
    else:
        tables = reader.latest(filter=expr, ok_only=True)
    rows = []
    for t in tables:
        for row in t.to_pylist():
            if not params.glob or fnmatch.fnmatch(row["source_key"], params.glob):
                rows.append(row)
    return rows


def restored_path(params: RehydrateParams, row: dict, root: str) -> str:
    """Where in `to` this run writes `row`'s full image (UnsafeKeyError for a key escaping it)."""
    return safe_join(root, restored_key(row, params.restored_format))


def already_done(params: RehydrateParams) -> set[tuple[str, str, bool]]:
    """(restored file, small sha256, preview) of every file an earlier run wrote into `to`: a rerun
    skips a row only when it would write the same file from the same small file, with or without
    the layer as before (a preview is redone in full when full is asked; another format is written)."""
    fs, root = params.fs(params.to)
    cols = ["restored_uri", "small_sha256", "preview", "status"]
    table = read_manifest(fs, root, columns=cols, schema=REHYDRATE_SCHEMA)
    return {(uri, sha, bool(preview)) for uri, sha, preview, st in zip(*(table.column(c).to_pylist() for c in cols))
            if st == "ok"}


def not_done(params: RehydrateParams, rows: list[dict]) -> list[dict]:
    """The selected rows this run still has to write (see already_done)."""
    done = already_done(params)
    if not done:
        return rows
    fs, root = params.fs(params.to)
    prefix = protocol_prefix(fs)

    def done_before(row: dict) -> bool:
        try:
            uri = prefix + restored_path(params, row, root)
        except UnsafeKeyError:
            return False  # the worker refuses it, as a row
        return (uri, row["output_sha256"], params.preview) in done

    return [r for r in rows if not done_before(r)]
