"""What an archive knows about its images: one row per input per run, and the index over them.

    rows.py   one row model per manifest kind (archive, restored); the Arrow schemas derive from them
    paths.py  a row's files, relative to the archive root
    parts.py  the run's Parquet part files (the writer), run stats
    index.py  the compacted, key-sorted current state and the one reader (lookup, latest, compaction)
    lease.py  one writer per archive
"""
