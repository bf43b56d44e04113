"""One request type, one entry, one result (pipeline.codec.request): `encode` gives an Encoded for a
fixed small file and for a fidelity target alike; a fixed request never has a layer; a fidelity
together with a fixed format, quality or scale is refused, as the CLI and the job parameters refuse it."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from models.zoo import load_pair
from pipeline.codec import Encoded, Request, encode
from pipeline.codec.options import CodecOptions
from pipeline.codec.presets import PRESETS
from pipeline.codec.small_file import read_small

DATA = Path(__file__).resolve().parents[1] / "data"


def jpeg(name: str = "Set14/zebra.png", crop: int = 128) -> bytes:
    im = Image.open(DATA / name).convert("RGB").crop((0, 0, crop, crop))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pairs():
    return {m: load_pair(m) for m in ("taid-x2", "taid-x4", "taid-x4-webp")}


def test_fixed_request_gives_an_encoded_without_a_layer(pairs):
    request = Request.of(model_id="taid-x4", small_format="png")
    assert request.fidelity is None and request.models == ["taid-x4"]
    out = encode(jpeg(), request, pairs)
    assert isinstance(out, Encoded)
    assert out.layer is None and out.record.status == "ok", out.record.error_message
    assert out.small[:8] == b"\x89PNG\r\n\x1a\n" and out.record.output_sha256 == hashlib.sha256(out.small).hexdigest()
    # no scale asked: the model's own (x4), in the record and in the small file's size
    assert out.record.model_id == "taid-x4" and out.record.scale == 4 and (out.record.out_width, out.record.out_height) == (32, 32)
    assert out.record.fidelity is None and out.record.enhancement_sha256 is None
    assert request.columns() == {"fidelity": None, "target_psnr": None, "target_score": None}


def test_fixed_request_never_has_a_layer_even_verified_or_on_bad_input(pairs):
    request = Request.of(model_id="taid-x2", verify=True)
    out = encode(jpeg(), request, pairs)
    assert out.layer is None and out.record.roundtrip_psnr is not None and out.record.scale == 2
    bad = encode(b"not an image", request, pairs)
    assert bad == Encoded(None, None, bad.record) and bad.record.status.startswith("skipped_")


def test_fidelity_request_gives_small_layer_and_record(pairs):
    request = Request.of(fidelity="standard")
    assert request.models == ["taid-x4-webp"]
    assert request.columns() == {"fidelity": "standard", "target_psnr": None, "target_score": 80.0}
    small, layer, record = out = encode(jpeg(crop=192), request, pairs)
    assert isinstance(out, Encoded) and out.small is small and out.record is record
    assert record.status == "ok", record.error_message
    assert record.fidelity == "standard" and record.target_score == 80.0 and record.score_worst >= 80.0
    # a layer, bound to its small file by sha256 (in the record and in the file's own metadata)
    assert layer is not None and record.enhancement_sha256 == hashlib.sha256(layer).hexdigest()
    assert read_small(small)[1]["enhancement_sha256"] == record.enhancement_sha256


def test_explicit_target_is_labelled_target():
    request = Request.of(target_psnr=38)
    assert request.columns() == {"fidelity": "target", "target_psnr": 38.0, "target_score": None}
    assert Request.of().fidelity.name == "standard"  # nothing named: the default fidelity


@pytest.mark.parametrize("fixed", [{"small_format": "png"}, {"quality": 50}, {"scale": 4}])
def test_fidelity_with_a_fixed_choice_is_refused(fixed):
    with pytest.raises(ValueError, match="picks the small file's format, quality and scale"):
        Request.of(fidelity="high", **fixed)
    with pytest.raises(ValidationError, match="picks the small file's format, quality and scale"):
        Request(options=CodecOptions(**fixed), fidelity=PRESETS["high"])


def test_other_request_errors():
    with pytest.raises(ValueError, match="not a fidelity preset and --target-psnr"):
        Request.of(fidelity="high", target_psnr=40)
    with pytest.raises(ValueError, match="unknown fidelity"):
        Request.of(fidelity="ultra")
    with pytest.raises(ValueError, match="above what any lossy layer"):
        Request.of(target_psnr=70)
    with pytest.raises(ValidationError):
        Request.of(model_id="taid-x2", small_format="gif")
    with pytest.raises(ValidationError):  # frozen: built once, handed down unchanged
        Request.of(model_id="taid-x2").fidelity = PRESETS["high"]


def test_encode_refuses_missing_pairs(pairs):
    with pytest.raises(ValueError, match="taid-x2-webp"):
        encode(jpeg(), Request.of(fidelity="preview"), {"taid-x4-webp": pairs["taid-x4-webp"]})


def test_package_face_is_cheap_to_import():
    """`import pipeline.codec` and its light modules load no torch; the heavy names come when used."""
    code = ("import sys, pipeline.codec as c; from pipeline.codec import Request, CodecOptions, formats, presets; "
            "Request.of(fidelity='high'); assert 'torch' not in sys.modules, 'torch imported'; "
            "assert set(c.__all__) <= set(dir(c))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_every_public_name_resolves():
    import pipeline.codec as c
    from pipeline.codec import image, request

    assert all(getattr(c, name) is not None for name in c.__all__)
    assert c.encode is request.encode and c.compress_image is image.compress_image
    with pytest.raises(AttributeError):
        c.no_such_name
