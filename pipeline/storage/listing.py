"""Listings in key (byte) order, streamed page by page: the input of incremental planning.

Sources (see docs/archive.md, "Listing sources: which to use"):
- S3: ListObjectsV2 with a "/" delimiter, folder by folder, 1000 keys a page, never a whole
  prefix in memory; with `workers > 1` the sub-prefixes directly under the root are walked in
  parallel (a bounded window of them runs ahead) and their pages are put back in order. The
  output is in UTF-8 byte order of whole keys (what the planner's sorted merge needs, and how the
  index is sorted) whether the store lists in byte order (AWS) or in folder order (SeaweedFS):
  see `_level`. The planner checks the order and refuses an unsorted listing.
- Any other fsspec filesystem (local folders, memory://): a depth-first walk, each directory's
  entries sorted with directories as "name/", which yields byte order over whole keys.
- An S3 Inventory report: `pipeline.storage.inventory`.

Every source yields `LISTING_SCHEMA` tables: key (relative to the root), etag, size.
"""

from __future__ import annotations

import fnmatch
import heapq
import posixpath
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.storage import s3 as s3mod
from pipeline.storage.keys import ObjectInfo, protocol_prefix

LISTING_SCHEMA = pa.schema([("key", pa.string()), ("etag", pa.string()), ("size", pa.int64())])
OWN_DIRS = ("_manifest", "_runs", "_index")  # what compress-archive writes under DEST: never inputs
PAGE = 1000


def _table(keys: list[str], etags: list[str], sizes: list[int]) -> pa.Table:
    return pa.table([pa.array(keys, pa.string()), pa.array(etags, pa.string()), pa.array(sizes, pa.int64())],
                    schema=LISTING_SCHEMA)


# ---- S3 -------------------------------------------------------------------------------------

def _pages(fs, bucket: str, prefix: str, delimiter: str | None = None) -> Iterator[dict]:
    token = None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": PAGE}
        if delimiter:
            kw["Delimiter"] = delimiter
        if token:
            kw["ContinuationToken"] = token
        resp = fs.call_s3("list_objects_v2", **kw)
        s3mod.count("list_requests")
        yield resp
        if not resp.get("IsTruncated"):
            return
        token = resp["NextContinuationToken"]


def _level(fs, bucket: str, prefix: str, top: bool = False) -> Iterator[tuple[str, object]]:
    """The entries directly under `prefix` in byte order: ("file", Contents) and ("dir", prefix).

    AWS returns a delimiter listing in byte order of whole keys; SeaweedFS (and other stores
    backed by a directory tree) return it in name order, where folder "a" comes before file
    "a.png" although every key under "a/" sorts after it. A small heap repairs both: an entry
    is released once the listing has moved past it (every later entry's name, even a folder's
    without its "/", sorts at or after the last name of the page), so memory is one page plus
    held folders."""
    heap: list = []
    seq = 0
    for resp in _pages(fs, bucket, prefix, "/"):
        names = []
        for c in resp.get("Contents", []):
            names.append(c["Key"])
            if not c["Key"].endswith("/"):  # folder marker objects
                heapq.heappush(heap, (c["Key"], seq, "file", c))
                seq += 1
        for p in resp.get("CommonPrefixes", []):
            names.append(p["Prefix"].rstrip("/"))
            if not (top and p["Prefix"][len(prefix):].rstrip("/") in OWN_DIRS):
                heapq.heappush(heap, (p["Prefix"], seq, "dir", p["Prefix"]))
                seq += 1
        position = max(names, default="")
        while heap and heap[0][0] <= position:
            _, _, kind, value = heapq.heappop(heap)
            yield kind, value
    while heap:
        _, _, kind, value = heapq.heappop(heap)
        yield kind, value


def _walk(fs, bucket: str, prefix: str, top: bool = False) -> Iterator[list[dict]]:
    """Pages of Contents under `prefix`, in byte order: folders walked depth-first, one
    delimiter listing per folder (a flat prefix costs one request per 1000 keys, as usual)."""
    files: list[dict] = []
    for kind, value in _level(fs, bucket, prefix, top):
        if kind == "file":
            files.append(value)
            if len(files) >= PAGE:
                yield files
                files = []
            continue
        if files:
            yield files
            files = []
        yield from _walk(fs, bucket, value)
    if files:
        yield files


def _segments(fs, bucket: str, prefix: str) -> Iterator[tuple[str, object]]:
    """The root's entries in byte order: ("files", [Contents...]) runs and ("prefix", p)."""
    files: list[dict] = []
    for kind, value in _level(fs, bucket, prefix, top=True):
        if kind == "file":
            files.append(value)
            if len(files) >= PAGE:
                yield "files", files
                files = []
            continue
        if files:
            yield "files", files
            files = []
        yield "prefix", value
    if files:
        yield "files", files


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _parallel(fs, bucket: str, prefix: str, workers: int) -> Iterator[list[dict]]:
    """Pages in key order, sub-prefixes listed `workers` at a time ahead of the consumer (each
    holds at most 4 pages), so memory is bounded by workers x 4 pages."""
    stop = threading.Event()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="taid-list")

    def fill(p: str, q: queue.Queue) -> None:
        try:
            for page in _walk(fs, bucket, p):
                if not _put(q, page, stop):
                    return
            _put(q, None, stop)
        except BaseException as exc:  # handed to the consumer
            _put(q, exc, stop)

    segments = _segments(fs, bucket, prefix)
    window: deque = deque()
    running = 0

    def refill() -> None:
        nonlocal running
        while running < workers and len(window) < 4 * workers:
            seg = next(segments, None)
            if seg is None:
                return
            if seg[0] == "prefix":
                q: queue.Queue = queue.Queue(maxsize=4)
                pool.submit(fill, seg[1], q)
                window.append(("queue", q))
                running += 1
            else:
                window.append(seg)

    try:
        refill()
        while window:
            kind, value = window.popleft()
            if kind == "files":
                yield value
            else:
                while (item := value.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                running -= 1
            refill()
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)


