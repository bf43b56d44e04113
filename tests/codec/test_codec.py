"""Codec basics: round trip, geometry, scales, small formats, embedded metadata, model checks, CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from models.zoo import load_pair
from pipeline.codec.options import CodecOptions, CompressRecord, RehydrateError
from pipeline.codec.image import check_options, compress_image, decode_output, rehydrate_image
from pipeline.codec.small_file import read_small


@pytest.fixture(scope="module")
def x2():
    return load_pair("taid-x2")


@pytest.fixture(scope="module")
def x4():
    return load_pair("taid-x4")


def smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A natural-ish test image: smooth gradients + a few edges (the model restores these well)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 100 * np.sin(xx / 17 + c) * np.cos(yy / 23 - c) for c in range(3)], axis=2)
    img[h // 3 : h // 2, w // 4 : w // 2] += 60
    img += rng.normal(0, 2, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def encode(img: np.ndarray | Image.Image, fmt: str = "PNG", **kw) -> bytes:
    im = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_minimal_round_trip_png(x2):
    img = smooth_rgb(96, 128)
    small, _, rec = compress_image(encode(img), x2, CodecOptions())
    assert rec.status == "ok" and small is not None
    assert (rec.width, rec.height, rec.out_width, rec.out_height) == (128, 96, 64, 48)
    assert rec.model_id == "taid-x2" and rec.model_sha256 == x2.weights_sha256
    assert rec.output_size == len(small) and rec.output_format == "png"
    assert Image.open(io.BytesIO(small)).size == (64, 48)
    out = decode_output(rehydrate_image(small, rec, x2))
    assert out.format == "PNG" and out.mode == "RGB" and out.size == (128, 96)
    assert psnr(np.asarray(out), img) > 30


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (37, 61), (101, 67)])
@pytest.mark.parametrize("scale", [2, 8])
def test_arbitrary_sizes_crop_back_exactly(x2, size, scale):
    h, w = size
    img = smooth_rgb(h, w, seed=h)
    small, _, rec = compress_image(encode(img), x2, CodecOptions(scale=scale))
    assert rec.status == "ok", rec.error_message
    assert (rec.out_width, rec.out_height) == (-(-w // scale), -(-h // scale))
    out = decode_output(rehydrate_image(small, None, x2))
    assert out.size == (w, h)


def test_recursive_scales_x2_up_to_128(x2):
    img = smooth_rgb(256, 256)
    quality = {}
    for scale in (2, 4, 8, 16, 32, 64, 128):
        small, _, rec = compress_image(encode(img), x2, CodecOptions(scale=scale, tile=4096))
        assert rec.status == "ok" and (rec.out_width, rec.out_height) == (256 // scale, 256 // scale)
        out = np.asarray(decode_output(rehydrate_image(small, None, x2)))
        assert out.shape == img.shape
        quality[scale] = psnr(out, img)
    # each extra x2 step loses information: PSNR falls with the scale (down to a 2x2 small image
    # at x128, where it flattens out: compare every other step)
    assert quality[2] > quality[4] > quality[8] > quality[16] > quality[64], quality
    assert quality[128] < quality[16], quality


def test_recursion_matches_models_recursive_helpers(x2):
    """The codec's x8 equals three applications of the x2 pair (models.networks helpers)."""
    import torch

    from models.networks import downscale_recursive, upscale_recursive

    img = smooth_rgb(64, 96)
    small, _, rec = compress_image(encode(img), x2, CodecOptions(scale=8))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    levels = downscale_recursive(x2, x, 3)
    ref_small = (levels[-1][0].permute(1, 2, 0) * 255).round().byte().numpy()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(small))), ref_small)
    ref = (upscale_recursive(x2, levels[-1], 3)[0].permute(1, 2, 0) * 255).round().byte().numpy()
    out = np.asarray(decode_output(rehydrate_image(small, rec, x2)))
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    assert np.mean(out != ref) < 1e-3


def test_x4_model_scales(x4):
    img = smooth_rgb(64, 64)
    for scale in (4, 16):
        small, _, rec = compress_image(encode(img), x4, CodecOptions(model_id="taid-x4", scale=scale))
        assert rec.status == "ok" and rec.out_width == 64 // scale
    with pytest.raises(ValueError, match="not reachable"):
        compress_image(encode(img), x4, CodecOptions(model_id="taid-x4", scale=8))
    with pytest.raises(ValueError, match="not reachable"):
        check_options(x4, CodecOptions(scale=2))
    check_options(x4, CodecOptions(scale=64))
    with pytest.raises(ValueError):
        CodecOptions(scale=3)
    with pytest.raises(ValueError):
        CodecOptions(scale=256)


