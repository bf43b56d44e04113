"""Issue 21, an archive that pays for itself: effort, previews sized as previews, byte-exact
originals, rehydration without TAU for prediction-free layers, per-stage CPU seconds. Shipped
weights, real codecs (libaom, libjxl)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from models.zoo import load_pair
from pipeline.codec import image as codec, layer as enhancement, fidelity, tiling
from pipeline.codec.fidelity import compress_to_target, resolve_fidelity

from tests import DATA


@pytest.fixture(scope="module")
def pairs():
    return {m: load_pair(m) for m in ("taid-x2-webp", "taid-x4-webp")}


def _photo(width: int, height: int, quality: int = 90) -> bytes:
    """A JPEG mosaic of real photos (Set14), mirrored to fill `width` x `height`."""
    tiles = [np.asarray(Image.open(DATA / "Set14" / f"{n}.png").convert("RGB"))[:256, :256]
             for n in ("zebra", "lenna", "baboon", "pepper", "monarch", "flowers", "face", "man")]
    row = np.concatenate(tiles * (width // (256 * 8) + 1), axis=1)[:, :width]
    rows = [row if i % 2 == 0 else row[:, ::-1] for i in range(height // 256 + 1)]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.concatenate(rows, axis=0)[:height])).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _restored(small: bytes, layer: bytes | None, rec, pairs) -> np.ndarray:
    out = codec.rehydrate_image(small, rec, pairs[rec.model_id], restored_format="png", layer=layer)
    return np.asarray(codec.decode_output(out).convert("RGB"))


def test_avif_levels_are_monotonic_and_fine():
    """One level is one libaom quantizer step: fidelity rises with the level, in steps well under 1 dB
    (Pillow's integer quality jumped 1.9 dB on one photo)."""
    src = np.asarray(Image.open(DATA / "Set14" / "lenna.png").convert("RGB"))
    ref = fidelity.Reference(src)
    measure = fidelity._measurer("avif-full", src, None, ref, 4, 8, False)
    values = [measure(level)[1] for level in (30, 31, 32, 33, 34)]
    steps = np.diff(values)
    assert (steps > 0).all() and steps.max() < 1.0, values


def test_default_effort_runs_no_tau_and_meets_the_target(pairs, monkeypatch):
    """Where the layer is the image itself, neither compression nor rehydration runs TAU on the colour:
    at a Y-PSNR target (AVIF bands by level) and at a score target (the default preset)."""
    data = _photo(1792, 1024)  # 1.8 MP: the sampled search
    calls = []
    real = tiling.upscale_array
    monkeypatch.setattr(tiling, "upscale_array", lambda *a, **k: calls.append(1) or real(*a, **k))
    scored = compress_to_target(data, pairs, resolve_fidelity("standard"))[2]
    assert scored.status == "ok" and scored.enhancement_format in ("jxl-bands", "avif-bands") and calls == []
    assert scored.cpu_tau_s == 0 and scored.score_worst >= 80
    assert max(scored.out_width, scored.out_height) <= fidelity.PREVIEW_LONG_SIDE  # the small file is only the preview
    small, layer, rec = compress_to_target(data, pairs, resolve_fidelity(target_psnr=36))
    assert rec.status == "ok" and rec.enhancement_format == "avif-bands" and calls == []
    assert rec.psnr_y >= 36 and rec.cpu_tau_s == 0 and rec.cpu_encode_s > 0 and rec.cpu_search_s > 0
    # bands at two adjacent levels: a quantizer finer than libaom's own step (about 0.5 dB)
    assert rec.psnr_y - 36 < 0.25
    out = _restored(small, layer, rec, pairs)
    assert calls == []  # rehydration: the layer alone
    ref = codec.reference_rgb(__import__("pipeline.codec.image_io", fromlist=["x"]).decode_image(data, 10**8))
    assert fidelity.fidelity_psnr(out, ref, rec.scale) >= 36
    # the small file is only the preview: sized as one (TAD of a box-reduced copy), still a faithful thumbnail
    assert max(rec.out_width, rec.out_height) <= fidelity.PREVIEW_LONG_SIDE and rec.scale == 4
    assert rec.thumbnail_psnr >= 32
    capped = compress_to_target(data, pairs, resolve_fidelity(target_psnr=36, preview_long_side=200))[2]
    assert capped.scale == 16 and max(capped.out_width, capped.out_height) <= 200 and capped.thumbnail_psnr >= 32


def test_best_effort_is_no_larger_than_fast(pairs):
    data = _photo(768, 512)
    sizes = {}
    for effort in ("fast", "best"):
        small, layer, rec = compress_to_target(data, pairs, resolve_fidelity("high", effort=effort))
        assert rec.status == "ok" and rec.psnr_y >= 40
        sizes[effort] = len(small) + len(layer or b"")
    assert sizes["best"] <= sizes["fast"]
    with pytest.raises(ValueError, match="effort"):
        resolve_fidelity("standard", effort="max")


def test_original_gives_a_jpeg_back_byte_for_byte(pairs):
    data = _photo(640, 512, quality=92)
    small, layer, rec = compress_to_target(data, pairs, resolve_fidelity("original"))
    assert rec.status == "ok" and rec.enhancement_format == "jxl-jpeg"
    assert len(small) + len(layer) < 0.9 * len(data)  # JPEG XL recompression, thumbnail included
    assert Image.open(io.BytesIO(small)).size == (rec.out_width, rec.out_height)  # the TAD thumbnail
    back = codec.rehydrate_image(small, rec, pairs[rec.model_id], layer=layer)  # the default: the original
    assert hashlib.sha256(back).hexdigest() == rec.source_sha256 == hashlib.sha256(data).hexdigest()
    # a row whose source_sha256 disagrees is refused, not trusted
    with pytest.raises(codec.RehydrateError, match="source_sha256"):
        codec.rehydrate_image(small, {**rec.model_dump(), "source_sha256": "0" * 64}, pairs[rec.model_id], layer=layer)
    # pixels on request are exact too
    pixels = _restored(small, layer, rec, pairs)
    assert np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_original_falls_back_to_exact_pixels_and_says_why(pairs):
    buf = io.BytesIO()
    Image.open(DATA / "Set5" / "bird.png").convert("CMYK").save(buf, "JPEG", quality=90)  # libjxl: no CMYK
    small, layer, rec = compress_to_target(buf.getvalue(), pairs, resolve_fidelity("original"))
    assert rec.status == "ok" and rec.enhancement_format == "webp-lossless-full"
    assert "exact pixels instead of the original JPEG" in rec.notes
    png = (DATA / "Set5" / "bird.png").read_bytes()
    small, layer, rec = compress_to_target(png, pairs, resolve_fidelity("original"))  # any other source: its own bytes
    assert rec.enhancement_format == "source" and "source file itself" in rec.notes
    assert len(small) + len(layer) <= 1.02 * len(png)
    out = codec.rehydrate_image(small, rec, pairs[rec.model_id], layer=layer)  # "original" -> the file itself
    assert out == png
    pixels = codec.rehydrate_image(small, rec, pairs[rec.model_id], layer=layer, restored_format="png")
    assert np.array_equal(np.asarray(codec.decode_output(pixels).convert("RGB")),
                          np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))


