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

Concurrent compactions need no lock: each announces itself with `_index/inflight-<version>.json`
before it writes, and garbage collection (`collect`) never removes a version that the pointer
names (or named before), that an in-flight marker announces, or that is younger than GRACE_S.
Two compactions at once both write whole versions and the last pointer write wins; whatever it
did not fold stays in the delta. An index that is missing or corrupt (page checksums) is never
trusted: readers fall back to the run partitions with a warning, and compaction rebuilds it.

Readers (`ManifestReader`) read the pointer, then the index plus the parts it did not fold
("delta": runs newer than the index, or parts a still-running run wrote after it). Columns are
schema-generic: every column of `manifest.SCHEMA` is carried, older files read with nulls.
Rows name their files (`output_uri`, `enhancement_uri`) relative to the archive root; readers
resolve them (`resolve_row`), so a copied archive reads its own files. Absolute URIs of archives
written before read as they are, and compaction rewrites them relative (pointer format 2).
"""

from __future__ import annotations

import bisect
import json
import logging
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

from pipeline.manifest.parts import RUNS_DIR, SCHEMA, manifest_root
from pipeline.manifest.paths import archive_base, relativize, resolve_row, resolve_table
from pipeline.storage import (
    FORMAT,
    LOOKUP_BLOCK,
    READ_ERRORS,
    WRITE_OPTIONS,
    arrow_filesystem,
    atomic_write,
    filesystem,
    first_of_group,
    merge_sorted,
    open_parquet,
    protocol_prefix,
    read_table,
    reading_filesystem,
    rebatch,
)

log = logging.getLogger(__name__)

INDEX_DIR = "_index"
POINTER = "CURRENT.json"
KEY = "source_key"
ORDER = [(KEY, "ascending", "at_end"), ("processed_at", "descending", "at_end"), ("run_id", "descending", "at_end")]  # nulls oldest
PLAN_COLUMNS = [KEY, "processed_at", "run_id", "source_etag", "source_size", "status", "model_id", "fidelity", "target_psnr",
                "target_score"]
ROW_GROUP = 4096  # rows per row group: a lookup reads one (about 0.5 MB with every column)
FILE_ROWS = 1_000_000  # rows per index file (its footer is read once per reader)
FAN_IN = 64  # parts merged at once; more are merged in rounds through temporary files
BATCH = 65_536
MERGE_BATCH = 8192  # rows per source when up to FAN_IN sources are merged at once (bounds compaction memory)
_PART = re.compile(r"part-(\d+)\.parquet$")
POINTER_FORMAT = 2  # 2: rows name their files relative to the archive root (1: absolute URIs)
INFLIGHT = "inflight-"  # _index/inflight-<version>.json: a compaction writing that version
GRACE_S = 900.0  # an unreferenced index version younger than this stays (a reader may still stream it)
INFLIGHT_TTL_S = 24 * 3600.0  # an in-flight marker older than this is a crashed compaction's
MULTIPART_GRACE_S = 24 * 3600.0  # incomplete multipart uploads older than this are aborted


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
    format: int = POINTER_FORMAT
    problem: str | None = None  # why the index is not used (missing or corrupt): every part is delta
    read_at: float = field(default_factory=time.monotonic)


def _part_no(path: str) -> int:
    m = _PART.search(path)
    return int(m.group(1)) if m else -1


def _ls(fs, path: str) -> list[str]:
    try:
        return [p.rstrip("/") for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []


class PointerError(ValueError):
    """_index/CURRENT.json is not a pointer (a truncated or modified file)."""


def read_pointer(fs, dest: str) -> dict | None:
    """The pointer, None when there is none, PointerError when it cannot be one."""
    try:
        data = fs.cat_file(f"{index_root(dest)}/{POINTER}")
    except FileNotFoundError:
        return None
    try:
        pointer = json.loads(data)
        if not isinstance(pointer, dict) or not all(
                {"path", "rows", "min_key", "max_key"} <= set(f) for f in pointer.get("files", [])):
            raise ValueError("not an index pointer")
        return pointer
    except ValueError as exc:
        raise PointerError(f"{index_root(dest)}/{POINTER} is unreadable ({exc})") from None


def snapshot(fs, dest: str) -> Snapshot:
    """The current index version and the parts it did not fold (one GET + one LIST, plus a LIST
    per run partition that is newer than the index or was still being written when it was built).
    An unreadable pointer gives the raw snapshot (every part, with a warning)."""
    fs.invalidate_cache()
    try:
        pointer = read_pointer(fs, dest) or {}
    except PointerError as exc:
        return raw_snapshot(fs, dest, str(exc))
    return _snapshot(fs, dest, pointer)


def raw_snapshot(fs, dest: str, problem: str) -> Snapshot:
    """No index: every run partition's parts, read directly (slower, never wrong)."""
    log.warning("manifest index of %s not used: %s; reading the run partitions directly "
                "(`taid compact --repair` rebuilds it)", dest, problem)
    snap = _snapshot(fs, dest, {})
    snap.problem = problem
    return snap


