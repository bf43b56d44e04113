"""Object storage: bytes and keys, never pixels.

    keys.py          ObjectInfo, safe keys and URIs' scheme prefix
    s3.py            one retry policy for S3, throttling counts, Arrow filesystems, one-line errors
    fs.py            fsspec filesystems from URIs, atomic writes, reads, preflight checks
    listing.py       listings in key order, streamed page by page (the planner's input)
    sorted_merge.py  streaming merge of key-sorted Arrow tables (listing x manifest, the index)
    inventory.py     an S3 Inventory report as the listing
    parquet.py       Parquet reads and writes with integrity and few requests
"""

from __future__ import annotations

from pipeline.face import lazy_face

_EXPORTS = {
    "atomic_write": "fs", "filesystem": "fs", "read_bytes": "fs", "write_local": "fs",
    "InventoryListing": "inventory",
    "ObjectInfo": "keys", "UnsafeKeyError": "keys", "protocol_prefix": "keys", "safe_join": "keys",
    "validate_key": "keys",
    "listing_tables": "listing",
    "StorageParams": "params",
    "FORMAT": "parquet", "LOOKUP_BLOCK": "parquet", "READ_ERRORS": "parquet", "WRITE_OPTIONS": "parquet",
    "open_parquet": "parquet", "read_table": "parquet", "reading_filesystem": "parquet",
    "arrow_filesystem": "s3", "explain": "s3", "s3": "s3",
    "count_at_most": "sorted_merge", "first_of_group": "sorted_merge", "merge_sorted": "sorted_merge",
    "rebatch": "sorted_merge",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS, globals())
