"""The manifest index: a compacted, key-sorted current state of an archive's manifest, and the one
"latest row per key" reader that lookups, incremental planning and batch selection share.

    DEST/_manifest/run=<id>/part-NNNNN.parquet   run partitions: never modified or deleted here
    DEST/_index/v-<version>/part-NNNNN.parquet   an index version: key-sorted, zstd, small row groups
    DEST/_index/CURRENT.json                     the pointer: the version's files (key ranges) and
                                                 the run partitions it folded (parts per run)

An index version holds, per source key, its latest row (newest processed_at, then newest run)
and, when that row is not `ok`, also the key's latest `ok` row, so an object whose new version
failed still rehydrates from its earlier small file. Rows are sorted by key, then newest first.

Compaction (`compact`) merges the current index with every part not folded yet, writes a new
version, and only then replaces the pointer in one atomic write. A crash before that leaves an
unreferenced folder (removed by a later compaction) and the old pointer: readers never see a
half-written index and nothing is lost, because the run partitions are the source of truth and
compaction never touches them. Rerunning with nothing new is a no-op.

Readers (`ManifestReader`) read the pointer, then the index plus the parts it did not fold
("delta": runs newer than the index, or parts a still-running run wrote after it). Columns are
schema-generic: every column of `manifest.SCHEMA` is carried, older files read with nulls.
"""

from __future__ import annotations

import bisect
import json
import posixpath
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.manifest import RUNS_DIR, SCHEMA, manifest_root
from pipeline.s3 import arrow_filesystem
from pipeline.sorted_merge import first_of_group, merge_sorted, rebatch
from pipeline.storage import atomic_write, filesystem

INDEX_DIR = "_index"
POINTER = "CURRENT.json"
KEY = "source_key"
ORDER = [(KEY, "ascending", "at_end"), ("processed_at", "descending", "at_end"), ("run_id", "descending", "at_end")]  # nulls oldest
PLAN_COLUMNS = [KEY, "processed_at", "run_id", "source_etag", "source_size", "status", "model_id", "fidelity", "target_psnr"]
ROW_GROUP = 4096  # rows per row group: a lookup reads one (about 0.5 MB with every column)
FILE_ROWS = 1_000_000  # rows per index file (its footer is read once per reader)
FAN_IN = 64  # parts merged at once; more are merged in rounds through temporary files
BATCH = 65_536
MERGE_BATCH = 8192  # rows per source when up to FAN_IN sources are merged at once (bounds compaction memory)
_PART = re.compile(r"part-(\d+)\.parquet$")


def index_root(dest: str) -> str:
    return f"{dest.rstrip('/')}/{INDEX_DIR}"


# ---- keeping rows -------------------------------------------------------------------------

def keep_latest(t: pa.Table) -> pa.Table:
    """First row of each key group (tables sorted by ORDER): the latest row per key."""
    return t.filter(pa.array(first_of_group(t.column(KEY).combine_chunks())))


def keep_state(t: pa.Table) -> pa.Table:
    """The index rows: the latest row per key, plus the latest ok row where the latest is not ok."""
    keys = t.column(KEY).combine_chunks()
    mask = first_of_group(keys)
    ok = np.flatnonzero(pc.equal(t.column("status"), "ok").fill_null(False).to_numpy(zero_copy_only=False))
    if len(ok):
        mask[ok[first_of_group(keys.take(pa.array(ok)))]] = True
    return t.filter(pa.array(mask))


def keep_latest_ok(t: pa.Table) -> pa.Table:
    return keep_latest(t.filter(pc.equal(t.column("status"), "ok").fill_null(False)))