def _snapshot(fs, dest: str, pointer: dict) -> Snapshot:
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
    return Snapshot(pointer.get("version"), files, runs, delta, pointer.get("keys", 0), pointer.get("rows", 0),
                    pointer.get("format", 1))


# ---- reading --------------------------------------------------------------------------------

def _read_parts(fs, paths: list[str], schema: pa.Schema, columns: list[str] | None, filter=None) -> pa.Table:
    """Rows of small part files (each at most rows_per_part rows, one whole GET each, checksums
    verified), conformed and sorted by ORDER."""
    sub = pa.schema([schema.field(c) for c in columns]) if columns else schema
    if not paths:
        return sub.empty_table()
    if filter is None:
        table = pa.concat_tables([conform(read_table(fs, p, sub.names), sub) for p in paths])
    else:  # a filter may name any column: whole rows, filtered, then the columns asked for
        table = pa.concat_tables([conform(read_table(fs, p), schema).filter(filter) for p in paths]).select(sub.names)
    return table.sort_by(ORDER)


def _file_batches(fs, path: str, schema: pa.Schema, columns: list[str] | None, batch: int = BATCH):
    sub = pa.schema([schema.field(c) for c in columns]) if columns else schema
    pf = open_parquet(fs, path)
    present = [c for c in sub.names if c in pf.schema_arrow.names]
    for b in pf.iter_batches(batch_size=batch, columns=present, use_threads=False):
        yield conform(b, sub)


def _with_order_columns(columns: list[str] | None) -> list[str] | None:
    if columns is None:
        return None
    return list(dict.fromkeys([*columns, *(c for c, *_ in ORDER)]))


PART_CACHE_ROWS = 200_000  # rows of unfolded parts a reader keeps in memory (a few tens of MB)


