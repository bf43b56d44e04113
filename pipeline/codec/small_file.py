"""The TAID small file: the downscaled image in an ordinary format plus its own metadata.

Formats (`small_format`):
- `png`: lossless; metadata in a tEXt chunk with keyword `taid`.
- `webp`: WebP lossless; metadata in a RIFF chunk `TAID` of the extended (VP8X) container
  (the WebP container spec lets readers skip unknown chunks; viewers show the image as usual).
- `webp-lossy`: WebP at `quality`; metadata as above.
- `jpeg`: baseline JPEG at `quality`, 4:4:4 chroma (the small image is all detail, subsampling
  chroma would halve its colour resolution again); metadata in a COM segment. JPEG has no alpha
  channel, so an image whose alpha is stored is written as `webp-lossy` at the same quality
  instead (recorded in the record's `output_format` and `notes`).

The embedded metadata (`EMBEDDED_KEYS`) holds the original width and height, the scale, the model
id and full weights sha256, the alpha/grey flags and the rehydrated format, so a small file
separated from its manifest can still be rehydrated. It is written compactly, because at low
rates it is a real share of the file (a 480x320 image at 0.2 bits per pixel is a 4 KB small file):

    taid=2;w=480;h=320;s=2;m=taid-x2;k=<sha256 hex>;r=jpeg;q=80;f=at;e=<sha256 hex>

`;`-separated `key=value` pairs, values percent-encoded (`urllib.parse.quote`), no quotes and no
XML, so nothing needs escaping. Omitted: flags that are false (`f` lists the true ones: `a`
has_alpha, `t` alpha_stored, `g` is_gray), `e` (the sha256 of the enhancement layer, see
pipeline/codec/layer.py) when there is none, `r` when it is png, `q` when it is what rehydration
picks anyway (95 for jpeg). 115-140 bytes per file in all (`tests/codec/test_small_file.py`); the
format's own metadata containers cost 4 (JPEG COM) to 26 bytes (WebP VP8X + chunk header).

Files written before (version 1: JSON in an iTXt chunk, or in an XMP packet's `taid:record`
attribute) are still read. The ICC profile and EXIF block travel in the format's own ICC / EXIF
containers, so ordinary viewers show the small file in the right colours.
"""

from __future__ import annotations

import html
import io
import json
import re
from urllib.parse import quote, unquote

from PIL import Image, PngImagePlugin

from pipeline.codec.formats import LOSSY_SMALL_FORMATS as LOSSY_FORMATS  # noqa: F401  (re-exported)
from pipeline.codec.formats import SMALL_FORMATS
from pipeline.codec.formats import SMALL_SUFFIX as SUFFIX  # noqa: F401  (re-exported: the codec's face names it)

EMBED_VERSION = 2
# record key -> short key in the compact encoding (values)
_SHORT = {"width": "w", "height": "h", "scale": "s", "model_id": "m", "model_sha256": "k",
          "rehydrate_format": "r", "rehydrate_quality": "q", "enhancement_sha256": "e"}
_INTS = ("width", "height", "scale", "rehydrate_quality")
# record key -> its letter in the `f` field (true flags only)
_FLAGS = {"has_alpha": "a", "alpha_stored": "t", "is_gray": "g"}
EMBEDDED_KEYS = (*_SHORT, *_FLAGS)
_MAGIC = f"taid={EMBED_VERSION}"
_WEBP_CHUNK = b"TAID"
# version 1 (read only): JSON in an iTXt chunk or in this XMP attribute
_XMP_RE = re.compile(rb'taid:record="([^"]*)"')


class SmallFileError(ValueError):
    """Bytes that are not a readable TAID small file."""


def embedded_meta(record: dict) -> dict:
    """The record's keys that travel in the small file (what rehydration needs)."""
    return {k: record.get(k) for k in EMBEDDED_KEYS}


def _implied(key: str, meta: dict):
    """The value rehydration uses when `key` is absent (so writing it would be wasted bytes)."""
    if key == "rehydrate_format":
        return "png" if meta.get("rehydrate_quality") is None else None
    if key == "rehydrate_quality":
        return DEFAULT_JPEG_QUALITY if meta.get("rehydrate_format") == "jpeg" else None
    return None


def pack_meta(meta: dict) -> bytes:
    """The compact encoding (module docstring): ASCII, no quotes, nothing to escape anywhere."""
    parts = [_MAGIC]
    for key, short in _SHORT.items():
        value = meta.get(key)
        if value is not None and value != _implied(key, meta):
            parts.append(f"{short}={quote(str(value), safe='')}")
    flags = "".join(letter for key, letter in _FLAGS.items() if meta.get(key))
    if flags:
        parts.append(f"f={flags}")
    return ";".join(parts).encode("ascii")


def unpack_meta(raw: bytes | str) -> dict | None:
    """Inverse of pack_meta; None when `raw` is not a compact TAID record."""
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    head, *rest = text.split(";")
    if head != _MAGIC:
        return None
    fields = dict(part.partition("=")[::2] for part in rest)
    long = {short: key for key, short in _SHORT.items()}
    meta: dict = {key: None for key in _SHORT}
    try:
        for short, value in fields.items():
            if short in long:
                key = long[short]
                meta[key] = int(value) if key in _INTS else unquote(value)
    except ValueError:
        return None
    flags = fields.get("f", "")
    meta.update({key: letter in flags for key, letter in _FLAGS.items()})  # absent = false: explicit, not inferred
    meta["taid_small_file"] = EMBED_VERSION
    return meta


