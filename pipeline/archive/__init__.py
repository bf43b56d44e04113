"""An archive as a library: rehydrate one image by key, verify every file.

    access.py  rehydrate by source key (or small-file URI), with the pair that made the file
    verify.py  `taid verify`: every row's files present and byte-exact
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "rehydrate": "access", "rehydrate_pil": "access",
    "RehydrateRefused": "access", "SmallFileMissing": "access", "default_format": "access", "find_row": "access",
    "read_small_verified": "access", "rehydrate_row": "access", "rehydrate_to_file": "access",
    "restored_key": "access", "warm_pair": "access",
    "compress_file": "files", "rehydrate_file": "files",
    "report_lines": "verify", "report_ok": "verify", "verify_archive": "verify",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The face is imported lazily (PEP 562): a caller loads only the modules it uses."""
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = module if _EXPORTS[name] == name else getattr(module, name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