class ManifestReader:
    """The latest manifest row per key: index + parts newer than it, one definition for all.

        reader = ManifestReader("s3://bucket/archive")
        reader.lookup("2024/cat.jpg")                # latest ok row (dict, paths resolved) or None
        for table in reader.latest(columns=[...]):   # key-sorted, one row per key, bounded memory
            ...

    A long-lived reader (a server) keeps the snapshot for `max_age_s` seconds and the Parquet
    footers of index files (immutable) for its lifetime; max_age_s=0 re-reads the pointer on
    every call, so a lookup always sees the runs finished just before it. An index that cannot
    be read (missing, corrupt) is left for the run partitions, with a warning."""

    def __init__(self, archive: str, storage_options: dict | None = None, *, fs=None, root: str | None = None,
                 max_age_s: float = 0.0, schema: pa.Schema = SCHEMA):
        if fs is None:
            fs, root = filesystem(archive, storage_options)
        self.fs, self.root, self.schema, self.max_age_s = fs, root, schema, max_age_s
        self.base = archive_base(fs, root)
        self._snap: Snapshot | None = None
        self._footers: dict[str, tuple[pq.ParquetFile, list]] = {}
        self._parts: dict[str, pa.Table] = {}  # unfolded part files, whole and conformed (PART_CACHE_ROWS)

    def snapshot(self, refresh: bool = False) -> Snapshot:
        if refresh or self._snap is None or time.monotonic() - self._snap.read_at >= self.max_age_s:
            self._snap = snapshot(self.fs, self.root)
        return self._snap

    def without_index(self, problem: BaseException | str) -> Snapshot:
        """The index cannot be read: the raw snapshot (kept like any snapshot for max_age_s)."""
        self._footers.clear()
        self._parts.clear()
        why = problem if isinstance(problem, str) else f"{type(problem).__name__}: {problem}"
        self._snap = raw_snapshot(self.fs, self.root, why)
        return self._snap

    def has_manifest(self, snap: Snapshot | None = None) -> bool:
        snap = snap or self.snapshot()
        return bool(snap.files or snap.delta or self.fs.exists(manifest_root(self.root)))

    def resolve(self, row: dict) -> dict:
        """A row with its file columns as URIs (see resolve_row)."""
        return resolve_row(row, self.base)

    # -- streaming: planning, selection, compaction
    def latest(self, columns: list[str] | None = None, filter=None, ok_only: bool = False,
               keep=None) -> Iterator[pa.Table]:
        """Key-sorted tables, one row per key (the latest row, or the latest ok row), of the
        given columns, file paths resolved. Index files stream; the unfolded parts (one run's
        worth when compaction runs after each run) are read whole. If the index breaks mid-way,
        the rest (keys after the last one given) comes from the run partitions."""
        snap = self.snapshot()
        last = None
        try:
            for t in self._latest(snap, columns, filter, ok_only, keep):
                if t.num_rows:
                    last = t.column(KEY)[-1].as_py()
                yield t
        except READ_ERRORS as exc:
            if not snap.files:
                raise
            after = ds.field(KEY) > last if last is not None else None
            rest = after if filter is None else (filter if after is None else filter & after)
            yield from self._latest(self.without_index(exc), columns, rest, ok_only, keep)

    def _latest(self, snap: Snapshot, columns, filter, ok_only: bool, keep) -> Iterator[pa.Table]:
        cols = _with_order_columns(columns)
        if ok_only and cols is not None and "status" not in cols:
            cols.append("status")
        if keep is None:
            keep = keep_latest_ok if ok_only else keep_latest
        sources = [self._index_stream(snap, cols, filter)]
        if snap.delta:
            sources.append([_read_parts(self.fs, snap.delta, self.schema, cols, filter)])
        for t in merge_sorted(sources, KEY, ORDER, keep):
            yield resolve_table(t.select(columns) if columns is not None else t, self.base)

    def _index_stream(self, snap: Snapshot, columns, filter=None) -> Iterator[pa.Table]:
        sub = pa.schema([self.schema.field(c) for c in columns]) if columns else self.schema
        for f in snap.files:  # non-overlapping key ranges, in order: a chain is a sorted stream
            if filter is None:
                yield from _file_batches(self.fs, f.path, self.schema, columns)
            else:  # a dataset: row groups whose statistics rule the filter out are not read
                dataset = ds.dataset([f.path], format=FORMAT, filesystem=reading_filesystem(self.fs), schema=self.schema)
                for b in dataset.to_batches(columns=sub.names, filter=filter, use_threads=False, batch_size=BATCH):
                    if b.num_rows:
                        yield conform(b, sub)

    # -- point lookups: rehydrate, the serve endpoint
    def _footer(self, path: str):
        if path not in self._footers:
            pf = open_parquet(self.fs, path, LOOKUP_BLOCK)
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
        """Every candidate row of one key (index rows + unfolded parts), sorted newest first. An
        index replaced and collected under us: the pointer is read again; an index that still
        cannot be read: the run partitions."""
        raw = None
        for attempt in range(3):
            if attempt == 1:
                snap = self.snapshot(refresh=True)
            elif attempt == 2:
                snap = raw
            elif snap is None:
                snap = self.snapshot()
            try:
                rows = [self._index_rows(snap, key)] if snap.files else []
                if snap.delta:
                    rows.append(self._delta_rows(snap.delta, key))
                else:
                    self._parts.clear()  # all folded
                return (pa.concat_tables(rows) if rows else self.schema.empty_table()).sort_by(ORDER)
            except READ_ERRORS as exc:
                self._footers.clear()
                self._parts.clear()
                if not snap.files:
                    raise
                if attempt == 1:
                    raw = self.without_index(exc)
        raise AssertionError("unreachable")

    def _delta_rows(self, paths: list[str], key: str) -> pa.Table:
        """The rows of one key in the unfolded parts. A part file never changes once written, so a
        reader keeps the parts it read (up to PART_CACHE_ROWS rows, those still unfolded): a server's
        lookups then cost no GET per unfolded part and request."""
        for gone in set(self._parts) - set(paths):  # folded into the index (or collected) since
            self._parts.pop(gone, None)  # (pop, list: a server's threads may share this reader)
        cached = sum(t.num_rows for t in list(self._parts.values()))
        out = []
        for path in paths:
            table = self._parts.get(path)
            if table is None:
                table = conform(read_table(self.fs, path), self.schema)
                if cached + table.num_rows <= PART_CACHE_ROWS:
                    self._parts[path], cached = table, cached + table.num_rows
            out.append(table.filter(pc.equal(table[KEY], key)))
        return pa.concat_tables(out)

    def lookup(self, key: str, ok_only: bool = True, snap: Snapshot | None = None) -> dict | None:
        """The latest ok row (or latest row) of a source key, as a dict with its file paths
        resolved; None when there is none."""
        rows = self.rows_for_key(key, snap)
        rows = keep_latest_ok(rows) if ok_only else keep_latest(rows)
        return self.resolve(rows.slice(0, 1).to_pylist()[0]) if rows.num_rows else None

    def find(self, key_or_uri: str, snap: Snapshot | None = None) -> dict | None:
        """The latest ok row of a source key, or of a small file's URI (with or without scheme)."""
        from pipeline.codec import SUFFIX

        prefix = protocol_prefix(self.fs)
        if "://" in key_or_uri or key_or_uri.startswith(prefix + self.root):
            uri = key_or_uri if "://" in key_or_uri else prefix + key_or_uri
            return self.lookup_output_uri(uri, tuple(sorted(set(SUFFIX.values()), key=len, reverse=True)), snap)
        return self.lookup(key_or_uri, snap=snap)

    def lookup_output_uri(self, uri: str, suffixes: tuple[str, ...], snap: Snapshot | None = None) -> dict | None:
        """The latest ok row whose small file is `uri`: the key is the URI's path under the
        archive minus the small-file suffix, checked against the row."""
        if uri.startswith(self.base):
            rel = uri[len(self.base):]
            for suffix in suffixes:
                if rel.endswith(suffix):
                    row = self.lookup(rel[: -len(suffix)], snap=snap)
                    if row is not None and row.get("output_uri") == uri:
                        return row
        # not derivable (another layout): a filtered scan, slow but correct
        names = [uri] + ([uri[len(self.base):]] if uri.startswith(self.base) else [])
        for t in self.latest(filter=ds.field("output_uri").isin(names), ok_only=True):
            if t.num_rows:
                best = t.sort_by([("processed_at", "descending", "at_end")])
                return best.slice(0, 1).to_pylist()[0]
        return None


