"""An archive as a library: rehydrate one image by key, verify every file.

    access.py  rehydrate by source key (or small-file URI), with the pair that made the file
    verify.py  `taid verify`: every row's files present and byte-exact
"""

from __future__ import annotations

from pipeline.face import lazy_face

_EXPORTS = {
    "rehydrate": "access", "rehydrate_pil": "access",
    "RehydrateRefused": "access", "SmallFileMissing": "access", "default_format": "access", "find_row": "access",
    "read_small_verified": "access", "rehydrate_row": "access", "rehydrate_to_file": "access",
    "restored_key": "access", "warm_pair": "access",
    "compress_file": "files", "rehydrate_file": "files",
    "report_lines": "verify", "report_ok": "verify", "verify_archive": "verify",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS, globals())
