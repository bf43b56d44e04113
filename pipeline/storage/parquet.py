"""Parquet files of the manifest and its index, read and written with integrity and few requests.

- Writes carry page checksums (`WRITE_OPTIONS`): a flipped byte in a data page is an error on
  read, never a wrong value (a changed `enhancement_sha256` once blamed an intact layer).
- Reads verify them (`FORMAT`, `open_parquet`) and go through `storage.read_bytes` in large
  blocks (`reading_filesystem`): a 30-row index is one GET instead of one ranged GET per column
  chunk, each block is retried whole by the store client, and a failed block raises instead of
  leaving pyarrow a half-read stream (pyarrow's own S3 client did not retry a broken body).
"""

from __future__ import annotations

import io
import threading

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow.fs import FSSpecHandler, PyFileSystem

from pipeline.storage.fs import read_bytes

WRITE_OPTIONS = {"write_page_checksum": True}
SCAN_OPTIONS = ds.ParquetFragmentScanOptions(page_checksum_verification=True, pre_buffer=False)
FORMAT = ds.ParquetFileFormat(default_fragment_scan_options=SCAN_OPTIONS)
STREAM_BLOCK = 8 << 20  # streaming a file: one GET per 8 MiB (a few blocks held per open file)
LOOKUP_BLOCK = 1 << 20  # point lookups: a footer, then about one row group (~0.5 MiB) per GET

# what a broken or vanished Parquet file raises on read: readers fall back to the run partitions
READ_ERRORS = (OSError, pa.ArrowInvalid, pa.ArrowException)


class BlockFile(io.RawIOBase):
    """A read-only file over `read_bytes`: each read outside the cached block fetches at least
    `block` bytes from there in one call."""

    def __init__(self, fs, path: str, size: int, block: int = STREAM_BLOCK):
        self.fs, self.path, self.size, self.block = fs, path, size, block
        self.pos, self.start, self.data = 0, 0, b""
        self.lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def read(self, n: int = -1) -> bytes:
        with self.lock:
            end = self.size if n is None or n < 0 else min(self.pos + n, self.size)
            if end <= self.pos:
                return b""
            if not (self.start <= self.pos and end <= self.start + len(self.data)):
                self.start = self.pos
                self.data = read_bytes(self.fs, self.path, self.pos, min(max(end, self.pos + self.block), self.size))
                if len(self.data) < end - self.pos:
                    raise OSError(f"short read of {self.path}: {len(self.data)} of {end - self.pos} bytes")
            out = self.data[self.pos - self.start: end - self.start]
            self.pos = end
            return out

    def readall(self) -> bytes:
        return self.read(-1)


class _BlockHandler(FSSpecHandler):
    """fsspec through pyarrow, every file opened as a BlockFile."""

    def __init__(self, fs, block: int):
        super().__init__(fs)
        self.block = block

    def open_input_file(self, path: str):
        return pa.PythonFile(BlockFile(self.fs, path, self.fs.size(path), self.block), mode="r")

    def open_input_stream(self, path: str):
        return self.open_input_file(path)


def reading_filesystem(fs, block: int = STREAM_BLOCK) -> PyFileSystem:
    """A pyarrow filesystem (for datasets) reading the fsspec `fs`'s files in blocks."""
    return PyFileSystem(_BlockHandler(fs, block))


def open_parquet(fs, path: str, block: int = STREAM_BLOCK) -> pq.ParquetFile:
    """A checksum-verifying Parquet file read a row group at a time, in blocks (no pre-buffering:
    with tens of files merged at once it fetched gigabytes)."""
    return pq.ParquetFile(pa.PythonFile(BlockFile(fs, path, fs.size(path), block), mode="r"), pre_buffer=False,
                          page_checksum_verification=True)


def read_table(fs, path: str, columns: list[str] | None = None) -> pa.Table:
    """A whole small Parquet file (one GET), checksums verified; columns it lacks are left out."""
    pf = pq.ParquetFile(pa.BufferReader(read_bytes(fs, path)), page_checksum_verification=True)
    present = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
    return pf.read(columns=present, use_threads=False)