def run_rows(reader: ManifestReader, run_id: str, filter=None) -> pa.Table:
    """Rows of one run partition (optionally filtered), sorted by ORDER."""
    parts = [p for p in _ls(reader.fs, f"{manifest_root(reader.root)}/run={run_id}") if p.endswith(".parquet")]
    return _read_parts(reader.fs, parts, reader.schema, None, filter)


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
            writer = pq.ParquetWriter(path, schema, filesystem=afs, compression="zstd", **WRITE_OPTIONS)
            rows, first = 0, keys[0].as_py()
        writer.write_table(t, row_group_size=row_group)
        rows += t.num_rows
        last = keys[-1].as_py()
    close()
    return files


def _merge_parts_to_runs(fs, afs, tmp: str, parts: list[str], schema: pa.Schema) -> list[str]:
    """More than FAN_IN parts: merge them FAN_IN at a time into sorted temporary files (each
    already reduced to index rows), until at most FAN_IN sources remain."""
    level = 0
    while len(parts) > FAN_IN:
        merged = []
        for g in range(0, len(parts), FAN_IN):
            group = parts[g:g + FAN_IN]
            sources = [[_read_parts(fs, [p], schema, None)] if level == 0 else
                       _file_batches(fs, p, schema, None, MERGE_BATCH) for p in group]
            out = _write_sorted(afs, f"{tmp}/l{level}-{g // FAN_IN:05d}", merge_sorted(sources, KEY, ORDER, keep_state),
                                schema, 1 << 62, ROW_GROUP)
            merged += [f.path for f in out]
        parts, level = merged, level + 1
    return parts


