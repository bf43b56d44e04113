"""Object storage: bytes and keys, never pixels.

    keys.py          ObjectInfo, safe keys and URIs' scheme prefix
    s3.py            one retry policy for S3, throttling counts, Arrow filesystems, one-line errors
    fs.py            fsspec filesystems from URIs, atomic writes, reads, preflight checks
    listing.py       listings in key order, streamed page by page (the planner's input)
    sorted_merge.py  streaming merge of key-sorted Arrow tables (listing x manifest, the index)
    inventory.py     an S3 Inventory report as the listing
    parquet.py       Parquet reads and writes with integrity and few requests
"""
