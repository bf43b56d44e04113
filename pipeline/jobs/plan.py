"""Incremental planning in bounded memory: a sorted merge of the listing with the manifest's
latest state per key, decided a page at a time with Arrow compute.

Both inputs are key-sorted streams (a listing in byte order, `ManifestReader.latest`), so one
pass pairs each listed object with its latest row holding only one listing page and the
matching slice of states: memory does not grow with the number of objects. Only the objects to
process become Python objects. Measured in benchmarks/results/scale.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.codec import Request
from pipeline.jobs.params import CompressArchiveParams
from pipeline.storage import ObjectInfo, count_at_most

# the reasons of `flows.compress_archive.decide`, by code
REASONS = ("process", "unchanged", "failed_before", "skipped_before", "not_failed")


class ListingOrderError(RuntimeError):
    """The listing is not in key order (e.g. an S3 directory bucket): the merge would be wrong."""


def _mask(arr) -> np.ndarray:
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def _same_value(column, value) -> np.ndarray:
    """column == value, with null == None."""
    return _mask(pc.is_null(column)) if value is None else _mask(pc.equal(column, float(value)))


def same_settings_mask(prev: pa.Table, request: Request) -> np.ndarray:
    """`pipeline.jobs.compress.same_settings` for a whole page: the same preset (by name), or the
    same explicit target (score or PSNR), by one of its pairs; for a fixed single layer the same
    model and no fidelity."""
    model, fidelity = prev.column("model_id"), prev.column("fidelity")
    spec = request.fidelity
    if spec is None:
        settings = _mask(pc.is_null(fidelity))
    else:
        settings = _mask(pc.equal(fidelity, spec.name))
        if spec.name == "target":
            settings &= _same_value(prev.column("target_psnr"), spec.target_psnr)
            settings &= _same_value(prev.column("target_score"), spec.target_score)
    models = pa.array(request.models, pa.string())
    return settings & _mask(pc.or_kleene(pc.is_null(model), pc.is_in(model, value_set=models)))


def decide_codes(listing: pa.Table, prev: pa.Table, params: CompressArchiveParams,
                 request: Request | None = None) -> np.ndarray:
    """`decide()` for a whole page: index into REASONS per listed object. `prev` holds the
    latest row of each listed key, aligned with `listing` (null where there is none). `request`:
    the run's (params.request(), built once by the caller; built here when not given)."""
    n = listing.num_rows
    status = prev.column("status")
    failed = pc.fill_null(pc.starts_with(status, "failed"), False).to_numpy(zero_copy_only=False)
    if params.retry_failed:
        return np.where(failed, 0, 4)
    if not params.incremental:
        return np.zeros(n, dtype=np.int64)
    same = pc.and_(pc.equal(prev.column("source_etag"), listing.column("etag")),
                   pc.equal(prev.column("source_size"), listing.column("size")))
    same = pc.fill_null(same, False).to_numpy(zero_copy_only=False) & same_settings_mask(prev, request or params.request())
    ok = pc.fill_null(pc.equal(status, "ok"), False).to_numpy(zero_copy_only=False)
    return np.where(~same, 0, np.where(ok, 1, np.where(failed, 2, 3)))


def aligned(listing: Iterable[pa.Table], states: Iterable[pa.Table]) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(listing page, the latest row of each of its keys or nulls) from two key-sorted streams."""
    it = iter(states)
    buf: pa.Table | None = None
    last = None
    for page in listing:
        keys = page.column("key").combine_chunks()
        if len(keys) == 0:
            continue
        ordered = len(keys) < 2 or pc.all(pc.greater(keys.slice(1), keys.slice(0, len(keys) - 1))).as_py()
        if not ordered or (last is not None and keys[0].as_py() <= last):
            raise ListingOrderError(
                f"the listing is not in key order near {keys[0].as_py()!r}: list a general-purpose S3 bucket, "
                "a local folder, or give an S3 Inventory report")
        last = keys[-1].as_py()
        pieces = []
        while True:
            if buf is None:
                buf = next(it, None)
                if buf is None:
                    break
                buf = buf.combine_chunks()
            n = count_at_most(buf.column("source_key").combine_chunks(), last)
            if n:
                pieces.append(buf.slice(0, n))
            if n < buf.num_rows:
                buf = buf.slice(n)
                break
            buf = None
        if pieces:
            window = pa.concat_tables(pieces)
            idx = pc.index_in(keys, value_set=window.column("source_key"))
            yield page, window.take(idx)
        else:
            yield page, pa.table({c: pa.nulls(len(keys), t) for c, t in (
                ("source_key", pa.string()), ("source_etag", pa.string()), ("source_size", pa.int64()),
                ("status", pa.string()), ("model_id", pa.string()), ("fidelity", pa.string()),
                ("target_psnr", pa.float64()), ("target_score", pa.float64()))})


def plan(listing: Iterable[pa.Table], states: Iterable[pa.Table] | None, params: CompressArchiveParams,
         base_uri: str, counts: dict, request: Request | None = None) -> Iterator[ObjectInfo]:
    """The objects to process, streamed; every other listed object is counted in `counts` by
    reason (as `decide` names it), `listed` counts them all, `over_max_images` what max_images cut.
    `request`: the run's (params.request() when not given)."""
    taken = 0
    request = request or params.request()
    pairs = aligned(listing, states if states is not None else iter(()))
    for page, prev in pairs:
        codes = decide_codes(page, prev, params, request)
        counts["listed"] = counts.get("listed", 0) + page.num_rows
        for code, n in enumerate(np.bincount(codes, minlength=len(REASONS))):
            if code and n:
                counts[REASONS[code]] = counts.get(REASONS[code], 0) + int(n)
        todo = np.flatnonzero(codes == 0)
        if not len(todo):
            continue
        rows = page.take(pa.array(todo))
        for key, etag, size in zip(*(rows.column(c).to_pylist() for c in ("key", "etag", "size"))):
            if params.max_images is not None and taken >= params.max_images:
                counts["over_max_images"] = counts.get("over_max_images", 0) + 1
                continue
            taken += 1
            yield ObjectInfo(key=key, uri=base_uri + key, etag=etag, size=size)


def largest_first(objects, window: int):
    """`objects` in windows of `window`, each window largest first (by listed size): the longest
    jobs start first, so a run ends on its small images (LPT order) with memory bounded by the
    window. 0: as listed."""
    import itertools

    objects = iter(objects)
    if not window:
        yield from objects
        return
    while chunk := list(itertools.islice(objects, window)):
        chunk.sort(key=lambda o: -(o.size or 0))
        yield from chunk