def index_problem(fs, snap: Snapshot, full: bool = False) -> str | None:
    """Why the index that `snap` names cannot be trusted, or None: a file it names is missing
    (one LIST per version folder) or, with `full`, does not read back whole (page checksums)."""
    if snap.problem:
        return snap.problem
    listed: dict[str, set] = {}
    for f in snap.files:
        folder = posixpath.dirname(f.path)
        if folder not in listed:
            listed[folder] = set(_ls(fs, folder))
        if f.path not in listed[folder]:
            return f"{f.path} (named by {POINTER}) is missing"
    if full:
        for f in snap.files:
            try:  # every page of every column: their checksums are verified as they are read
                if sum(b.num_rows for b in _file_batches(fs, f.path, SCHEMA, None)) != f.rows:
                    return f"{f.path} does not hold the {f.rows} rows {POINTER} says"
            except READ_ERRORS as exc:
                return f"{f.path} is corrupt ({type(exc).__name__}: {exc})"
    return None


def compact(fs, dest: str, *, schema: pa.Schema = SCHEMA, file_rows: int = FILE_ROWS,
            row_group: int = ROW_GROUP, repair: bool = False) -> dict:
    """Fold every unfolded part into a new index version, then swap the pointer. Returns the
    pointer (unchanged, with "compacted": False, when nothing was new), "rebuilt" (why the index
    was rebuilt from the run partitions, or None) and "removed" (see collect).

    The index is rebuilt from the run partitions when the pointer is unreadable, names a missing
    file, or a file of it fails to read while merging; `repair` also reads every index file
    whole first (checksums). Index rows of format 1 (absolute file URIs) are rewritten relative."""
    snap = snapshot(fs, dest)
    problem = index_problem(fs, snap, full=repair)
    if problem and not snap.problem:
        snap = raw_snapshot(fs, dest, problem)
    old = None if problem else read_pointer_or_none(fs, dest)
    stale = old is not None and old.get("format", 1) < POINTER_FORMAT
    if not (snap.delta or problem or stale):
        if old is None and not fs.exists(manifest_root(dest)):
            return {"compacted": False, "files": [], "rows": 0, "keys": 0, "rebuilt": None, "removed": {}}
        return {**(old or {}), "compacted": False, "rebuilt": None, "removed": collect(fs, dest)}
    afs = arrow_filesystem(fs)
    started = time.monotonic()
    complete = _complete_runs(fs, dest)  # listed before the parts below: a run marked complete has all its parts
    snap = raw_snapshot(fs, dest, problem) if problem else snapshot(fs, dest)
    version = datetime.now(timezone.utc).strftime(_VERSION_TIME) + "-" + uuid.uuid4().hex[:6]
    root = index_root(dest)
    folder, tmp = f"{root}/v-{version}", f"{root}/tmp-{version}"
    marker = f"{root}/{INFLIGHT}{version}.json"
    atomic_write(fs, marker, json.dumps({"version": version, "started_at": time.time()}).encode())
    try:
        try:
            files, keys = _fold(fs, afs, dest, snap, folder, tmp, schema, file_rows, row_group)
        except READ_ERRORS as exc:  # the old index broke while merging: it is not trusted, rebuilt
            if not snap.files:
                raise
            problem = f"{type(exc).__name__}: {exc}"
            for p in (folder, tmp):
                _rm(fs, p)
            snap = raw_snapshot(fs, dest, problem)
            files, keys = _fold(fs, afs, dest, snap, folder, tmp, schema, file_rows, row_group)
        runs = dict(snap.runs)
        for p in snap.delta:
            run_id = posixpath.basename(posixpath.dirname(p))[4:]
            runs[run_id] = {"parts": max(runs.get(run_id, {}).get("parts", 0), _part_no(p) + 1),
                            "complete": run_id in complete}
        pointer = {
            "format": POINTER_FORMAT, "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rows": sum(f.rows for f in files), "keys": keys,
            "files": [{"path": posixpath.relpath(f.path, root), "rows": f.rows, "min_key": f.min_key,
                       "max_key": f.max_key} for f in files],
            "runs": runs, "folded_parts": len(snap.delta), "previous": (old or {}).get("version"),
            "seconds": round(time.monotonic() - started, 3),
        }
        atomic_write(fs, f"{root}/{POINTER}", json.dumps(pointer, indent=1).encode())  # the commit point
    except BaseException:
        for p in (folder, tmp):
            _rm(fs, p)
        raise
    finally:
        _rm(fs, tmp)
        _rm(fs, marker)  # after the pointer: a collector that no longer sees the marker sees the pointer
    return {**pointer, "compacted": True, "rebuilt": problem, "removed": collect(fs, dest)}