def _riff_chunks(data: bytes):
    """(fourcc, offset of the chunk header, payload) of each top-level chunk of a RIFF/WebP file."""
    pos = 12
    while pos + 8 <= len(data):
        fourcc, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        yield fourcc, pos, data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)


def _webp_with_chunk(data: bytes, payload: bytes) -> bytes:
    """Pillow cannot write a custom RIFF chunk, but for an XMP chunk it writes the extended (VP8X)
    container a custom chunk needs: it was saved with `payload` as XMP; rename that chunk to ours
    and clear VP8X's XMP flag."""
    for fourcc, pos, body in _riff_chunks(data):
        if fourcc == b"XMP " and body == payload:
            out = bytearray(data)
            out[pos : pos + 4] = _WEBP_CHUNK
            if out[12:16] == b"VP8X":
                out[20] &= ~0x04  # the flags byte; 0x04 = XMP present
            return bytes(out)
    raise RuntimeError("the WebP writer did not produce the expected XMP chunk")  # Pillow changed its layout


def encode_small(
    img: Image.Image, small_format: str, quality: int | None, meta: dict | None, icc: bytes | None = None,
    exif: bytes | None = None,
) -> tuple[bytes, str]:
    """Encode the small image; returns (bytes, the format actually written). `quality` is needed
    by the lossy formats only; `meta=None` writes no TAID metadata (to measure what it costs)."""
    if small_format not in SMALL_FORMATS:
        raise ValueError(f"unknown small format {small_format!r} (choose from {SMALL_FORMATS})")
    if small_format == "jpeg" and img.mode in ("RGBA", "LA"):
        small_format = "webp-lossy"
    if small_format in LOSSY_FORMATS and quality is None:
        raise ValueError(f"{small_format} small files need a quality")
    payload = pack_meta(meta) if meta is not None else None
    kw: dict = {}
    if icc:
        kw["icc_profile"] = icc
    if exif:
        kw["exif"] = exif
    if small_format == "png":
        info = PngImagePlugin.PngInfo()
        if payload:
            info.add_text("taid", payload)
        kw.update(format="PNG", pnginfo=info, compress_level=9)
    elif small_format in ("webp", "webp-lossy"):
        if img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.mode else "RGB")
        lossless = small_format == "webp"
        kw.update(format="WEBP", lossless=lossless, quality=100 if lossless else quality, method=6 if lossless else 4,
                  exact=True)
        if payload:
            kw["xmp"] = payload
    else:
        kw.update(format="JPEG", quality=quality, subsampling=0, optimize=True)
        if payload:
            kw["comment"] = payload
    buf = io.BytesIO()
    try:
        img.save(buf, **kw)
    except (ValueError, OSError):
        if "exif" not in kw:
            raise
        kw.pop("exif")  # e.g. an EXIF block larger than a JPEG APP1 segment: drop it, keep the image
        buf = io.BytesIO()
        img.save(buf, **kw)
    out = buf.getvalue()
    if kw["format"] == "WEBP" and payload:
        out = _webp_with_chunk(out, payload)
    return out, small_format


def _read_meta(im: Image.Image, data: bytes) -> dict | None:
    """The embedded metadata: compact (version 2) where the format keeps it, else version 1 JSON."""
    if im.format == "WEBP":
        raw = _webp_chunk(data)
    elif im.format in ("JPEG", "MPO"):
        raw = im.info.get("comment")
    else:
        raw = im.info.get("taid")
    compact = unpack_meta(raw) if raw else None
    if compact is not None:
        return compact
    # version 1: JSON under the same PNG keyword, or in an XMP packet (WebP, JPEG)
    return _legacy_meta(raw if isinstance(raw, str) else None) or _legacy_meta(_legacy_xmp_json(im))


def _webp_chunk(data: bytes) -> bytes | None:
    return next((body for fourcc, _, body in _riff_chunks(data) if fourcc == _WEBP_CHUNK), None)


def _legacy_xmp_json(im: Image.Image) -> str | None:
    xmp = im.info.get("xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    m = _XMP_RE.search(xmp) if isinstance(xmp, bytes) else None
    return html.unescape(m.group(1).decode("utf-8")) if m else None


def _legacy_meta(raw: str | None) -> dict | None:
    """Version 1: JSON of every key of the record (nulls included)."""
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and meta.get("taid_small_file") else None


def read_small(data: bytes) -> tuple[Image.Image, dict | None, bytes | None, bytes | None, str]:
    """(decoded small image, embedded metadata or None, ICC, EXIF, small format name)."""
    try:
        im = Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP"))  # no other decoder runs
        im.load()  # Pillow's own bomb guard applies to small files (2 x Image.MAX_IMAGE_PIXELS)
    except Exception as exc:
        raise SmallFileError(f"not a readable image: {type(exc).__name__}: {exc}") from exc
    fmt = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg"}.get(im.format or "")
    if im.format == "WEBP":
        fmt = "webp" if is_lossless_webp(data) else "webp-lossy"
    if fmt is None:
        raise SmallFileError(f"{im.format} is not a TAID small-file format")
    return im, _read_meta(im, data), im.info.get("icc_profile") or None, im.info.get("exif") or None, fmt


def is_lossless_webp(data: bytes) -> bool:
    """Walk the RIFF chunks: the image chunk is VP8L (lossless) or VP8 (lossy)."""
    for fourcc, _, _ in _riff_chunks(data):
        if fourcc in (b"VP8L", b"VP8 "):
            return fourcc == b"VP8L"
    return False


DEFAULT_JPEG_QUALITY = 95