@pytest.mark.parametrize("fmt,lossless", [("png", True), ("webp", True), ("webp-lossy", False), ("jpeg", False)])
def test_small_formats_and_embedded_metadata(x2, fmt, lossless):
    img = smooth_rgb(80, 120)
    ref_small, _, _ = compress_image(encode(img), x2, CodecOptions())
    small, _, rec = compress_image(encode(img), x2, CodecOptions(small_format=fmt, quality=85))
    assert rec.output_format == fmt
    im, meta, _, _, detected = read_small(small)
    assert detected == fmt
    assert meta["width"] == 120 and meta["height"] == 80 and meta["scale"] == 2
    assert meta["model_id"] == "taid-x2" and meta["model_sha256"] == x2.weights_sha256
    pixels_equal = np.array_equal(np.asarray(im.convert("RGB")), np.asarray(Image.open(io.BytesIO(ref_small))))
    assert pixels_equal == lossless
    # separated from its manifest: rehydrate from the embedded metadata alone
    out = decode_output(rehydrate_image(small, None, x2))
    assert out.size == (120, 80)
    assert psnr(np.asarray(out), img) > (30 if lossless else 25)


def test_lossy_small_file_quality_setting_changes_size(x2):
    data = encode(smooth_rgb(128, 128))
    sizes = [compress_image(data, x2, CodecOptions(small_format="jpeg", quality=q)).record.output_size for q in (30, 95)]
    assert sizes[0] < sizes[1]


def test_rehydrated_format_follows_source(x2):
    img = smooth_rgb(64, 64)
    small, _, rec = compress_image(encode(img, "JPEG", quality=95), x2, CodecOptions())
    assert rec.source_format == "JPEG" and rec.rehydrate_format == "jpeg" and rec.rehydrate_quality == 95
    out = decode_output(rehydrate_image(small, rec, x2))
    assert out.format == "JPEG"
    assert decode_output(rehydrate_image(small, rec, x2, restored_format="png")).format == "PNG"
    assert decode_output(rehydrate_image(small, rec, x2, restored_format="webp")).format == "WEBP"
    assert decode_output(rehydrate_image(small, rec, x2, restored_format="tiff")).format == "TIFF"
    lo = rehydrate_image(small, rec, x2, restored_format="jpeg", quality=20)
    hi = rehydrate_image(small, rec, x2, restored_format="jpeg", quality=95)
    assert len(lo) < len(hi)
    small, _, rec = compress_image(encode(img, "GIF"), x2, CodecOptions())
    assert rec.status == "ok" and decode_output(rehydrate_image(small, rec, x2)).format == "PNG"
    small, _, rec = compress_image(encode(img, "WEBP", quality=80), x2, CodecOptions())
    assert (rec.rehydrate_format, rec.rehydrate_quality) == ("webp-lossy", 95)
    small, _, rec = compress_image(encode(img, "WEBP", lossless=True), x2, CodecOptions())
    assert (rec.rehydrate_format, rec.rehydrate_quality) == ("webp", None)
    small, _, rec = compress_image(encode(img), x2, CodecOptions(rehydrate_format="webp"))
    assert decode_output(rehydrate_image(small, None, x2)).format == "WEBP"


def test_record_as_dict_and_json(x2):
    img = smooth_rgb(40, 40)
    small, _, rec = compress_image(encode(img), x2, CodecOptions())
    as_dict = json.loads(rec.model_dump_json())
    assert CompressRecord.model_validate(as_dict) == rec
    a = rehydrate_image(small, as_dict, x2)
    b = rehydrate_image(small, None, x2)
    assert np.array_equal(np.asarray(decode_output(a)), np.asarray(decode_output(b)))


def test_wrong_model_is_refused(x2, x4):
    small, _, rec = compress_image(encode(smooth_rgb(32, 32)), x2, CodecOptions())
    with pytest.raises(RehydrateError, match="refusing"):
        rehydrate_image(small, rec, x4)
    tampered = rec.model_dump() | {"model_sha256": "0" * 64}
    with pytest.raises(RehydrateError, match="refusing"):
        rehydrate_image(small, tampered, x2)


