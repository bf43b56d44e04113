"""Real-world inputs: every policy of pipeline/codec/image_io.py, each with a fixture made here with Pillow."""

from __future__ import annotations

import io
import itertools
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from models.zoo import load_pair
from pipeline.codec.options import CodecOptions
from pipeline.codec.image import compress_image, decode_output, rehydrate_image
from pipeline.codec.small_file import read_small
from tests.codec.test_codec import encode, psnr, smooth_rgb


@pytest.fixture(scope="module")
def x2():
    return load_pair("taid-x2")


def run(data: bytes, pair, **opts):
    small, _, rec = compress_image(data, pair, CodecOptions(**opts))
    assert (small is None) == (rec.status != "ok"), rec
    return small, rec


def smooth_alpha(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(255 * (xx + yy) / (h + w - 2) * 1.4 - 40, 0, 255).round().astype(np.uint8)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_rgb16(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write 48-bit PNGs)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels and has no pixel data at all: decoding it would fail."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))

def cmyk_profile() -> bytes:
    """Minimal ICC v2 output profile: CMYK -> XYZ (PCS) via a 2-point-grid lut16 A2B0 (naive CMYK)."""
    M = np.array([[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169], [0.0139322, 0.0971045, 0.7141733]])
    clut = []
    for c, m, y, k in itertools.product((0, 1), repeat=4):
        rgb = np.array([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)])
        xyz = M @ rgb  # linear light, D50
        clut += [min(65535, int(round(v * 32768))) for v in xyz]
    lut = b"mft2" + bytes(4) + bytes([4, 3, 2, 0])
    lut += b"".join(s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lut += struct.pack(">HH", 2, 2)
    lut += struct.pack(">8H", *([0, 65535] * 4))
    lut += struct.pack(f">{len(clut)}H", *clut)
    lut += struct.pack(">6H", *([0, 65535] * 3))
    wtpt = b"XYZ " + bytes(4) + s15(0.9642) + s15(1.0) + s15(0.8249)
    text = b"test CMYK\x00"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    cprt = b"text" + bytes(4) + b"none\x00"
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"cprt", cprt), (b"A2B0", lut)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for sig, data in tags:
        pad = (-len(data)) % 4
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + bytes(pad)
    size = 128 + len(table) + len(body)
    header = struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"prtr" + b"CMYK" + b"XYZ "
    header += bytes(12) + b"acsp" + b"APPL" + bytes(4) + bytes(4) + bytes(4) + bytes(8) + struct.pack(">I", 0)
    header += s15(0.9642) + s15(1.0) + s15(0.8249) + b"lcms" + bytes(16) + bytes(28)
    assert len(header) == 128
    return header + table + body


# --- EXIF orientation ------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
def test_exif_orientation_applied_and_recorded(x2, orientation):
    stored = smooth_rgb(48, 80)  # 80 wide, 48 high as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"  # Make: must survive into the rehydrated file
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    small, rec = run(data, x2)
    assert rec.exif_orientation == orientation and rec.exif_present
    assert (rec.width, rec.height) == (upright.shape[1], upright.shape[0])
    if orientation in (6, 8):
        assert (rec.width, rec.height) == (48, 80)
    out = decode_output(rehydrate_image(small, rec, x2))
    assert out.size == (rec.width, rec.height)
    assert psnr(np.asarray(out), upright) > 30  # upright content, not the stored orientation
    out_exif = out.getexif()
    assert out_exif.get(0x0112) == 1 and out_exif.get(0x010F) == "TestCam"
    assert read_small(small)[0].getexif().get(0x0112) == 1  # the small file is upright too


def test_png_exif_orientation(x2):
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(smooth_rgb(24, 40), "PNG", exif=exif.tobytes())
    small, rec = run(data, x2)
    assert rec.exif_orientation == 8 and rec.exif_present and (rec.width, rec.height) == (24, 40)
    out = decode_output(rehydrate_image(small, rec, x2))
    assert out.format == "PNG" and out.size == (24, 40) and out.getexif().get(0x0112) == 1


# --- ICC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,small_format", [("PNG", "png"), ("JPEG", "jpeg"), ("PNG", "webp")])
def test_icc_profile_carried_through(x2, fmt, small_format):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    # Pillow never adds a profile by itself: the bytes can only come from the source file
    data = encode(smooth_rgb(40, 56), fmt, icc_profile=icc)
    small, rec = run(data, x2, small_format=small_format)
    assert rec.icc_present and rec.icc_carried
    assert read_small(small)[2] == icc
    out = decode_output(rehydrate_image(small, rec, x2))
    assert out.info.get("icc_profile") == icc
    plain_small, plain = run(encode(smooth_rgb(40, 56), fmt), x2)
    assert not plain.icc_present and "icc_profile" not in decode_output(rehydrate_image(plain_small, plain, x2)).info


