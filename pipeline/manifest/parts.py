"""The archive manifest: one Parquet row per input per run, failures included.

    DEST/_manifest/run=<run_id>/part-<NNNNN>.parquet     rows (hive-partitioned by run)
    DEST/_runs/<run_id>.json                              run stats, written last = the run is done

The schema is versioned (`SCHEMA_VERSION`, also in each file's metadata) and readable by
pyarrow.dataset, DuckDB and Spark. A row is only ever written after its small file was written
and verified, so an `ok` row always points at a complete object.

Versions: 2 added `small_quality` (the quality of a lossy small file); 3 added the fidelity columns
(`fidelity`, `target_psnr`, the verified `psnr_y` / `psnr_rgb`, `thumbnail_psnr`) and the
enhancement layer's (`enhancement_uri`, `_format`, `_quality`, `_size`, `_sha256`; null without one). Columns are only ever
added, so older part files stay readable: `manifest_dataset` reads every part with the current
schema and a column a part lacks reads as null (DuckDB: `union_by_name=true`; Spark: `mergeSchema`).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import time

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.errors import ManifestWriteError, StorageConfigError, os_error_line
from pipeline.manifest.paths import archive_base, resolve_table
from pipeline.manifest.rows import ARCHIVE_SCHEMA, ArchiveRow, ManifestRow
from pipeline.storage import FORMAT, WRITE_OPTIONS, atomic_write, protocol_prefix, reading_filesystem

SCHEMA_VERSION = ArchiveRow.SCHEMA_VERSION
MANIFEST_DIR = "_manifest"
RUNS_DIR = "_runs"
ROW_GROUP = 2000
SCHEMA = ARCHIVE_SCHEMA  # derived from the row model (pipeline.manifest.rows.ArchiveRow): columns are defined there


def manifest_root(dest: str) -> str:
    return f"{dest.rstrip('/')}/{MANIFEST_DIR}"


FLUSH_SECONDS = 30.0  # a part at least this often: a run that dies loses at most this much of its rows
URGENT_GAP_S = 2.0  # an urgent flush (a write just failed) at most this often
RESERVE_NAME = ".reserve"  # readers skip dot files (pyarrow datasets, the `*.parquet` globs)


def reserve_bytes(rows_per_part: int) -> int:
    """Disk kept back for a local manifest: two parts of `rows_per_part` rows (about 300 B a row
    with zstd; 512 B counted) and their footers."""
    return 2 * (64 * 1024 + 512 * rows_per_part)


class ManifestWriter:
    """Buffers rows and writes numbered part files atomically: when `rows_per_part` rows are
    buffered, `flush_s` seconds after the last part, or at once (`add(row, urgent=True)`: a write
    just failed, save the rows while the destination may still take them); `close()` flushes the
    rest. A part that cannot be written raises ManifestWriteError (one line) and keeps its rows
    buffered, so `close()` tries them once more; `unsaved` says how many were never written.

    Local destinations: the writer first reserves `reserve_bytes` in its run folder (a `.reserve`
    file: a disk that cannot spare it is refused before any work) and gives that room back, as
    much as a part needs, when the disk is full, so the rows of images already written still fit.
    `close()` removes what is left of it."""

    def __init__(self, fs, dest: str, run_id: str, rows_per_part: int = 5000, schema: pa.Schema = SCHEMA,
                 flush_s: float = FLUSH_SECONDS, reserve: bool = False):
        self.fs, self.run_id, self.rows_per_part, self.schema = fs, run_id, rows_per_part, schema
        self.dest, self.flush_s = dest, flush_s
        self.folder = f"{manifest_root(dest)}/run={run_id}"
        self.buffer: list[dict] = []
        self.parts = 0
        self.rows = 0
        self.flushed_at = time.monotonic()
        self.error: str | None = None  # the last failed part write, one line
        self.reserve: str | None = None
        if reserve and protocol_prefix(fs) == "":
            self._reserve(reserve_bytes(rows_per_part))

    @property
    def unsaved(self) -> int:
        return len(self.buffer)

    def _reserve(self, size: int) -> None:
        path = f"{self.folder}/{RESERVE_NAME}"
        try:
            os.makedirs(self.folder, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError as exc:
            _unlink(path)
            raise StorageConfigError(f"cannot keep {size // 1024} KiB free for the manifest under {self.dest}: "
                                     f"{os_error_line(exc) or exc}") from None
        self.reserve = path

    def _give_back(self, size: int) -> bool:
        """Shrink the reserve by `size` bytes (all of it when smaller); False when none is left."""
        if self.reserve is None:
            return False
        left = max(0, os.path.getsize(self.reserve) - size)
        if left == 0:
            _unlink(self.reserve)
            self.reserve = None
        else:
            os.truncate(self.reserve, left)
        return True

    def to_table(self, rows: list[ManifestRow | dict]) -> pa.Table:
        dicts = [r.model_dump() if isinstance(r, ManifestRow) else r for r in rows]
        return pa.Table.from_pylist([{f.name: r.get(f.name) for f in self.schema} for r in dicts], schema=self.schema)

    def add(self, row: ManifestRow | dict, urgent: bool = False) -> None:
        self.buffer.append(row)
        since = time.monotonic() - self.flushed_at
        if len(self.buffer) >= self.rows_per_part or since >= self.flush_s or (urgent and since >= URGENT_GAP_S):
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            table = self.to_table(self.buffer)
            while True:
                try:
                    self.write_table(table)
                    break
                except OSError as exc:  # disk full, read-only, refused: the rows stay buffered
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and self._give_back(2 * table.nbytes + 64 * 1024):
                        continue  # room the reserve kept for exactly this
                    self.error = os_error_line(exc) or f"{type(exc).__name__}: {exc}"
                    raise ManifestWriteError(f"cannot write the manifest under {self.dest}: {self.error}") from exc
            self.buffer = []
        self.flushed_at = time.monotonic()

    def write_table(self, table: pa.Table) -> None:
        """Write one part file from a table of this writer's schema."""
        buf = io.BytesIO()
        # sorted by key: row-group statistics then let a one-key lookup skip most of the data
        pq.write_table(table.sort_by("source_key"), buf, compression="zstd", row_group_size=ROW_GROUP,
                       **WRITE_OPTIONS)
        atomic_write(self.fs, f"{self.folder}/part-{self.parts:05d}.parquet", buf.getvalue())
        self.parts += 1
        self.rows += table.num_rows

    def close(self, raise_errors: bool = True) -> None:
        """Flush the rest; with raise_errors=False a failure only leaves `error` and `unsaved` set.
        The reserve is removed either way."""
        try:
            self.flush()
        except ManifestWriteError:
            if raise_errors:
                raise
        finally:
            if self.reserve is not None:
                _unlink(self.reserve)
                self.reserve = None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def manifest_dataset(fs, dest: str, schema: pa.Schema = SCHEMA) -> ds.Dataset | None:
    """The manifest under DEST as a pyarrow dataset (None when there is none yet), every part read
    with `schema` (columns a part of an older version lacks read as null).

    It reads through fsspec (a Python filesystem; files in blocks through storage.read_bytes, page
    checksums verified: pipeline.storage.parquet): scan it with use_threads=False. Threaded scans
    over a Python filesystem can abort the interpreter at exit ("terminate called without an
    active exception", seen with pyarrow 26), and the GIL serialises them anyway."""
    root = manifest_root(dest)
    fs.invalidate_cache()  # parts written by other processes since the last listing
    if not fs.exists(root):
        return None
    # the run partition column duplicates run_id: keep the file schema only
    return ds.dataset(root, format=FORMAT, filesystem=reading_filesystem(fs), schema=schema,
                      partitioning=None, exclude_invalid_files=True)


def read_manifest(fs, dest: str, columns: list[str] | None = None, filter=None, schema: pa.Schema = SCHEMA) -> pa.Table:
    """All manifest rows under DEST (optionally a column subset / pyarrow filter expression), file
    paths resolved to URIs (pipeline.manifest.paths)."""
    dataset = manifest_dataset(fs, dest, schema)
    if dataset is None:
        empty = schema.empty_table()
        return empty if columns is None else empty.select(columns)
    return resolve_table(dataset.to_table(columns=columns, filter=filter, use_threads=False), archive_base(fs, dest))


def json_safe(v):
    """Strict JSON has no infinity: an exact (lossless) fidelity's target is written as "inf"."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    return v


def write_run_stats(fs, dest: str, run_id: str, stats: dict) -> str:
    path = f"{dest.rstrip('/')}/{RUNS_DIR}/{run_id}.json"
    atomic_write(fs, path, json.dumps(json_safe(stats), indent=2, default=str).encode())
    return path