def test_jpeg_layer_refuses_what_libjxl_cannot_give_back():
    with pytest.raises(ValueError, match="JPEG XL"):
        enhancement.encode_jpeg_layer(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_avif_bands_layer_round_trips_and_refuses_damage():
    src = np.asarray(Image.open(DATA / "Set14" / "lenna.png").convert("RGB"))[:320, :256]
    bands = [(128, enhancement.encode_avif(src[:128], 40)), (192, enhancement.encode_avif(src[128:], 20))]
    layer = enhancement.pack_bands(bands)
    out = enhancement.apply_layer(enhancement.no_prediction(src.shape), layer)
    assert out.shape == src.shape
    top, bottom = (fidelity.psnr(out[a:b], src[a:b]) for a, b in ((0, 128), (128, 320)))
    assert top > bottom  # each band at its own level
    for bad in (layer[:-10], layer + b"x", layer[:6] + bytes([200]) + layer[7:]):
        with pytest.raises(enhancement.LayerError):
            enhancement.apply_layer(enhancement.no_prediction(src.shape), bad)
    with pytest.raises(enhancement.LayerError, match="is \\("):
        enhancement.apply_layer(np.zeros((300, 256, 3), np.uint8), layer)


def test_cli_archive_at_original_with_effort_and_prices(tmp_path, ray_local, monkeypatch, capsys):
    """`taid compress-archive --fidelity original --effort fast --prices FILE` then `taid rehydrate KEY`:
    the JPEG and the PNG come back byte for byte (the PNG as its own bytes); the summary carries the cost."""
    from flows.cli import main
    from pipeline.manifest.parts import read_manifest
    from pipeline.storage.fs import filesystem

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    src, dest = tmp_path / "src", tmp_path / "archive"
    (src / "photos").mkdir(parents=True)
    jpeg = _photo(512, 384)
    (src / "photos" / "a.jpg").write_bytes(jpeg)
    (src / "photos" / "b.png").write_bytes((DATA / "Set5" / "bird.png").read_bytes())
    prices = tmp_path / "prices.toml"
    prices.write_text("vcpu_hour = 0.5\n")
    assert main(["compress-archive", str(src), str(dest), "--fidelity", "original", "--effort", "fast",
                 "--prices", str(prices), "--no-prefect"]) == 0
    rows = {r["source_key"]: r for r in read_manifest(*filesystem(str(dest), {})).to_pylist()}
    assert {k: r["enhancement_format"] for k, r in rows.items()} == {"photos/a.jpg": "jxl-jpeg",
                                                                    "photos/b.png": "source"}
    assert all(r["fidelity"] == "original" and r["cpu_decode_s"] is not None for r in rows.values())
    out = tmp_path / "a.jpg"
    assert main(["rehydrate", str(dest), "photos/a.jpg", "-o", str(out)]) == 0
    assert out.read_bytes() == jpeg
    png = tmp_path / "b.png"
    assert main(["rehydrate", str(dest), "photos/b.png", "-o", str(png)]) == 0
    assert png.read_bytes() == (DATA / "Set5" / "bird.png").read_bytes()
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")),
                          np.asarray(Image.open(DATA / "Set5" / "bird.png").convert("RGB")))