# --- CMYK ------------------------------------------------------------------------------------


def test_cmyk_jpeg_converted_to_rgb(x2):
    cmyk = Image.fromarray(smooth_rgb(64, 64)).convert("CMYK")
    data = encode(cmyk, "JPEG", quality=95)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    small, rec = run(data, x2)
    assert rec.source_mode == "CMYK" and rec.color_conversion.startswith("CMYK -> RGB naive")
    out = decode_output(rehydrate_image(small, rec, x2))
    assert out.mode == "RGB" and out.format == "JPEG"
    assert psnr(np.asarray(out), reference) > 28


def test_cmyk_with_embedded_profile_converted_to_srgb(x2):
    icc = cmyk_profile()
    data = encode(Image.fromarray(smooth_rgb(64, 64)).convert("CMYK"), "JPEG", quality=95, icc_profile=icc)
    source = Image.open(io.BytesIO(data))
    srgb = ImageCms.createProfile("sRGB")
    via_icc = np.asarray(ImageCms.profileToProfile(source, ImageCms.ImageCmsProfile(io.BytesIO(icc)), srgb, outputMode="RGB"))
    naive = np.asarray(source.convert("RGB"))
    assert psnr(via_icc, naive) < 25  # the profile really changes the colours
    small, rec = run(data, x2)
    assert rec.icc_present and rec.icc_carried and rec.color_conversion == "CMYK -> sRGB via embedded ICC (perceptual)"
    out = decode_output(rehydrate_image(small, rec, x2))
    assert out.mode == "RGB" and out.format == "JPEG"
    carried = ImageCms.ImageCmsProfile(io.BytesIO(out.info["icc_profile"]))
    assert "sRGB" in ImageCms.getProfileDescription(carried)
    assert psnr(np.asarray(out), via_icc) > 28 and psnr(np.asarray(out), via_icc) > psnr(np.asarray(out), naive) + 5


def test_cmyk_with_unusable_profile_falls_back_and_says_so(x2):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # an RGB profile on CMYK data
    data = encode(Image.fromarray(smooth_rgb(32, 32)).convert("CMYK"), "JPEG", icc_profile=srgb)
    small, rec = run(data, x2)
    assert rec.icc_present and not rec.icc_carried
    assert "naive" in rec.color_conversion and "unusable" in rec.notes
    assert "icc_profile" not in decode_output(rehydrate_image(small, rec, x2)).info


# --- alpha, palette, grayscale ---------------------------------------------------------------


def test_rgba_alpha_kept_and_restored_at_full_size(x2):
    rgb, alpha = smooth_rgb(72, 88), smooth_alpha(72, 88)
    data = encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    small, rec = run(data, x2)
    assert rec.has_alpha and rec.alpha_stored
    assert read_small(small)[0].mode == "RGBA"
    out = decode_output(rehydrate_image(small, rec, x2))
    assert out.mode == "RGBA" and out.size == (88, 72)
    arr = np.asarray(out)
    assert psnr(arr[..., 3], alpha) > 35
    assert psnr(arr[..., :3], rgb) > 30
    # JPEG small files cannot hold alpha: written as lossy WebP, said so
    small, rec = run(data, x2, small_format="jpeg")
    assert rec.output_format == "webp-lossy" and "alpha" in rec.notes
    assert decode_output(rehydrate_image(small, None, x2)).mode == "RGBA"


def test_opaque_alpha_not_stored_but_restored(x2):
    data = encode(Image.fromarray(np.dstack([smooth_rgb(32, 32), np.full((32, 32), 255, np.uint8)]), "RGBA"))
    small, rec = run(data, x2)
    assert rec.has_alpha and not rec.alpha_stored and read_small(small)[0].mode == "RGB"
    out = decode_output(rehydrate_image(small, None, x2))
    assert out.mode == "RGBA" and np.all(np.asarray(out)[..., 3] == 255)


def test_palette_with_transparency(x2):
    rgb = smooth_rgb(64, 64)
    pal = Image.fromarray(rgb).quantize(64)
    idx = np.asarray(pal).copy()
    idx[:24, :24] = 63  # a transparent square
    pal = Image.fromarray(idx, "P")
    pal.putpalette(Image.fromarray(rgb).quantize(64).getpalette())
    data = encode(pal, "PNG", transparency=63)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
    small, rec = run(data, x2)
    assert rec.source_mode == "P" and rec.has_alpha and rec.alpha_stored and rec.color_conversion == "palette expanded"
    out = np.asarray(decode_output(rehydrate_image(small, rec, x2)))
    assert out.shape == (64, 64, 4)
    assert out[4:20, 4:20, 3].max() < 8  # transparent inside the square
    assert out[32:, 32:, 3].min() > 247  # opaque elsewhere
    assert psnr(out[..., 3], reference[..., 3]) > 22


