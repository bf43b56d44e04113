"""The TAID small file: the downscaled image in an ordinary format plus its own metadata.

Formats (`small_format`):
- `png` (default): lossless; metadata in an iTXt chunk with keyword `taid`.
- `webp`: WebP lossless; metadata in an XMP packet (attribute `taid:record`).
- `webp-lossy`: WebP at `quality`; XMP as above.
- `jpeg`: baseline JPEG at `quality`, 4:4:4 chroma (the small image is all detail, subsampling
  chroma would halve its colour resolution again); XMP as above. JPEG has no alpha channel, so an
  image whose alpha is stored is written as `webp-lossy` at the same quality instead (recorded
  in the record's `output_format` and `notes`).

The embedded metadata (JSON, `EMBEDDED_KEYS`) holds the original width and height, the scale, the
model id and weights sha256 and the few policy flags rehydration needs, so a small file separated
from its manifest can still be rehydrated. The ICC profile and EXIF block travel in the format's
own ICC / EXIF containers, so ordinary viewers show the small file in the right colours.
"""

from __future__ import annotations

import html
import io
import json
import re

from PIL import Image, PngImagePlugin

SMALL_FORMATS = ("png", "webp", "webp-lossy", "jpeg")
SUFFIX = {"png": ".png", "webp": ".webp", "webp-lossy": ".webp", "jpeg": ".jpg"}
EMBED_VERSION = 1
EMBEDDED_KEYS = (
    "width", "height", "scale", "model_id", "model_sha256", "has_alpha", "alpha_stored", "is_gray",
    "source_format", "source_mode", "bit_depth", "processed_bit_depth", "exif_orientation",
    "color_conversion", "rehydrate_format", "rehydrate_quality",
)
_XMP_NS = "https://github.com/taid-archive/ns/1.0/"
_XMP_RE = re.compile(rb'taid:record="([^"]*)"')


class SmallFileError(ValueError):
    """Bytes that are not a readable TAID small file."""


def _xmp(meta_json: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:taid="{_XMP_NS}" taid:record="{html.escape(meta_json, quote=True)}"/>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode("utf-8")


def embedded_meta(record: dict) -> dict:
    meta = {k: record.get(k) for k in EMBEDDED_KEYS}
    meta["taid_small_file"] = EMBED_VERSION
    return meta


def encode_small(
    img: Image.Image, small_format: str, quality: int, meta: dict, icc: bytes | None = None, exif: bytes | None = None
) -> tuple[bytes, str]:
    """Encode the small image; returns (bytes, the format actually written)."""
    if small_format not in SMALL_FORMATS:
        raise ValueError(f"unknown small format {small_format!r} (choose from {SMALL_FORMATS})")
    if small_format == "jpeg" and img.mode in ("RGBA", "LA"):
        small_format = "webp-lossy"
    meta_json = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    kw: dict = {}
    if icc:
        kw["icc_profile"] = icc
    if exif:
        kw["exif"] = exif
    if small_format == "png":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("taid", meta_json)
        kw.update(format="PNG", pnginfo=info, compress_level=9)
    elif small_format in ("webp", "webp-lossy"):
        if img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.mode else "RGB")
        lossless = small_format == "webp"
        kw.update(format="WEBP", lossless=lossless, quality=100 if lossless else quality, method=6 if lossless else 4,
                  xmp=_xmp(meta_json), exact=True)
    else:
        kw.update(format="JPEG", quality=quality, subsampling=0, optimize=True, xmp=_xmp(meta_json))
    buf = io.BytesIO()
    try:
        img.save(buf, **kw)
    except (ValueError, OSError):
        if "exif" not in kw:
            raise
        kw.pop("exif")  # e.g. an EXIF block larger than a JPEG APP1 segment: drop it, keep the image
        buf = io.BytesIO()
        img.save(buf, **kw)
    return buf.getvalue(), small_format


def _read_meta(im: Image.Image) -> dict | None:
    raw = None
    if isinstance(im.info.get("taid"), str):
        raw = im.info["taid"]
    else:
        xmp = im.info.get("xmp")
        if isinstance(xmp, str):
            xmp = xmp.encode("utf-8")
        if isinstance(xmp, bytes):
            m = _XMP_RE.search(xmp)
            if m:
                raw = html.unescape(m.group(1).decode("utf-8"))
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
    return im, _read_meta(im), im.info.get("icc_profile") or None, im.info.get("exif") or None, fmt


def is_lossless_webp(data: bytes) -> bool:
    """Walk the RIFF chunks: the image chunk is VP8L (lossless) or VP8 (lossy)."""
    pos = 12
    while pos + 8 <= len(data):
        fourcc, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if fourcc in (b"VP8L", b"VP8 "):
            return fourcc == b"VP8L"
        pos += 8 + size + (size & 1)
    return False