def _fold(fs, afs, dest: str, snap: Snapshot, folder: str, tmp: str, schema: pa.Schema, file_rows: int,
          row_group: int) -> tuple[list[IndexFile], int]:
    """Write the index version: `snap`'s index merged with its delta, file paths made relative."""
    parts = _merge_parts_to_runs(fs, afs, tmp, snap.delta, schema)
    sources: list = [ManifestReader(dest, fs=fs, root=dest, schema=schema)._index_stream(snap, None)]
    if len(snap.delta) <= FAN_IN:
        sources += [[_read_parts(fs, [p], schema, None)] for p in parts]
    else:
        sources += [_file_batches(fs, p, schema, None, MERGE_BATCH) for p in parts]
    base = archive_base(fs, dest)
    counter = {"keys": 0}
    merged = (relativize(t, base) for t in _counting_keys(merge_sorted(sources, KEY, ORDER, keep_state), counter))
    files = _write_sorted(afs, folder, merged, schema, file_rows, row_group)
    return files, counter["keys"]


def read_pointer_or_none(fs, dest: str) -> dict | None:
    try:
        return read_pointer(fs, dest)
    except PointerError:
        return None


def _rm(fs, path: str) -> None:
    """Remove a file or folder if it is there. On S3 also the folder's own entry: SeaweedFS keeps
    an emptied folder listed until its "path/" key is deleted (on AWS that is a no-op)."""
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    if protocol_prefix(fs) in ("s3://", "s3a://") and "/" in path.strip("/"):
        bucket, key = path.strip("/").split("/", 1)
        try:
            fs.call_s3("delete_object", Bucket=bucket, Key=key + "/")
        except FileNotFoundError:
            pass


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


# ---- garbage collection ---------------------------------------------------------------------

_VERSION_TIME = "%Y%m%dT%H%M%S%fZ"


def _version_age(version: str, now: float) -> float | None:
    """Seconds since a version's compaction started (its name says when); None: not a version."""
    try:
        started = datetime.strptime(version.split("-", 1)[0], _VERSION_TIME).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return now - started.timestamp()


def collect(fs, dest: str, *, now: float | None = None, grace_s: float = GRACE_S,
            inflight_ttl_s: float = INFLIGHT_TTL_S, multipart_grace_s: float = MULTIPART_GRACE_S) -> dict:
    """Remove what no reader or compaction can need: index versions (and temporary folders)
    that the pointer does not name (nor named before), that no in-flight marker announces and
    that are older than `grace_s`; markers older than `inflight_ttl_s` (crashed compactions);
    on S3, multipart uploads under the archive started more than `multipart_grace_s` ago and
    never completed. Returns what it removed.

    Order matters: folders are listed before markers, and markers before the pointer is read.
    A compaction writes its marker before its folder and removes it only after its pointer
    write, so a folder seen here is either announced by a marker seen here or named by (or older
    than) the pointer read here."""
    now = time.time() if now is None else now
    root = index_root(dest)
    fs.invalidate_cache()
    entries = _ls(fs, root)
    fs.invalidate_cache()
    markers = {posixpath.basename(p)[len(INFLIGHT):-len(".json")]: p for p in _ls(fs, root)
               if posixpath.basename(p).startswith(INFLIGHT)}
    pointer = read_pointer_or_none(fs, dest) or {}
    live = {v for v in markers if (_version_age(v, now) or 0) < inflight_ttl_s}
    protect = {pointer.get("version"), pointer.get("previous"), *live}
    removed: dict[str, list] = {"index": [], "markers": [], "multipart_uploads": []}
    for p in entries:
        name = posixpath.basename(p)
        kind, _, version = name.partition("-")
        if kind not in ("v", "tmp") or version in protect:
            continue
        age = _version_age(version, now)
        if age is not None and age >= grace_s:
            _rm(fs, p)
            removed["index"].append(name)
    for version in sorted(set(markers) - live):
        _rm(fs, markers[version])
        removed["markers"].append(posixpath.basename(markers[version]))
    try:
        removed["multipart_uploads"] = abort_stale_uploads(fs, dest, now=now, grace_s=multipart_grace_s)
    except Exception as exc:  # noqa: BLE001 - e.g. no s3:ListBucketMultipartUploads permission: the rest is done
        log.warning("could not abort stale multipart uploads under %s: %s: %s", dest, type(exc).__name__, exc)
        removed["error"] = f"multipart uploads: {type(exc).__name__}: {exc}"
    return {k: v for k, v in removed.items() if v}