def test_palette_without_transparency_is_rgb(x2):
    data = encode(Image.fromarray(smooth_rgb(40, 40)).quantize(128), "PNG")
    small, rec = run(data, x2)
    assert not rec.has_alpha and decode_output(rehydrate_image(small, rec, x2)).mode == "RGB"


@pytest.mark.parametrize("mode", ["L", "LA", "1"])
def test_grayscale_stays_gray(x2, mode):
    gray = smooth_rgb(48, 64)[..., 1]
    if mode == "LA":
        im = Image.fromarray(np.dstack([gray, smooth_alpha(48, 64)]), "LA")
    else:
        im = Image.fromarray(gray, "L").convert(mode)
    small, rec = run(encode(im), x2)
    assert rec.is_gray and rec.source_mode == mode
    assert read_small(small)[0].mode == ("LA" if mode == "LA" else "L")
    out = decode_output(rehydrate_image(small, rec, x2))
    assert out.mode == ("LA" if mode == "LA" else "L") and out.size == (64, 48)
    if mode == "L":
        assert psnr(np.asarray(out), gray) > 30


# --- high bit depth --------------------------------------------------------------------------


def test_16bit_gray_png_skipped_by_default_and_rounded_on_request(x2):
    g16 = (smooth_rgb(32, 48)[..., 0].astype(np.uint32) * 257 + 100).clip(0, 65535).astype(np.uint16)
    data = encode(Image.fromarray(g16))  # mode I;16
    small, rec = run(data, x2)
    assert rec.status == "skipped_high_bit_depth" and rec.bit_depth == 16 and "8-bit" in rec.error_message
    small, rec = run(data, x2, high_bit_depth="to8bit")
    assert rec.status == "ok" and rec.bit_depth == 16 and rec.processed_bit_depth == 8 and "rounded" in rec.notes
    out = np.asarray(decode_output(rehydrate_image(small, rec, x2)))
    expected = ((g16.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    assert out.dtype == np.uint8 and psnr(out, expected) > 30


def test_16bit_rgb_png_and_tiff(x2):
    a16 = smooth_rgb(24, 24).astype(np.uint16) * 257
    small, rec = run(png_rgb16(a16), x2)
    assert rec.status == "skipped_high_bit_depth" and rec.bit_depth == 16 and rec.source_mode == "RGB"
    small, rec = run(png_rgb16(a16), x2, high_bit_depth="to8bit")
    assert rec.status == "ok" and rec.processed_bit_depth == 8 and "high byte" in rec.notes
    tif = encode(Image.fromarray(a16[..., 0]), "TIFF")
    assert run(tif, x2)[1].status == "skipped_high_bit_depth"
    flt = encode(Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)), "TIFF")
    _, rec = run(flt, x2, high_bit_depth="to8bit")
    assert rec.status == "skipped_high_bit_depth" and rec.bit_depth == 32  # float: range unknown, never clipped


# --- multiple frames -------------------------------------------------------------------------


def frames() -> list[Image.Image]:
    base = smooth_rgb(32, 32)
    return [Image.fromarray(a) for a in (base, 255 - base, np.ascontiguousarray(base[::-1, ::-1]))]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF"])
def test_multi_frame_policy(x2, fmt):
    fr = frames()
    buf = io.BytesIO()
    fr[0].save(buf, fmt, save_all=True, append_images=fr[1:], **({"lossless": True} if fmt == "WEBP" else {}))
    data = buf.getvalue()
    _, rec = run(data, x2)
    assert rec.status == "skipped_multi_frame" and rec.n_frames == 3 and rec.frames_policy == "skipped"
    small, rec = run(data, x2, multi_frame="first")
    assert rec.status == "ok" and rec.frames_policy == "first_frame" and "2 frame(s) dropped" in rec.notes
    first = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    out = np.asarray(decode_output(rehydrate_image(small, rec, x2)).convert("RGB"))
    others = np.asarray(fr[1])
    assert psnr(out, first) > psnr(out, others) + 10


