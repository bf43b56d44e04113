"""HEIC/HEIF inputs (phone photos) through pillow-heif: decoded upright once, EXIF and ICC carried
like JPEG's, high bit depth never silently reduced, broken files as rows. The HEIC files are made
here with pillow-heif's own HEVC encoder."""

from __future__ import annotations

import io

import numpy as np
import pillow_heif
import pytest
from PIL import Image, ImageCms

from models.metrics import psnr_y
from models.zoo import load_pair
from pipeline.codec.options import CodecOptions
from pipeline.codec.image import compress_image, decode_output, rehydrate_image
from pipeline.codec.fidelity import compress_to_target, resolve_fidelity

from tests import DATA
BIRD = DATA / "Set5" / "bird.png"


def heic(img: Image.Image, orientation: int = 1, icc: bytes | None = None, quality: int = 90) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"  # Make
    buf = io.BytesIO()
    img.save(buf, "HEIF", quality=quality, exif=exif.tobytes(), **({"icc_profile": icc} if icc else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def x2():
    return load_pair("taid-x2")


def test_heic_photo_compresses_and_rehydrates_upright(x2):
    stored = Image.open(BIRD).convert("RGB").crop((0, 0, 200, 120))  # landscape as stored by the sensor
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = heic(stored, orientation=6, icc=icc)  # "rotate 90 degrees clockwise to view"
    small, _, rec = compress_image(data, x2, CodecOptions())
    assert rec.status == "ok", rec.error_message
    assert rec.source_format == "HEIF" and rec.exif_orientation == 6
    assert (rec.width, rec.height) == (120, 200)  # upright: turned exactly once
    assert rec.icc_present and rec.icc_carried
    out = decode_output(rehydrate_image(small, rec, x2))
    assert out.size == (120, 200) and out.info.get("icc_profile") == icc
    assert out.getexif().get(0x0112) == 1 and out.getexif().get(0x010F) == "TestCam"
    upright = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # libheif's own upright decode
    assert upright.shape == (200, 120, 3) and psnr_y(np.asarray(out.convert("RGB")), upright) > 35


def test_heic_through_the_default_fidelity():
    pairs = {m: load_pair(m) for m in resolve_fidelity().models}
    data = heic(Image.open(BIRD).convert("RGB"), orientation=3)
    small, layer, rec = compress_to_target(data, pairs, resolve_fidelity())
    assert rec.status == "ok" and rec.psnr_y >= 36 and rec.exif_orientation == 3
    out = decode_output(rehydrate_image(small, None, pairs[rec.model_id], layer=layer))
    src = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert out.size == (288, 288) and psnr_y(np.asarray(out.convert("RGB")), src) >= 36


def test_broken_and_high_bit_depth_heic_are_rows(x2):
    data = heic(Image.open(BIRD).convert("RGB"))
    for broken in (data[: len(data) // 2], data[:40]):
        small, _, rec = compress_image(broken, x2, CodecOptions())
        assert small is None and rec.status in ("failed_truncated", "failed_decode"), rec.status
    ten = (np.random.default_rng(0).integers(0, 1024, (20, 30, 3)).astype(np.uint16) << 6)
    buf = io.BytesIO()
    pillow_heif.from_bytes(mode="RGB;16", size=(30, 20), data=ten.tobytes()).save(buf, quality=-1)
    small, _, rec = compress_image(buf.getvalue(), x2, CodecOptions())
    assert small is None and rec.status == "skipped_high_bit_depth" and rec.bit_depth == 10
    small, _, rec = compress_image(buf.getvalue(), x2, CodecOptions(high_bit_depth="to8bit"))
    assert rec.status == "ok" and rec.processed_bit_depth == 8 and (rec.width, rec.height) == (30, 20)
