"""The small file's embedded metadata: compact (what it costs per file), exact round trip, and
files of the first format (JSON in iTXt / XMP) still read and rehydrate the same."""

from __future__ import annotations

import html
import io
import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from models.zoo import load_pair
from pipeline.codec.options import CodecOptions, CompressRecord
from pipeline.codec.image import compress_image, decode_output, rehydrate_image
from pipeline.codec.small_file import (
    SMALL_FORMATS,
    _riff_chunks,
    embedded_meta,
    encode_small,
    pack_meta,
    read_small,
    unpack_meta,
)

SHA = "8c33d5d710e46ea286a1017bff646f2a59e4997e58b3d8bf9ab90e133fd5f1f8"
# what a photo archive writes for most files: an RGB JPEG original, codec-aware model
TYPICAL = CompressRecord(
    width=480, height=320, scale=2, model_id="taid-x2-webp", model_sha256=SHA, source_format="JPEG",
    source_mode="RGB", bit_depth=8, processed_bit_depth=8, exif_orientation=1, rehydrate_format="jpeg",
    rehydrate_quality=95, tiles=1,
)
OVERHEAD_BOUND = 250  # bytes of TAID metadata per small file, all formats


# --- version 1, the format written before compact metadata (kept here to make such files) -------

_V1_KEYS = (
    "width", "height", "scale", "model_id", "model_sha256", "has_alpha", "alpha_stored", "is_gray",
    "source_format", "source_mode", "bit_depth", "processed_bit_depth", "exif_orientation",
    "color_conversion", "rehydrate_format", "rehydrate_quality",
)


def _v1_xmp(meta_json: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:taid="https://github.com/taid-archive/ns/1.0/" '
        f'taid:record="{html.escape(meta_json, quote=True)}"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode("utf-8")


def encode_small_v1(img: Image.Image, small_format: str, quality: int, record: dict) -> bytes:
    """pipeline.codec.small_file.encode_small as it was at version 1 (no ICC / EXIF here)."""
    meta = {k: record.get(k) for k in _V1_KEYS} | {"taid_small_file": 1}
    meta_json = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    if small_format == "jpeg" and img.mode in ("RGBA", "LA"):
        small_format = "webp-lossy"
    if small_format == "png":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("taid", meta_json)
        kw = dict(format="PNG", pnginfo=info, compress_level=9)
    elif small_format in ("webp", "webp-lossy"):
        if img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.mode else "RGB")
        lossless = small_format == "webp"
        kw = dict(format="WEBP", lossless=lossless, quality=100 if lossless else quality,
                  method=6 if lossless else 4, xmp=_v1_xmp(meta_json), exact=True)
    else:
        kw = dict(format="JPEG", quality=quality, subsampling=0, optimize=True, xmp=_v1_xmp(meta_json))
    buf = io.BytesIO()
    img.save(buf, **kw)
    return buf.getvalue()


# --- size -------------------------------------------------------------------------------------


def small_rgb(h: int = 160, w: int = 240) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx ^ yy) & 255)], axis=2).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize("fmt", SMALL_FORMATS)
def test_metadata_overhead_is_small(fmt):
    img, meta = small_rgb(80, 120), embedded_meta(TYPICAL.model_dump())  # the overhead does not depend on the size
    with_meta, _ = encode_small(img, fmt, 75, meta)
    bare, _ = encode_small(img, fmt, 75, None)
    overhead = len(with_meta) - len(bare)
    v1 = len(encode_small_v1(img, fmt, 75, TYPICAL.model_dump())) - len(bare)
    print(f"{fmt}: {overhead} B of TAID metadata (version 1: {v1} B)")
    assert 0 < overhead <= OVERHEAD_BOUND
    assert overhead < v1 / 2
    assert read_small(with_meta)[1]["model_sha256"] == SHA  # the full sha256, not a prefix
    assert read_small(bare)[1] is None
    # the pixels are exactly those of the file without metadata
    assert np.array_equal(np.asarray(read_small(with_meta)[0]), np.asarray(read_small(bare)[0]))


