"""An S3 Inventory report as the listing source: AWS's `manifest.json` with CSV (gzip) or Parquet
data files, as S3 writes them daily or weekly for a bucket.

    {"sourceBucket": "photos", "destinationBucket": "arn:aws:s3:::inventory",
     "fileFormat": "CSV" | "Parquet", "fileSchema": "Bucket, Key, Size, ETag, ...",
     "files": [{"key": "photos/daily/data/1.csv.gz", ...}], ...}

Data files live at `<destinationBucket>/<files[].key>` (for a manifest outside S3, the
destination "bucket" is a folder). CSV keys are URL-encoded; Parquet keys are not. Versioned
inventories are reduced to current objects (IsLatest, no delete markers). Inventory files come
in no guaranteed order, so each is cut into sorted chunks (at most CHUNK rows in memory) spilled to
local Parquet, then streamed through the same sorted merge as everything else (at most FAN_IN
files at once, MERGE_ROWS rows buffered across them): memory is bounded by CHUNK, not by the bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from pyarrow.fs import LocalFileSystem

from pipeline.storage.fs import filesystem
from pipeline.storage.listing import LISTING_SCHEMA, select
from pipeline.storage.s3 import arrow_filesystem
from pipeline.storage.sorted_merge import first_of_group, merge_sorted, open_streaming, rebatch

CHUNK = 1_000_000  # rows sorted in memory at a time (the peak of `prepare`)
MERGE_ROWS = 65_536  # rows buffered across all chunk files while merging them
FAN_IN = 64  # chunk files merged at once
# the columns we read, by their CSV (fileSchema) and Parquet names
NAMES = {"key": ("Key", "key"), "size": ("Size", "size"), "etag": ("ETag", "e_tag"),
         "is_latest": ("IsLatest", "is_latest"), "is_delete_marker": ("IsDeleteMarker", "is_delete_marker")}


class InventoryError(ValueError):
    """A manifest.json that is not an S3 Inventory manifest we can read."""


def read_manifest_json(uri: str, storage_options: dict | None = None, fs=None) -> dict:
    path = uri.split("://", 1)[-1] if fs is not None and "://" in uri else uri
    if fs is None:
        fs, path = filesystem(uri, storage_options)
    try:
        manifest = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        raise InventoryError(f"no inventory manifest at {uri}") from None
    for k in ("fileFormat", "files"):
        if k not in manifest:
            raise InventoryError(f"{uri} is not an S3 Inventory manifest.json (no {k!r})")
    if manifest["fileFormat"].upper() not in ("CSV", "PARQUET"):
        raise InventoryError(f"inventory format {manifest['fileFormat']} is not supported: use CSV or Parquet")
    return manifest


def _data_paths(manifest: dict) -> list[str]:
    dest = str(manifest.get("destinationBucket", "")).removeprefix("arn:aws:s3:::").rstrip("/")
    if not dest:
        raise InventoryError("inventory manifest has no destinationBucket")
    return [f"{dest}/{f['key']}" for f in manifest["files"]]


def _read_file(afs, path: str, manifest: dict) -> Iterator[pa.Table]:
    """Batches of one data file with columns key/size/etag (+ is_latest/is_delete_marker)."""
    if manifest["fileFormat"].upper() == "CSV":
        header = [c.strip() for c in manifest["fileSchema"].split(",")]
        wanted = {ours: theirs[0] for ours, theirs in NAMES.items() if theirs[0] in header}
        types = {wanted["key"]: pa.string(), wanted.get("etag", "ETag"): pa.string()}
        if "size" in wanted:
            types[wanted["size"]] = pa.int64()
        stream = afs.open_input_stream(path, compression="gzip" if path.endswith(".gz") else None)
        reader = pcsv.open_csv(stream, read_options=pcsv.ReadOptions(column_names=header, block_size=8 << 20),
                               convert_options=pcsv.ConvertOptions(include_columns=list(wanted.values()),
                                                                   column_types=types, strings_can_be_null=False))
        for b in reader:
            t = _ours(b, wanted)
            keys = t.column("key")
            encoded = pc.any(pc.match_substring_regex(keys, r"[%+]")).as_py()
            if encoded:  # URL-encoded keys (only those with % or +: most keys need no decoding)
                t = t.set_column(t.column_names.index("key"), "key", pa.array([unquote_plus(k) for k in keys.to_pylist()], pa.string()))
            yield t
    else:
        pf = open_streaming(afs, path)
        names = pf.schema_arrow.names
        wanted = {ours: theirs[1] for ours, theirs in NAMES.items() if theirs[1] in names}
        for b in pf.iter_batches(batch_size=65_536, columns=list(wanted.values()), use_threads=False):
            yield _ours(b, wanted)


def _ours(batch: pa.RecordBatch, wanted: dict) -> pa.Table:
    theirs = {v: k for k, v in wanted.items()}
    return pa.Table.from_batches([batch]).rename_columns([theirs[c] for c in batch.schema.names])


def _current(t: pa.Table, prefix: str) -> pa.Table:
    """Current objects under `prefix`, keys made relative, as LISTING_SCHEMA."""
    mask = pc.starts_with(t.column("key"), prefix) if prefix else pa.array([True] * t.num_rows)
    for col, want in (("is_latest", True), ("is_delete_marker", False)):
        if col in t.column_names:
            c = t.column(col)
            if not pa.types.is_boolean(c.type):
                c = pc.equal(pc.utf8_lower(c), "true")
            mask = pc.and_(mask, pc.fill_null(pc.equal(c, want), want))
    t = t.filter(mask)
    key = pc.utf8_slice_codeunits(t.column("key"), len(prefix)) if prefix else t.column("key")
    etag = t.column("etag") if "etag" in t.column_names else pa.nulls(t.num_rows, pa.string())
    size = t.column("size").cast(pa.int64()) if "size" in t.column_names else pa.nulls(t.num_rows, pa.int64())
    return pa.table([key, pc.utf8_trim(etag.cast(pa.string()), '"'), size], schema=LISTING_SCHEMA)


class InventoryListing:
    """Sorted (key, etag, size) tables of the objects under `source` from an inventory report.

    `prepare()` reads every data file once into sorted local chunk files (in `workdir`) and
    counts the objects, which gives planning its exact total before the merge starts."""

    def __init__(self, manifest_uri: str, source: str, storage_options: dict | None = None,
                 workdir: str | None = None, chunk: int = CHUNK, fs=None):
        self.uri, self.chunk = manifest_uri, chunk
        self.fs = fs if fs is not None else filesystem(manifest_uri, storage_options)[0]
        self.manifest = read_manifest_json(manifest_uri, fs=self.fs)
        self.afs = arrow_filesystem(self.fs)
        bucket, _, prefix = source.split("://", 1)[-1].partition("/")
        src_bucket = self.manifest.get("sourceBucket")
        if src_bucket and source.startswith(("s3://", "s3a://")) and src_bucket != bucket:
            raise InventoryError(f"the inventory lists bucket {src_bucket}, the source is in {bucket}")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.paths = _data_paths(self.manifest)
        self.workdir = workdir
        self.total: int | None = None
        self._chunks: list[str] = []
        self._tmp: str | None = None

    def prepare(self) -> int:
        self._tmp = tempfile.mkdtemp(prefix="taid-inventory-", dir=self.workdir)
        total = 0
        pending: list[pa.Table] = []
        have = 0
        for path in self.paths:
            for t in _read_file(self.afs, path, self.manifest):
                t = _current(t, self.prefix)
                pending.append(t)
                have += t.num_rows
                total += t.num_rows
                if have >= self.chunk:
                    self._spill(pending)
                    pending, have = [], 0
        if pending:
            self._spill(pending)
        self.total = total
        return total

    def _spill(self, tables: list[pa.Table]) -> None:
        t = pa.concat_tables(tables).sort_by([("key", "ascending")])
        path = os.path.join(self._tmp, f"chunk-{len(self._chunks):05d}.parquet")
        pq.write_table(t, path, row_group_size=65_536, compression="lz4")
        self._chunks.append(path)

    def _merged(self, paths: list[str]) -> Iterator[pa.Table]:
        """Key-sorted tables of sorted chunk files, MERGE_ROWS buffered across all of them."""
        local = LocalFileSystem()
        rows = max(1024, MERGE_ROWS // max(1, len(paths)))
        sources = [(pa.Table.from_batches([b]) for b in open_streaming(local, p).iter_batches(rows)) for p in paths]
        return merge_sorted(sources, "key", [("key", "ascending")], _first_per_key)

    def tables(self, include: list[str] | None = None, exclude: list[str] | None = None) -> Iterator[pa.Table]:
        if self.total is None:
            self.prepare()
        try:
            chunks = self._chunks
            while len(chunks) > FAN_IN:  # a bucket of more than FAN_IN x CHUNK objects: merge in rounds
                merged = []
                for g in range(0, len(chunks), FAN_IN):
                    path = os.path.join(self._tmp, f"merged-{len(merged):05d}-{uuid4_hex()}.parquet")
                    with pq.ParquetWriter(path, LISTING_SCHEMA, compression="lz4") as writer:
                        for t in rebatch(self._merged(chunks[g:g + FAN_IN]), 65_536):
                            writer.write_table(t)
                    merged.append(path)
                chunks = merged
            for t in self._merged(chunks):
                t = select(t, include, exclude)
                if t.num_rows:
                    yield t
        finally:
            self.close()

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _first_per_key(t: pa.Table) -> pa.Table:
    return t.filter(pa.array(first_of_group(t.column("key").combine_chunks())))


def write_inventory(fs, folder: str, source_bucket: str, rows: pa.Table, fmt: str = "CSV",
                    rows_per_file: int = 1_000_000, extra_rows: pa.Table | None = None) -> str:
    """Write an S3 Inventory report (AWS's layout and column names) for `rows` (columns key with
    the full object key, size, etag): `folder/manifest.json` + `folder/data/*.csv.gz|parquet`.
    For stores without S3 Inventory (SeaweedFS, MinIO) and for tests and benchmarks. Files are
    written in the order given (AWS promises no order either). `extra_rows` (is_latest,
    is_delete_marker columns too) are appended as a versioned inventory would list them."""
    import gzip
    import io
    from urllib.parse import quote_plus

    from pipeline.storage.fs import atomic_write
    from pipeline.storage.keys import protocol_prefix

    local = protocol_prefix(fs) == ""
    dest, _, key_prefix = (folder.rstrip("/"), "", "") if local else folder.strip("/").partition("/")
    versioned = extra_rows is not None
    if versioned:
        rows = rows.append_column("is_latest", pa.array([True] * rows.num_rows)).append_column(
            "is_delete_marker", pa.array([False] * rows.num_rows))
        rows = pa.concat_tables([rows, extra_rows.select(rows.column_names)])
    files = []
    for i, start in enumerate(range(0, max(rows.num_rows, 1), rows_per_file)):
        part = rows.slice(start, rows_per_file)
        name = f"data/{i:05d}-{uuid4_hex()}." + ("csv.gz" if fmt.upper() == "CSV" else "parquet")
        if fmt.upper() == "CSV":
            lines = []
            cols = [part.column(c).to_pylist() for c in part.column_names]
            for vals in zip(*cols):
                rec = dict(zip(part.column_names, vals))
                fields = [source_bucket, quote_plus(rec["key"], safe="/"), str(rec["size"]), rec["etag"]]
                if versioned:
                    fields += [str(rec["is_latest"]).lower(), str(rec["is_delete_marker"]).lower()]
                lines.append(",".join(f'"{f}"' for f in fields))
            data = gzip.compress(("\n".join(lines) + "\n").encode())
        else:
            out = pa.table({"bucket": pa.array([source_bucket] * part.num_rows), "key": part.column("key"),
                            "size": part.column("size"), "e_tag": part.column("etag"),
                            **({"is_latest": part.column("is_latest"), "is_delete_marker": part.column("is_delete_marker")}
                               if versioned else {})})
            buf = io.BytesIO()
            pq.write_table(out, buf, compression="snappy")
            data = buf.getvalue()
        atomic_write(fs, f"{folder.rstrip('/')}/{name}", data)
        files.append({"key": f"{key_prefix + '/' if key_prefix else ''}{name}", "size": len(data)})
    schema = "Bucket, Key, Size, ETag" + (", IsLatest, IsDeleteMarker" if versioned else "")
    if fmt.upper() != "CSV":
        schema = "message s3.inventory { required binary bucket (STRING); required binary key (STRING); " \
                 "optional int64 size; optional binary e_tag (STRING); }"
    manifest = {"sourceBucket": source_bucket, "destinationBucket": f"arn:aws:s3:::{dest}", "version": "2016-11-30",
                "creationTimestamp": "0", "fileFormat": "CSV" if fmt.upper() == "CSV" else "Parquet",
                "fileSchema": schema, "files": files}
    path = f"{folder.rstrip('/')}/manifest.json"
    atomic_write(fs, path, json.dumps(manifest, indent=1).encode())
    return path


def uuid4_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:12]
