"""What an archive knows about its images: one row per input per run, and the index over them.

    rows.py   one row model per manifest kind (archive, restored); the Arrow schemas derive from them
    paths.py  a row's files, relative to the archive root
    parts.py  the run's Parquet part files (the writer), run stats
    index.py  the compacted, key-sorted current state and the one reader (lookup, latest, compaction)
    lease.py  one writer per archive
"""

from __future__ import annotations

from pipeline.face import lazy_face

_EXPORTS = {
    "archive_base": "paths", "resolve_row": "paths",
    "ManifestReader": "index", "PLAN_COLUMNS": "index", "PreviousState": "index", "compact": "index",
    "index_problem": "index", "keep_latest_ok": "index", "needs_compaction": "index", "resolve_table": "index",
    "run_rows": "index", "shared_reader": "index", "snapshot": "index",
    "Lease": "lease",
    "ManifestWriter": "parts", "SCHEMA": "parts", "json_safe": "parts", "read_manifest": "parts",
    "write_run_stats": "parts",
    "ArchiveRow": "rows", "ArchiveRows": "rows", "RESTORED_SCHEMA": "rows", "RestoredRow": "rows",
    "RestoredRows": "rows", "present": "rows",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS, globals())