def test_compact_encoding_round_trip_and_omissions():
    meta = embedded_meta(TYPICAL.model_dump())
    raw = pack_meta(meta)
    assert raw.startswith(b"taid=2;") and b'"' not in raw and b"=95" not in raw  # jpeg at 95 is implied
    assert b";f=" not in raw and b"null" not in raw and b"source" not in raw
    back = unpack_meta(raw)
    assert back["rehydrate_quality"] is None  # rehydrate_image picks 95 for jpeg
    assert {k: back[k] for k in ("width", "height", "scale", "model_id", "model_sha256", "rehydrate_format")} == {
        "width": 480, "height": 320, "scale": 2, "model_id": "taid-x2-webp", "model_sha256": SHA,
        "rehydrate_format": "jpeg"}
    assert back["has_alpha"] is back["alpha_stored"] is back["is_gray"] is False  # absent = false, explicitly
    png = unpack_meta(pack_meta(meta | {"rehydrate_format": "png", "rehydrate_quality": None, "has_alpha": True}))
    assert png["rehydrate_format"] is None and png["has_alpha"] and not png["alpha_stored"]
    odd = unpack_meta(pack_meta(meta | {"model_id": "taid-x2-a;b=c%d é", "rehydrate_quality": 80}))
    assert odd["model_id"] == "taid-x2-a;b=c%d é" and odd["rehydrate_quality"] == 80
    assert unpack_meta(raw + b";z=future-key")["width"] == 480  # unknown keys are ignored
    assert unpack_meta(b"taid=2;w=wide") is None and unpack_meta(b"hello") is None and unpack_meta("{}") is None


def test_webp_metadata_is_a_riff_chunk_not_xmp():
    out, _ = encode_small(small_rgb(), "webp-lossy", 75, embedded_meta(TYPICAL.model_dump()))
    chunks = [c for c, _, _ in _riff_chunks(out)]
    assert chunks == [b"VP8X", b"VP8 ", b"TAID"]
    assert out[20] & 0x04 == 0  # VP8X says: no XMP
    im = Image.open(io.BytesIO(out))
    im.load()
    assert "xmp" not in im.info and im.size == (240, 160)


# --- rehydration: new files, version 1 files ----------------------------------------------------


@pytest.fixture(scope="module")
def x2():
    return load_pair("taid-x2")


def _image(kind: str) -> bytes:
    rgb = np.asarray(small_rgb(40, 56))
    if kind == "rgb":
        im = Image.fromarray(rgb)
    elif kind == "gray":
        im = Image.fromarray(rgb[..., 1], "L")
    else:  # alpha: a ramp (stored) or fully opaque (restored as 255, not stored)
        ramp = np.tile(np.linspace(0, 255, 56).astype(np.uint8), (40, 1))
        a = ramp if kind == "alpha" else np.full((40, 56), 255, np.uint8)
        im = Image.fromarray(np.dstack([rgb, a]), "RGBA")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["rgb", "gray", "alpha", "opaque_alpha"])
@pytest.mark.parametrize("fmt", SMALL_FORMATS)
def test_version_1_files_rehydrate_like_new_ones(x2, fmt, kind):
    """The same small image written in both formats: same pixels, same rehydrated image (mode,
    alpha, grey and output format come from the metadata: WebP stores grey images as RGB)."""
    png, _, rec = compress_image(_image(kind), x2, CodecOptions(small_format="png"))
    assert rec.status == "ok"
    small_img = read_small(png)[0]
    new, _ = encode_small(small_img, fmt, 80, embedded_meta(rec.model_dump()))
    old = encode_small_v1(small_img, fmt, 80, rec.model_dump())
    assert read_small(old)[1]["taid_small_file"] == 1 and read_small(new)[1]["taid_small_file"] == 2
    assert np.array_equal(np.asarray(read_small(old)[0]), np.asarray(read_small(new)[0]))
    expected = decode_output(rehydrate_image(new, None, x2))
    assert expected.mode == {"rgb": "RGB", "gray": "L", "alpha": "RGBA", "opaque_alpha": "RGBA"}[kind]
    assert expected.size == (56, 40)
    got = decode_output(rehydrate_image(old, None, x2))
    assert got.mode == expected.mode and got.format == expected.format
    assert np.array_equal(np.asarray(got), np.asarray(expected))