def conform(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns (missing ones null, types cast): files written
    before a column was added read like new ones."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    cols = []
    for f in schema:
        if f.name in table.column_names:
            c = table.column(f.name)
            cols.append(c if c.type == f.type else c.cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


# ---- snapshot: the pointer and what it did not fold ------------------------------------------

@dataclass
class IndexFile:
    path: str
    rows: int
    min_key: str
    max_key: str


@dataclass
class Snapshot:
    version: str | None
    files: list[IndexFile]
    runs: dict  # run_id -> {"parts": n, "complete": bool}, as folded by this version
    delta: list[str]  # part files not folded
    keys: int = 0
    rows: int = 0
    read_at: float = field(default_factory=time.monotonic)


def _part_no(path: str) -> int:
    m = _PART.search(path)
    return int(m.group(1)) if m else -1


def _ls(fs, path: str) -> list[str]:
    try:
        return [p.rstrip("/") for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []


def read_pointer(fs, dest: str) -> dict | None:
    try:
        return json.loads(fs.cat_file(f"{index_root(dest)}/{POINTER}"))
    except FileNotFoundError:
        return None


def snapshot(fs, dest: str) -> Snapshot:
    """The current index version and the parts it did not fold (one GET + one LIST, plus a LIST
    per run partition that is newer than the index or was still being written when it was built)."""
    fs.invalidate_cache()
    pointer = read_pointer(fs, dest) or {}
    root = index_root(dest)
    files = [IndexFile(f"{root}/{f['path']}", f["rows"], f["min_key"], f["max_key"]) for f in pointer.get("files", [])]
    runs = pointer.get("runs", {})
    delta = []
    for run_dir in sorted(_ls(fs, manifest_root(dest))):
        name = posixpath.basename(run_dir)
        if not name.startswith("run="):
            continue
        folded = runs.get(name[4:])
        if folded and folded.get("complete"):
            continue
        start = folded["parts"] if folded else 0
        delta += [p for p in sorted(_ls(fs, run_dir)) if p.endswith(".parquet") and _part_no(p) >= start]
    return Snapshot(pointer.get("version"), files, runs, delta, pointer.get("keys", 0), pointer.get("rows", 0))


# ---- reading --------------------------------------------------------------------------------

def _read_parts(afs, paths: list[str], schema: pa.Schema, columns: list[str] | None, filter=None) -> pa.Table:
    """Rows of small part files (each at most rows_per_part rows), conformed and sorted by ORDER."""
    sub = pa.schema([schema.field(c) for c in columns]) if columns else schema
    if not paths:
        return sub.empty_table()
    dataset = ds.dataset(paths, format="parquet", filesystem=afs, schema=schema)
    table = dataset.to_table(columns=sub.names, filter=filter)
    return conform(table, sub).sort_by(ORDER)


def open_streaming(afs, path: str) -> pq.ParquetFile:
    """A Parquet file read a row group at a time. pyarrow's default pre-buffering fetches every
    column chunk of the file up front: with tens of files merged at once that was gigabytes."""
    return pq.ParquetFile(afs.open_input_file(path), pre_buffer=False, buffer_size=1 << 20)


def _file_batches(afs, path: str, schema: pa.Schema, columns: list[str] | None, batch: int = BATCH):
    sub = pa.schema([schema.field(c) for c in columns]) if columns else schema
    pf = open_streaming(afs, path)
    present = [c for c in sub.names if c in pf.schema_arrow.names]
    for b in pf.iter_batches(batch_size=batch, columns=present, use_threads=False):
        yield conform(b, sub)


def _with_order_columns(columns: list[str] | None) -> list[str] | None:
    if columns is None:
        return None
    return list(dict.fromkeys([*columns, *(c for c, *_ in ORDER)]))


class ManifestReader:
    """The latest manifest row per key: index + parts newer than it, one definition for all.

        reader = ManifestReader("s3://bucket/archive")
        reader.lookup("2024/cat.jpg")                # latest ok row (dict) or None
        for table in reader.latest(columns=[...]):   # key-sorted, one row per key, bounded memory
            ...

    A long-lived reader (a server) keeps the snapshot for `max_age_s` seconds and the Parquet
    footers of index files (immutable) for its lifetime; max_age_s=0 re-reads the pointer on
    every call, so a lookup always sees the runs finished just before it."""

    def __init__(self, archive: str, storage_options: dict | None = None, *, fs=None, root: str | None = None,
                 max_age_s: float = 0.0, schema: pa.Schema = SCHEMA):
        if fs is None:
            fs, root = filesystem(archive, storage_options)
        self.fs, self.root, self.schema, self.max_age_s = fs, root, schema, max_age_s
        self.afs = arrow_filesystem(fs)
        self._snap: Snapshot | None = None
        self._footers: dict[str, tuple[pq.ParquetFile, list]] = {}

    def snapshot(self, refresh: bool = False) -> Snapshot:
        if refresh or self._snap is None or time.monotonic() - self._snap.read_at >= self.max_age_s:
            self._snap = snapshot(self.fs, self.root)
        return self._snap

    def has_manifest(self, snap: Snapshot | None = None) -> bool:
        snap = snap or self.snapshot()
        return bool(snap.files or snap.delta or self.fs.exists(manifest_root(self.root)))

    # -- streaming: planning, selection, compaction
    def latest(self, columns: list[str] | None = None, filter=None, ok_only: bool = False,
               keep=None) -> Iterator[pa.Table]:
        """Key-sorted tables, one row per key (the latest row, or the latest ok row), of the
        given columns. Index files stream; the unfolded parts (one run's worth when compaction
        runs after each run) are read whole."""
        snap = self.snapshot()
        cols = _with_order_columns(columns)
        if ok_only and cols is not None and "status" not in cols:
            cols.append("status")
        if keep is None:
            keep = keep_latest_ok if ok_only else keep_latest
        sources = [self._index_stream(snap, cols, filter)]
        if snap.delta:
            sources.append([_read_parts(self.afs, snap.delta, self.schema, cols, filter)])
        for t in merge_sorted(sources, KEY, ORDER, keep):
            yield t.select(columns) if columns is not None else t

    def _index_stream(self, snap: Snapshot, columns, filter=None) -> Iterator[pa.Table]:
        sub = pa.schema([self.schema.field(c) for c in columns]) if columns else self.schema
        for f in snap.files:  # non-overlapping key ranges, in order: a chain is a sorted stream
            if filter is None:
                yield from _file_batches(self.afs, f.path, self.schema, columns)
            else:
                dataset = ds.dataset([f.path], format="parquet", filesystem=self.afs, schema=self.schema)
                for b in dataset.to_batches(columns=sub.names, filter=filter, use_threads=False, batch_size=BATCH):
                    if b.num_rows:
                        yield conform(b, sub)

    # -- point lookups: rehydrate, the serve endpoint
    def _footer(self, path: str):
        if path not in self._footers:
            pf = pq.ParquetFile(self.afs.open_input_file(path))
            idx = pf.schema_arrow.get_field_index(KEY)
            bounds = []
            for i in range(pf.metadata.num_row_groups):
                st = pf.metadata.row_group(i).column(idx).statistics
                bounds.append((st.min, st.max) if st is not None and st.has_min_max else (None, None))
            if len(self._footers) > 256:
                self._footers.clear()
            self._footers[path] = (pf, bounds)
        return self._footers[path]

    def _index_rows(self, snap: Snapshot, key: str) -> pa.Table:
        starts = [f.min_key for f in snap.files]
        i = bisect.bisect_right(starts, key) - 1
        if i < 0 or key > snap.files[i].max_key:
            return self.schema.empty_table()
        pf, bounds = self._footer(snap.files[i].path)
        groups = [g for g, (lo, hi) in enumerate(bounds) if lo is None or (lo <= key <= hi)]
        if not groups:
            return self.schema.empty_table()
        t = conform(pf.read_row_groups(groups, use_threads=False), self.schema)
        return t.filter(pc.equal(t.column(KEY), key))

    def rows_for_key(self, key: str, snap: Snapshot | None = None) -> pa.Table:
        """Every candidate row of one key (index rows + unfolded parts), sorted newest first."""
        for attempt in range(2):
            snap = snap if snap is not None and attempt == 0 else self.snapshot(refresh=attempt > 0)
            try:
                rows = [self._index_rows(snap, key)] if snap.files else []
                if snap.delta:
                    rows.append(_read_parts(self.afs, snap.delta, self.schema, None, ds.field(KEY) == key))
                return (pa.concat_tables(rows) if rows else self.schema.empty_table()).sort_by(ORDER)
            except FileNotFoundError:  # an index version replaced and collected under us: re-read the pointer
                self._footers.clear()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def lookup(self, key: str, ok_only: bool = True, snap: Snapshot | None = None) -> dict | None:
        """The latest ok row (or latest row) of a source key, as a dict; None when there is none."""
        rows = self.rows_for_key(key, snap)
        rows = keep_latest_ok(rows) if ok_only else keep_latest(rows)
        return rows.slice(0, 1).to_pylist()[0] if rows.num_rows else None

    def find(self, key_or_uri: str, snap: Snapshot | None = None) -> dict | None:
        """The latest ok row of a source key, or of a small file's URI (with or without scheme)."""
        from pipeline.small_file import SUFFIX
        from pipeline.storage import protocol_prefix

        prefix = protocol_prefix(self.fs)
        if "://" in key_or_uri or key_or_uri.startswith(prefix + self.root):
            uri = key_or_uri if "://" in key_or_uri else prefix + key_or_uri
            return self.lookup_output_uri(uri, tuple(sorted(set(SUFFIX.values()), key=len, reverse=True)), snap)
        return self.lookup(key_or_uri, snap=snap)

    def lookup_output_uri(self, uri: str, suffixes: tuple[str, ...], snap: Snapshot | None = None) -> dict | None:
        """The latest ok row whose small file is `uri`: the key is the URI's path under the
        archive minus the small-file suffix, checked against the row."""
        from pipeline.storage import protocol_prefix

        base = protocol_prefix(self.fs) + self.root.rstrip("/") + "/"
        if uri.startswith(base):
            rel = uri[len(base):]
            for suffix in suffixes:
                if rel.endswith(suffix):
                    row = self.lookup(rel[: -len(suffix)], snap=snap)
                    if row is not None and row.get("output_uri") == uri:
                        return row
        # not derivable (another layout): a filtered scan, slow but correct
        for t in self.latest(filter=ds.field("output_uri") == uri, ok_only=True):
            if t.num_rows:
                best = t.sort_by([("processed_at", "descending", "at_end")])
                return best.slice(0, 1).to_pylist()[0]
        return None


def run_rows(reader: ManifestReader, run_id: str, filter=None) -> pa.Table:
    """Rows of one run partition (optionally filtered), sorted by ORDER."""
    parts = [p for p in _ls(reader.fs, f"{manifest_root(reader.root)}/run={run_id}") if p.endswith(".parquet")]
    return _read_parts(reader.afs, parts, reader.schema, None, filter)


_READERS: dict = {}


def shared_reader(archive: str, storage_options: dict | None = None) -> ManifestReader:
    """A process-wide reader per archive (max_age_s=0: always current; index footers cached)."""
    token = (archive, json.dumps(storage_options or {}, sort_keys=True, default=str))
    if token not in _READERS:
        if len(_READERS) >= 16:
            _READERS.clear()
        _READERS[token] = ManifestReader(archive, storage_options)
    return _READERS[token]


# ---- compaction -----------------------------------------------------------------------------

def _complete_runs(fs, dest: str) -> set[str]:
    return {posixpath.basename(p)[:-5] for p in _ls(fs, f"{dest.rstrip('/')}/{RUNS_DIR}") if p.endswith(".json")}


def _write_sorted(afs, folder: str, tables: Iterator[pa.Table], schema: pa.Schema, file_rows: int,
                  row_group: int) -> list[IndexFile]:
    """Key-sorted tables into numbered Parquet files of about `file_rows` rows, never splitting
    a key across files (so files have disjoint key ranges)."""
    afs.create_dir(folder, recursive=True)
    files: list[IndexFile] = []
    writer = None
    rows, first, last, path = 0, None, None, None

    def close():
        nonlocal writer
        if writer is not None:
            writer.close()
            files.append(IndexFile(path, rows, first, last))
            writer = None

    for t in rebatch(tables, row_group):
        keys = t.column(KEY)
        if writer is not None and rows >= file_rows and keys[0].as_py() != last:
            close()
        if writer is None:
            path = f"{folder}/part-{len(files):05d}.parquet"
            writer = pq.ParquetWriter(path, schema, filesystem=afs, compression="zstd")
            rows, first = 0, keys[0].as_py()
        writer.write_table(t, row_group_size=row_group)
        rows += t.num_rows
        last = keys[-1].as_py()
    close()
    return files


def _merge_parts_to_runs(afs, tmp: str, parts: list[str], schema: pa.Schema) -> list[str]:
    """More than FAN_IN parts: merge them FAN_IN at a time into sorted temporary files (each
    already reduced to index rows), until at most FAN_IN sources remain."""
    level = 0
    while len(parts) > FAN_IN:
        merged = []
        for g in range(0, len(parts), FAN_IN):
            group = parts[g:g + FAN_IN]
            sources = [[_read_parts(afs, [p], schema, None)] if level == 0 else
                       _file_batches(afs, p, schema, None, MERGE_BATCH) for p in group]
            out = _write_sorted(afs, f"{tmp}/l{level}-{g // FAN_IN:05d}", merge_sorted(sources, KEY, ORDER, keep_state),
                                schema, 1 << 62, ROW_GROUP)
            merged += [f.path for f in out]
        parts, level = merged, level + 1
    return parts


def compact(fs, dest: str, *, schema: pa.Schema = SCHEMA, file_rows: int = FILE_ROWS,
            row_group: int = ROW_GROUP) -> dict:
    """Fold every unfolded part into a new index version, then swap the pointer. Returns the
    pointer (unchanged, with "compacted": False, when nothing was new)."""
    snap = snapshot(fs, dest)
    old = read_pointer(fs, dest)
    if not snap.delta and old is not None:
        return {**old, "compacted": False}
    if not snap.delta and not fs.exists(manifest_root(dest)):
        return {"compacted": False, "files": [], "rows": 0, "keys": 0}
    afs = arrow_filesystem(fs)
    started = time.monotonic()
    complete = _complete_runs(fs, dest)  # listed before the parts below: a run marked complete has all its parts
    snap = snapshot(fs, dest)
    version = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]
    root = index_root(dest)
    folder, tmp = f"{root}/v-{version}", f"{root}/tmp-{version}"
    parts = _merge_parts_to_runs(afs, tmp, snap.delta, schema)
    sources: list = [ManifestReader(dest, fs=fs, root=dest, schema=schema)._index_stream(snap, None)]
    if len(snap.delta) <= FAN_IN:
        sources += [[_read_parts(afs, [p], schema, None)] for p in parts]
    else:
        sources += [_file_batches(afs, p, schema, None, MERGE_BATCH) for p in parts]
    counter = {"keys": 0}
    merged = _counting_keys(merge_sorted(sources, KEY, ORDER, keep_state), counter)
    files = _write_sorted(afs, folder, merged, schema, file_rows, row_group)
    keys = counter["keys"]
    runs = dict(snap.runs)
    for p in snap.delta:
        run_id = posixpath.basename(posixpath.dirname(p))[4:]
        runs[run_id] = {"parts": max(runs.get(run_id, {}).get("parts", 0), _part_no(p) + 1),
                        "complete": run_id in complete}
    pointer = {
        "format": 1, "version": version, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": sum(f.rows for f in files), "keys": keys,
        "files": [{"path": posixpath.relpath(f.path, root), "rows": f.rows, "min_key": f.min_key,
                   "max_key": f.max_key} for f in files],
        "runs": runs, "folded_parts": len(snap.delta), "previous": (old or {}).get("version"),
        "seconds": round(time.monotonic() - started, 3),
    }
    atomic_write(fs, f"{root}/{POINTER}", json.dumps(pointer, indent=1).encode())  # the commit point
    _collect(fs, root, version, keep={(old or {}).get("version")})
    return {**pointer, "compacted": True}


def _counting_keys(tables: Iterator[pa.Table], counter: dict) -> Iterator[pa.Table]:
    """Pass key-sorted tables through, counting distinct keys into counter["keys"]."""
    prev = None
    for t in tables:
        keys = t.column(KEY).combine_chunks()
        first = first_of_group(keys)
        if len(keys) and keys[0].as_py() == prev:
            first[0] = False
        counter["keys"] += int(first.sum())
        prev = keys[-1].as_py() if len(keys) else prev
        yield t


def _collect(fs, root: str, version: str, keep: set) -> None:
    """After a pointer swap: remove index versions older than the previous one, our temporary
    files, and leftovers of crashed compactions (folders older than this version that no
    pointer names). A reader holding the previous pointer still finds its files; one holding an
    older pointer re-reads it (see rows_for_key). Newer folders belong to a concurrent run."""
    for p in _ls(fs, root):
        name = posixpath.basename(p)
        if name.startswith("tmp-") and name[4:] <= version or (
                name.startswith("v-") and name[2:] < version and name[2:] not in keep):
            fs.rm(p, recursive=True)


def needs_compaction(snap: Snapshot, afs, max_parts: int = 8, max_share: float = 0.02) -> bool:
    """Policy "auto": compact when something is unfolded and there is no index yet, or the
    unfolded parts are many (each costs a read per lookup) or large (held while planning)."""
    if not snap.delta:
        return False
    if not snap.files or len(snap.delta) >= max_parts:
        return True
    return count_part_rows(afs, snap.delta) >= max(10_000, max_share * snap.rows)


def count_part_rows(afs, paths: list[str]) -> int:
    return sum(pq.ParquetFile(afs.open_input_file(p)).metadata.num_rows for p in paths)


def main(argv: list[str] | None = None) -> int:
    """python -m pipeline.manifest_index DEST [--file-rows N]: compact DEST's manifest."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipeline.manifest_index", description=main.__doc__)
    ap.add_argument("dest")
    ap.add_argument("--file-rows", type=int, default=FILE_ROWS)
    ap.add_argument("--row-group", type=int, default=ROW_GROUP)
    args = ap.parse_args(argv)
    fs, root = filesystem(args.dest)
    result = compact(fs, root, file_rows=args.file_rows, row_group=args.row_group)
    result.pop("runs", None)
    result["files"] = len(result.get("files", []))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