def test_mpo_keeps_primary_image(x2):
    fr = frames()
    buf = io.BytesIO()
    fr[0].save(buf, "MPO", save_all=True, append_images=fr[1:2], quality=95)
    small, rec = run(buf.getvalue(), x2)
    assert rec.status == "ok" and rec.frames_policy == "mpo_primary" and rec.n_frames == 2
    assert decode_output(rehydrate_image(small, rec, x2)).format == "JPEG"


# --- broken and hostile inputs ---------------------------------------------------------------


def test_empty_and_non_image(x2):
    assert run(b"", x2)[1].status == "skipped_empty"
    rng = np.random.default_rng(0)
    for junk in (rng.bytes(5000), b"%PDF-1.7 not an image", b"just some text\n" * 10):
        _, rec = run(junk, x2)
        assert rec.status == "skipped_not_image" and rec.error_message and rec.source_sha256


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files(x2, fmt):
    data = encode(smooth_rgb(64, 64), fmt, **({"quality": 90} if fmt != "PNG" else {}))
    _, rec = run(data[: len(data) // 2], x2)
    assert rec.status in ("failed_truncated", "failed_decode") and rec.error_message
    if fmt in ("JPEG", "PNG"):
        assert rec.status == "failed_truncated"
    _, rec = run(data[:20], x2)
    assert rec.status.startswith("failed_")


def test_decompression_bombs_checked_from_header(x2):
    # claims 12000 x 12000 with no pixel data at all: a decode would fail, so "skipped" proves
    # the limit was applied to the header before decoding
    t0 = time.perf_counter()
    _, rec = run(png_header_only(12000, 12000), x2)
    assert rec.status == "skipped_too_many_pixels" and (rec.width, rec.height) == (12000, 12000)
    assert "144000000" in rec.error_message
    # far beyond Pillow's own guard too
    _, rec = run(png_header_only(100_000, 100_000), x2)
    assert rec.status == "skipped_too_many_pixels"
    assert time.perf_counter() - t0 < 2
    # a real image over a small configured limit
    _, rec = run(encode(smooth_rgb(64, 64)), x2, max_pixels=4000)
    assert rec.status == "skipped_too_many_pixels" and rec.width == 64
    assert run(encode(smooth_rgb(64, 64)), x2, max_pixels=4096)[1].status == "ok"


def test_corrupted_bytes_never_raise(x2):
    rng = np.random.default_rng(1)
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF"):
        data = bytearray(encode(smooth_rgb(24, 24), fmt))
        for _ in range(4):
            bad = bytearray(data)
            for pos in rng.integers(0, len(bad), size=8):
                bad[pos] = int(rng.integers(0, 256))
            small, rec = run(bytes(bad), x2)  # returns a status, whatever the damage
            assert rec.status == "ok" or rec.status.startswith(("failed_", "skipped_")), rec.status
            assert rec.status == "ok" or rec.error_message


def test_unsupported_formats_refused_before_any_decoder(x2):
    # (HEIC is decoded since pillow-heif became a dependency: tests/codec/test_heic.py)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    psd = b"8BPS\x00\x01" + bytes(64)
    for data, name in ((eps, "PostScript"), (psd, "PSD")):
        _, rec = run(data, x2)
        assert rec.status == "skipped_unsupported_format" and name in rec.error_message


@pytest.mark.parametrize("fmt", ["BMP", "TGA", "PPM", "TIFF", "WEBP"])
def test_other_common_formats_accepted(x2, fmt):
    img = smooth_rgb(32, 40)
    small, rec = run(encode(img, fmt), x2)
    assert rec.status == "ok" and rec.source_format == fmt
    out = decode_output(rehydrate_image(small, rec, x2))
    assert out.format == {"TIFF": "TIFF", "WEBP": "WEBP"}.get(fmt, "PNG")
    assert psnr(np.asarray(out.convert("RGB")), img) > 30


def test_10bit_avif_detected_from_its_header(x2):
    data = encode(smooth_rgb(16, 16), "AVIF")
    small, rec = run(data, x2)
    assert rec.status == "ok" and rec.bit_depth == 8
    i = data.find(b"pixi")
    patched = data[: i + 9] + bytes([10, 10, 10]) + data[i + 12 :]  # pixi: 3 channels of 10 bits
    _, rec = run(patched, x2)
    assert rec.status == "skipped_high_bit_depth" and rec.bit_depth == 10


def test_32bit_int_tiff_always_skipped(x2):
    data = encode(Image.fromarray(np.arange(256, dtype=np.int32).reshape(16, 16) * 1000, "I"), "TIFF")
    _, rec = run(data, x2, high_bit_depth="to8bit")
    assert rec.status == "skipped_high_bit_depth" and rec.bit_depth == 32 and "range is unknown" in rec.error_message
