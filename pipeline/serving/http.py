"""HTTP pieces with no Serve in them: token check, ETags, content types, JSON-safe rows."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime

from pipeline.codec import MEDIA_TYPES as CONTENT_TYPES  # noqa: F401  (the server's name for them)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def presented_token(authorization: str | None) -> str | None:
    """The token of `Authorization: Bearer T`, or of `Basic base64(any-user:T)` (how a browser sends it)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def authorized(authorization: str | None, expected_sha256: str) -> bool:
    """Constant-time comparison of digests: neither the token's length nor its prefix leaks by timing."""
    token = presented_token(authorization)
    return hmac.compare_digest(token_digest(token or ""), expected_sha256) and bool(token)


def etag(*parts) -> str:
    """A strong ETag: the small file's sha256 (it fixes the pixels) plus whatever shapes the bytes sent."""
    if len(parts) == 1:
        return f'"{parts[0]}"'
    return f'"{parts[0][:32]}-{hashlib.sha256(repr(parts[1:]).encode()).hexdigest()[:16]}"'


def matches(if_none_match: str | None, tag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip().removeprefix("W/") for c in if_none_match.split(",")]
    return "*" in candidates or tag in candidates


def sniff_content_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return "application/octet-stream"


def json_row(row: dict) -> dict:
    """A manifest row as strict JSON: timestamps as ISO strings, an exact (lossless) fidelity's
    infinite PSNR as the string "inf" (JSON has no infinity)."""
    from pipeline.manifest import json_safe

    return {k: v.isoformat() if isinstance(v, datetime) else json_safe(v) for k, v in row.items()}
