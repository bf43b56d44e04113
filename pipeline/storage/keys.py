"""Keys and URIs: what an object is called, never what it holds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the listed root, '/'-separated
    uri: str  # full URI with scheme
    etag: str  # S3 ETag (MD5 for single-part uploads); local files: mtime_ns-size
    size: int


def protocol_prefix(fs) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "" if proto in ("file", "local") else f"{proto}://"


class UnsafeKeyError(ValueError):
    """A key that would escape the destination (.., absolute, empty segments, backslashes)."""


def validate_key(key: str) -> str:
    """The key itself, or UnsafeKeyError for one that could land outside any root."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise UnsafeKeyError(f"refusing key {key!r}: absolute, empty or with a backslash/NUL")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeKeyError(f"refusing key {key!r}: it contains '', '.' or '..' segments")
    return key


def safe_join(root: str, key: str) -> str:
    """root + '/' + key, refusing any key that could land outside root."""
    return root.rstrip("/") + "/" + validate_key(key)