def _s3_tables(fs, root: str, workers: int) -> Iterator[pa.Table]:
    bucket, _, sub = root.strip("/").partition("/")
    prefix = sub + "/" if sub else ""
    pages = _parallel(fs, bucket, prefix, workers) if workers > 1 else _walk(fs, bucket, prefix, top=True)
    cut = len(prefix)
    for contents in pages:
        keys, etags, sizes = [], [], []
        for c in contents:
            if c["Key"].endswith("/"):  # folder marker objects
                continue
            keys.append(c["Key"][cut:])
            etags.append(str(c.get("ETag", "")).strip('"'))
            sizes.append(int(c.get("Size") or 0))
        if keys:
            yield _table(keys, etags, sizes)


# ---- other filesystems ----------------------------------------------------------------------

def _walk_sorted(fs, path: str, rel: str = "") -> Iterator[tuple[str, dict]]:
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return
    items = []
    for e in entries:
        name = posixpath.basename(e["name"].rstrip("/"))
        if not name or e["name"].rstrip("/") == path.rstrip("/"):
            continue
        if e.get("type") == "directory":
            if not rel and name in OWN_DIRS:
                continue
            items.append((name + "/", e))
        elif e.get("type", "file") == "file":
            items.append((name, e))
    items.sort(key=lambda x: x[0])
    for name, e in items:
        if name.endswith("/"):
            yield from _walk_sorted(fs, e["name"], rel + name)
        else:
            yield rel + name, e


def _walk_tables(fs, root: str) -> Iterator[pa.Table]:
    fs.invalidate_cache()  # fsspec instances are shared and cache listings: list afresh
    keys, etags, sizes = [], [], []
    for key, info in _walk_sorted(fs, root.rstrip("/") or "/"):
        keys.append(key)
        etags.append(_etag(info))
        sizes.append(int(info.get("size") or 0))
        if len(keys) == PAGE:
            yield _table(keys, etags, sizes)
            keys, etags, sizes = [], [], []
    if keys:
        yield _table(keys, etags, sizes)


# ---- the listing ----------------------------------------------------------------------------

def select(table: pa.Table, include: list[str] | None, exclude: list[str] | None) -> pa.Table:
    """Drop our own folders and keys not matching the include / matching the exclude globs."""
    keys = table.column("key")
    first = pc.list_element(pc.split_pattern(keys, "/", max_splits=1), 0)
    mask = pc.invert(pc.is_in(first, value_set=pa.array(OWN_DIRS)))
    if include or exclude:
        names = keys.to_pylist()
        if include:
            mask = pc.and_(mask, pa.array([any(fnmatch.fnmatch(k, g) for g in include) for k in names]))
        if exclude:
            mask = pc.and_(mask, pa.array([not any(fnmatch.fnmatch(k, g) for g in exclude) for k in names]))
    return table.filter(mask)


def listing_tables(fs, root: str, include: list[str] | None = None, exclude: list[str] | None = None,
                   workers: int = 8) -> Iterator[pa.Table]:
    """Key-sorted (key, etag, size) tables of every object under `root`."""
    is_s3 = protocol_prefix(fs) in ("s3://", "s3a://")
    tables = _s3_tables(fs, root, workers) if is_s3 else _walk_tables(fs, root)
    for t in tables:
        t = select(t, include, exclude)
        if t.num_rows:
            yield t


def _etag(info: dict) -> str:
    for key in ("ETag", "etag", "md5"):
        if info.get(key):
            return str(info[key]).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or ""
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"{int(float(mtime) * 1e9) if mtime != '' else 0}-{info.get('size', 0)}"


def list_objects(
    fs, root: str, include: list[str] | None = None, exclude: list[str] | None = None, workers: int = 8
) -> Iterator[ObjectInfo]:
    """Every object under `root` in key (byte) order, streamed a page at a time (see
    `pipeline.storage.listing`). Keys matching `include` globs (all when empty) and not `exclude` globs.
    Keys under `_manifest/`, `_runs/` and `_index/` are never listed."""
    from pipeline.storage.listing import listing_tables

    base = protocol_prefix(fs) + root.rstrip("/") + "/"
    for table in listing_tables(fs, root, include, exclude, workers):
        for key, etag, size in zip(*(table.column(c).to_pylist() for c in ("key", "etag", "size"))):
            yield ObjectInfo(key=key, uri=base + key, etag=etag, size=size)