def abort_stale_uploads(fs, dest: str, *, now: float | None = None, grace_s: float = MULTIPART_GRACE_S) -> list[str]:
    """S3 only: abort the multipart uploads under DEST started more than `grace_s` ago (a writer
    that died mid-upload; their parts are billed but invisible). Returns their keys."""
    if protocol_prefix(fs) not in ("s3://", "s3a://"):
        return []
    now = time.time() if now is None else now
    bucket, _, prefix = dest.strip("/").partition("/")
    prefix = prefix + "/" if prefix else ""
    aborted, marks = [], {}
    while True:
        page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **marks)
        for u in page.get("Uploads", []):
            started = u.get("Initiated")
            if started is not None and now - started.timestamp() >= grace_s:
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
                aborted.append(u["Key"])
        if not page.get("IsTruncated"):
            return aborted
        marks = {"KeyMarker": page.get("NextKeyMarker", ""), "UploadIdMarker": page.get("NextUploadIdMarker", "")}


def needs_compaction(snap: Snapshot, fs, max_parts: int = 8, max_share: float = 0.02) -> bool:
    """Policy "auto": compact when the index names a missing file (a rebuild), or something is
    unfolded and there is no index yet, or the unfolded parts are many (each costs a read per
    lookup) or large (held while planning)."""
    if snap.files and index_problem(fs, snap):
        return True
    if not snap.delta:
        return False
    if not snap.files or len(snap.delta) >= max_parts:
        return True
    return count_part_rows(fs, snap.delta) >= max(10_000, max_share * snap.rows)


def count_part_rows(fs, paths: list[str]) -> int:
    return sum(open_parquet(fs, p, LOOKUP_BLOCK).metadata.num_rows for p in paths)


def main(argv: list[str] | None = None) -> int:
    """python -m pipeline.manifest.index DEST [--file-rows N]: compact DEST's manifest."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipeline.manifest.index", description=main.__doc__)
    ap.add_argument("dest")
    ap.add_argument("--file-rows", type=int, default=FILE_ROWS)
    ap.add_argument("--row-group", type=int, default=ROW_GROUP)
    ap.add_argument("--repair", action="store_true", help="read every index file whole first; rebuild if broken")
    args = ap.parse_args(argv)
    fs, root = filesystem(args.dest)
    result = compact(fs, root, file_rows=args.file_rows, row_group=args.row_group, repair=args.repair)
    result.pop("runs", None)
    result["files"] = len(result.get("files", []))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


@dataclass(frozen=True, slots=True)
class PreviousState:
    etag: str
    size: int
    status: str
    model_id: str | None
    fidelity: str | None = None  # preset name or "target"; None for a fixed single layer
    target_psnr: float | None = None
    target_score: float | None = None


def latest_states(fs, dest: str) -> dict[str, PreviousState]:
    """The latest row per source key as a dict (small archives, tests). Planning streams the
    same rows from `pipeline.manifest.index.ManifestReader.latest` instead, in bounded memory."""
    from pipeline.manifest.index import PLAN_COLUMNS, ManifestReader

    states: dict[str, PreviousState] = {}
    names = ("source_key", "source_etag", "source_size", "status", "model_id", "fidelity", "target_psnr", "target_score")
    for t in ManifestReader(dest, fs=fs, root=dest).latest(PLAN_COLUMNS):
        for key, etag, size, status, model, fid, target, score in zip(*(t.column(c).to_pylist() for c in names)):
            states[key] = PreviousState(etag, size, status, model, fid, target, score)
    return states