def test_not_a_taid_small_file(x2):
    plain = encode(smooth_rgb(32, 32))
    with pytest.raises(RehydrateError, match="not a TAID small file"):
        rehydrate_image(plain, None, x2)
    with pytest.raises(RehydrateError):
        rehydrate_image(b"garbage", None, x2)
    small, _, rec = compress_image(plain, x2, CodecOptions())
    with pytest.raises(RehydrateError, match="status"):
        rehydrate_image(small, rec.model_dump() | {"status": "failed_decode"}, x2)
    other, _, _ = compress_image(encode(smooth_rgb(32, 32, seed=5)), x2, CodecOptions())
    with pytest.raises(RehydrateError, match="sha256"):
        rehydrate_image(other, rec, x2)  # a small file paired with another file's manifest row


def test_verify_stores_roundtrip_psnr(x2):
    img = smooth_rgb(64, 64)
    small, _, rec = compress_image(encode(img), x2, CodecOptions(verify=True))
    out = np.asarray(decode_output(rehydrate_image(small, rec, x2)))
    assert rec.roundtrip_psnr == pytest.approx(psnr(out, img), abs=1e-9)


def test_cli_compress_and_rehydrate_file(tmp_path, capsys):
    from flows.cli import main

    img = smooth_rgb(50, 70)
    src = tmp_path / "in.jpg"
    src.write_bytes(encode(img, "JPEG", quality=95))
    small, back, rec = tmp_path / "s.webp", tmp_path / "back.jpg", tmp_path / "rec.json"
    assert main(["compress-file", str(src), str(small), "--scale", "4", "--small-format", "webp", "--record", str(rec)]) == 0
    record = json.loads(rec.read_text())
    assert record["status"] == "ok" and record["scale"] == 4 and record["output_format"] == "webp"
    assert Image.open(small).size == (18, 13)
    assert main(["rehydrate-file", str(small), str(back)]) == 0
    out = Image.open(back)
    assert out.format == "JPEG" and out.size == (70, 50)
    assert main(["rehydrate-file", str(small), str(tmp_path / "b.png"), "--record", str(rec), "--format", "png"]) == 0
    assert Image.open(tmp_path / "b.png").format == "PNG"
    # bad input: a status, an exit code, no output file, no traceback
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    assert main(["compress-file", str(bad), str(tmp_path / "never.png"), "--record", str(tmp_path / "bad.json")]) == 2
    assert not (tmp_path / "never.png").exists()
    assert json.loads((tmp_path / "bad.json").read_text())["status"] == "skipped_empty"
    assert main(["rehydrate-file", str(src), str(tmp_path / "x.png")]) == 2
    assert main(["compress-file", str(src), str(tmp_path / "y.png"), "--model", "taid-x4", "--scale", "8"]) == 2
    assert "cannot rehydrate" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".taid-")]  # no temp files left behind


def test_rehydrate_from_a_bare_manifest_row(x2):
    """A manifest row holding only DESIGN.md's fields (numpy scalars, NaN for nulls) still works:
    the policy flags come from the small file's embedded metadata."""
    rgba = np.dstack([smooth_rgb(40, 48), np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1))])
    small, _, rec = compress_image(encode(Image.fromarray(rgba, "RGBA")), x2, CodecOptions())
    design_fields = (
        "source_size source_sha256 source_format source_mode bit_depth n_frames exif_orientation icc_present "
        "width height status error_message output_format output_size output_sha256 out_width out_height "
        "scale model_id model_sha256 roundtrip_psnr"
    ).split()
    row = {k: getattr(rec, k) for k in design_fields}
    row |= {"width": np.int64(48), "height": np.int64(40), "scale": np.int32(2), "roundtrip_psnr": float("nan")}
    row |= {"has_alpha": float("nan"), "is_gray": None}  # nulls from a wider schema
    out = decode_output(rehydrate_image(small, row, x2))
    assert out.mode == "RGBA" and out.size == (48, 40)
    assert np.array_equal(np.asarray(out), np.asarray(decode_output(rehydrate_image(small, rec, x2))))


def test_jpeg_output_of_alpha_image_is_refused(x2):
    rgba = np.dstack([smooth_rgb(16, 16), np.full((16, 16), 128, np.uint8)])
    small, _, rec = compress_image(encode(Image.fromarray(rgba, "RGBA")), x2, CodecOptions())
    with pytest.raises(RehydrateError, match="alpha"):
        rehydrate_image(small, rec, x2, restored_format="jpeg")
    with pytest.raises(RehydrateError, match="unknown output format"):
        rehydrate_image(small, rec, x2, restored_format="bmp")
