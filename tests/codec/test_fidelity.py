"""Fidelity you choose (pipeline.codec.fidelity, pipeline.codec.layer): every `ok` image rehydrates at or
above its target, measured here independently on what rehydration writes; the enhancement layer
is bound to its small file, skippable for a preview, refused when modified or missing.

Photos: Set14/Set5 images re-encoded as JPEG q90 (what cameras write); targets are checked
against the decoded JPEG, as a user would."""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import pytest
from PIL import Image

from models.metrics import psnr_y
from models.zoo import load_pair
from pipeline.codec import image as codec, layer as enhancement
from flows.cli import main
from pipeline.codec.fidelity import PRESETS, compress_to_target, resolve_fidelity

from tests import DATA


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def jpeg(name: str, quality: int = 90, crop: int | None = 256, mode: str = "RGB") -> bytes:
    im = Image.open(DATA / name).convert(mode)
    if crop:
        im = im.crop((0, 0, min(crop, im.width), min(crop, im.height)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decoded_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def pairs():
    return {m: load_pair(m) for m in ("taid-x2-webp", "taid-x4-webp")}


def rehydrated(small: bytes, layer: bytes | None, pairs: dict, **kw) -> np.ndarray:
    meta = codec.small_file.read_small(small)[1]
    return decoded_rgb(codec.rehydrate_image(small, None, pairs[meta["model_id"]], layer=layer, **kw))


@pytest.mark.parametrize("target", [36.0, 40.0])
def test_explicit_target_is_met_on_what_rehydration_writes(pairs, target):
    data = jpeg("Set14/zebra.png")
    small, layer, rec = compress_to_target(data, pairs, resolve_fidelity(target_psnr=target))
    assert rec.status == "ok", rec.error_message
    src = decoded_rgb(data)
    out = rehydrated(small, layer, pairs)
    # both conventions: the whole image, and `scale` pixels shaved
    assert psnr_y(out, src) >= target and psnr_y(out, src, shave=rec.scale) >= target
    assert abs(min(psnr_y(out, src), psnr_y(out, src, shave=rec.scale)) - rec.psnr_y) < 1e-6
    assert rec.target_psnr == target and rec.fidelity == "target"
    assert layer is not None and rec.enhancement_size == len(layer)
    assert rec.enhancement_sha256 == _sha256(layer)
    assert codec.small_file.read_small(small)[1]["enhancement_sha256"] == rec.enhancement_sha256
    assert rec.thumbnail_psnr >= 32
    assert rec.output_size + len(layer) < len(data)  # smaller than the JPEG it came from


def test_higher_target_costs_more_and_preview_skips_the_layer(pairs):
    data = jpeg("Set14/lenna.png")
    low = compress_to_target(data, pairs, resolve_fidelity("standard"))
    high = compress_to_target(data, pairs, resolve_fidelity("high"))
    size = [len(s) + len(layer or b"") for s, layer, _ in (low, high)]
    assert size[0] < size[1]
    small, layer, rec = high
    src = decoded_rgb(data)
    preview = rehydrated(small, None, pairs, preview=True)  # no layer needed at all
    assert psnr_y(preview, src) < rec.psnr_y - 3
    full = rehydrated(small, layer, pairs)
    assert psnr_y(full, src) >= 40


def test_preview_preset_uses_the_small_file_alone_where_it_can(pairs):
    yy, xx = np.mgrid[0:96, 0:128].astype(np.float64)
    smooth = np.clip(np.stack([128 + 60 * np.sin(xx / 23 + c) * np.cos(yy / 31) for c in range(3)], axis=2), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(smooth.astype(np.uint8)).save(buf, "PNG")
    small, layer, rec = compress_to_target(buf.getvalue(), pairs, PRESETS["preview"])
    assert rec.status == "ok" and layer is None and rec.enhancement_sha256 is None
    assert rec.psnr_y >= 30
    # the cheapest base wins: restricted to the x2 pair, the small file alone is no smaller
    x2_only = resolve_fidelity(target_psnr=30, model_id="taid-x2-webp")
    assert len(compress_to_target(buf.getvalue(), pairs, x2_only)[0]) >= len(small)
    assert psnr_y(rehydrated(small, None, pairs), decoded_rgb(buf.getvalue())) >= 30


def test_lossless_preset_is_exact_for_grey_and_colour(pairs):
    """JPEG sources keep their own bytes (JPEG XL recompression), others their pixels (WebP lossless)."""
    for data, kind in ((jpeg("Set5/bird.png"), "jxl-jpeg"), (jpeg("Set14/bridge.png", mode="L"), "jxl-jpeg"),
                       ((DATA / "Set5/bird.png").read_bytes(), "webp-lossless-full")):
        small, layer, rec = compress_to_target(data, pairs, PRESETS["lossless"])
        assert rec.status == "ok" and rec.psnr_y == math.inf and rec.enhancement_format == kind
        src = np.asarray(Image.open(io.BytesIO(data)))
        meta = codec.small_file.read_small(small)[1]
        out = np.asarray(codec.decode_output(codec.rehydrate_image(small, None, pairs[meta["model_id"]], layer=layer)))
        assert out.shape == src.shape and np.array_equal(out, src)


def test_alpha_image_meets_the_target_on_colour(pairs):
    rgb = np.asarray(Image.open(DATA / "Set5/butterfly.png").convert("RGB"))[:128, :128]
    alpha = np.tile(np.linspace(40, 255, 128).astype(np.uint8), (128, 1))
    buf = io.BytesIO()
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(buf, "PNG")
    small, layer, rec = compress_to_target(buf.getvalue(), pairs, resolve_fidelity(target_psnr=38))
    assert rec.status == "ok" and rec.has_alpha
    meta = codec.small_file.read_small(small)[1]
    out = codec.decode_output(codec.rehydrate_image(small, None, pairs[meta["model_id"]], layer=layer))
    assert out.mode == "RGBA" and out.size == (128, 128)
    assert psnr_y(np.asarray(out.convert("RGB")), codec.reference_rgb(codec.image_io.decode_image(buf.getvalue(), 10**8))) >= 38


def test_layer_is_bound_to_its_small_file(pairs):
    data = jpeg("Set5/baby.png")
    small, layer, rec = compress_to_target(data, pairs, resolve_fidelity("high"))
    pair = pairs[rec.model_id]
    with pytest.raises(codec.RehydrateError, match="needs its enhancement layer"):
        codec.rehydrate_image(small, None, pair)
    tampered = bytearray(layer)
    tampered[-10] ^= 0xFF
    with pytest.raises(codec.RehydrateError, match="sha256 differs"):
        codec.rehydrate_image(small, None, pair, layer=bytes(tampered))
    other_small, other_layer, _ = compress_to_target(jpeg("Set5/head.png"), pairs, resolve_fidelity("high"))
    with pytest.raises(codec.RehydrateError, match="sha256 differs"):
        codec.rehydrate_image(small, None, pair, layer=other_layer)
    # a row naming another layer than the file's own metadata is refused, not trusted
    row = rec.model_dump() | {"enhancement_sha256": _sha256(other_layer)}
    with pytest.raises(codec.RehydrateError, match="refusing"):
        codec.rehydrate_image(small, row, pair, layer=other_layer)


def test_layer_codecs_round_trip():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    pred = np.clip(src.astype(int) + rng.integers(-40, 40, src.shape), 0, 255).astype(np.uint8)
    exact = enhancement.encode_layer(src, pred, "webp-lossless")
    assert np.array_equal(enhancement.apply_layer(pred, exact), src)
    grey = enhancement.encode_layer(src[..., 0], pred[..., 0], "webp-lossless")
    assert np.array_equal(enhancement.apply_layer(pred[..., 0], grey), src[..., 0])
    for kind in ("avif", "avif-full"):
        near = enhancement.apply_layer(pred, enhancement.encode_layer(src, pred, kind, 60))
        assert psnr_y(near, src) > psnr_y(pred, src) + 5
    with pytest.raises(enhancement.LayerError):
        enhancement.apply_layer(pred, b"not a layer at all")
    with pytest.raises(enhancement.LayerError):
        enhancement.apply_layer(pred[:20], exact)


def test_resolving_fidelity():
    assert resolve_fidelity().name == "standard" and resolve_fidelity().target_score == 80
    assert resolve_fidelity(target_psnr=29).bases == PRESETS["preview"].bases
    assert resolve_fidelity("high", model_id="taid-x2-webp").models == ["taid-x2-webp"]
    with pytest.raises(ValueError, match="unknown fidelity"):
        resolve_fidelity("ultra")
    with pytest.raises(ValueError, match="not a fidelity preset and --target-psnr"):
        resolve_fidelity("high", target_psnr=40)


def test_cli_writes_and_finds_the_layer(tmp_path, capsys):
    src = tmp_path / "photo.jpg"
    src.write_bytes(jpeg("Set14/monarch.png", crop=192))
    small, restored = tmp_path / "photo.webp", tmp_path / "restored.png"
    assert main(["compress-file", str(src), str(small), "--target-psnr", "38"]) == 0
    assert (tmp_path / "photo.webp.enh").exists()
    assert "Y-PSNR" in capsys.readouterr().out
    assert main(["rehydrate-file", str(small), str(restored)]) == 0
    out = np.asarray(Image.open(restored).convert("RGB"))
    assert Image.open(restored).format == "PNG"  # the name asks for PNG
    assert psnr_y(out, decoded_rgb(src.read_bytes())) >= 38
    assert main(["rehydrate-file", str(small), str(tmp_path / "preview.png"), "--preview"]) == 0
    (tmp_path / "photo.webp.enh").unlink()
    assert main(["rehydrate-file", str(small), str(tmp_path / "never.png")]) == 2
    assert "enhancement layer" in capsys.readouterr().err and not (tmp_path / "never.png").exists()
    # a fidelity picks quality and scale itself: asking for both is a clear error
    assert main(["compress-file", str(src), str(tmp_path / "x.webp"), "--fidelity", "high", "--quality", "80"]) == 2
    # --model X implies X's scale (a fixed single layer: no target given)
    assert main(["compress-file", str(src), str(tmp_path / "x4.webp"), "--model", "taid-x4-webp"]) == 0
    assert codec.small_file.read_small((tmp_path / "x4.webp").read_bytes())[1]["scale"] == 4


def test_large_image_searched_on_a_sample_still_meets_the_target(pairs):
    """Above SAMPLE_ABOVE_PIXELS the layer's quality is estimated on a mosaic of tiles, then
    settled at full size: the guarantee is the same, checked here on the whole image."""
    from pipeline.codec import fidelity

    tiles = [np.asarray(Image.open(DATA / "Set14" / f"{n}.png").convert("RGB"))[:256, :256]
             for n in ("zebra", "lenna", "baboon", "pepper", "monarch", "flowers", "face", "man")]
    row = np.concatenate(tiles + tiles[:2], axis=1)  # 2560 px wide
    big = np.concatenate([row, row[:, ::-1], row[::-1]], axis=0)  # 2560 x 768 = 1.97 MP
    assert big.shape[0] * big.shape[1] > fidelity.SAMPLE_ABOVE_PIXELS
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=90)
    small, layer, rec = compress_to_target(buf.getvalue(), pairs, resolve_fidelity(target_psnr=37))
    assert rec.status == "ok" and layer is not None
    out = rehydrated(small, layer, pairs)
    src = decoded_rgb(buf.getvalue())
    assert psnr_y(out, src) >= 37 and psnr_y(out, src, shave=rec.scale) >= 37


def test_settle_moves_from_the_estimate_to_the_lowest_passing_quality():
    from pipeline.codec.fidelity import _settle

    calls = []

    def measure(q):  # fidelity rises one dB per quality step; the target needs q >= 70
        calls.append(q)
        return f"layer{q}".encode(), 30 + (q - 60)

    assert _settle(measure, 40, 55) == (b"layer70", 70)  # up from a low estimate
    calls.clear()
    assert _settle(measure, 40, 71) == (b"layer70", 70) and len(calls) <= 3  # one step down from a high one
    assert _settle(lambda q: (b"x", 0.0), 40, 90) is None  # nothing reaches it
