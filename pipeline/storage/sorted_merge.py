"""Streaming merge of key-sorted Arrow tables: the one primitive behind the manifest index,
incremental planning and inventory listings.

Each source yields tables sorted by `key`. The merge takes, round by round, every row whose key
is at most the smallest "last key" among the sources' current tables, sorts that slice by
`order` and hands it to `keep` (which drops rows, e.g. all but the latest per key). Rows equal
to that bound are held back one round, because the same key may continue in a source's next
table. Memory: one table per source plus one round, whatever the total size.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


class _Keys:
    """A sorted string column as a sequence, for bisect (O(log n) scalar reads, no copy)."""

    def __init__(self, arr: pa.Array):
        self.arr = arr

    def __len__(self) -> int:
        return len(self.arr)

    def __getitem__(self, i: int):
        return self.arr[i].as_py()


def count_at_most(keys: pa.Array, bound) -> int:
    """How many leading values of a sorted column are <= bound."""
    return bisect.bisect_right(_Keys(keys), bound)


def first_of_group(keys: pa.Array) -> np.ndarray:
    """Boolean mask: True where a sorted column starts a run of equal values."""
    n = len(keys)
    mask = np.ones(n, dtype=bool)
    if n > 1:
        mask[1:] = pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).fill_null(True).to_numpy(zero_copy_only=False)
    return mask


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _nonempty(source: Iterator[pa.Table]) -> pa.Table | None:
    for t in source:
        if t.num_rows:
            return t.combine_chunks()
    return None


def merge_sorted(
    sources: Iterable[Iterable[pa.Table]],
    key: str,
    order: list[tuple],
    keep: Callable[[pa.Table], pa.Table] = lambda t: t,
) -> Iterator[pa.Table]:
    """Key-sorted tables out of key-sorted sources; `keep` sees whole key groups, sorted by `order`."""
    iters = [iter(s) for s in sources]
    bufs = [_nonempty(it) for it in iters]
    carry: pa.Table | None = None
    while True:
        live = [i for i, b in enumerate(bufs) if b is not None]
        if not live:
            break
        bound = min(_column(bufs[i], key)[-1].as_py() for i in live)
        pieces = [carry] if carry is not None else []
        for i in live:
            b = bufs[i]
            n = count_at_most(_column(b, key), bound)
            if n:
                pieces.append(b.slice(0, n))
            bufs[i] = b.slice(n) if n < b.num_rows else _nonempty(iters[i])
        more = any(b is not None for b in bufs)
        round_ = (pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]).sort_by(order)
        if more:  # rows equal to the bound may continue in a source's next table: hold them back
            n = bisect.bisect_left(_Keys(_column(round_, key)), bound)
            carry = round_.slice(n) if n < round_.num_rows else None
            round_ = round_.slice(0, n)
        else:
            carry = None
        if round_.num_rows:
            out = keep(round_)
            if out.num_rows:
                yield out
    if carry is not None and carry.num_rows:
        out = keep(carry)
        if out.num_rows:
            yield out


def rebatch(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows (the last one shorter), e.g. for even Parquet row groups."""
    pending: list[pa.Table] = []
    have = 0
    for t in tables:
        pending.append(t)
        have += t.num_rows
        while have >= rows:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, rows)
            rest = whole.slice(rows)
            pending, have = ([rest] if rest.num_rows else []), rest.num_rows
    if have:
        yield pa.concat_tables(pending)


def open_streaming(afs, path: str) -> pq.ParquetFile:
    """A Parquet file of a pyarrow filesystem read a row group at a time (S3 Inventory reports).
    pyarrow's default pre-buffering fetches every column chunk of the file up front: with tens of
    files merged at once that was gigabytes."""
    return pq.ParquetFile(afs.open_input_file(path), pre_buffer=False, buffer_size=1 << 20)
