"""Codec-aware pairs (trained with a lossy channel between the two networks), in process: the
model's `channel` block (zoo entry or checkpoint train_config), its small format and quality as
defaults, overrides, what the record says, and rehydration through `pipeline.archive.access`.

The pair here is the shipped taid-x2 weights re-labelled as a codec-aware model in a temporary
zoo: what is under test is the plumbing, not the weights (tests/jobs/test_codec_aware_archive.py runs
the real taid-x2-webp through Ray and Prefect)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import models.zoo as zoo
from models.zoo import channel_block, load_pair, sha256_file
from pipeline.codec.options import CodecOptions, RehydrateError
from pipeline.codec.image import compress_image, decode_output, rehydrate_image
from pipeline.codec.small_file import SUFFIX, is_lossless_webp

MODEL = "taid-x2-lossytest"
BLOCK = {"small_format": "webp-lossy", "quality": 75, "quality_band": [30, 90], "gradient": "ste"}


@pytest.fixture(scope="module")
def codec_zoo(tmp_path_factory):
    """A zoo with the real entries plus MODEL (taid-x2's weights, model_id and train_config
    saying, with the keys and spelling of before issue 22, codec webp over [40, 80]); yields the
    MODEL weights path."""
    folder = tmp_path_factory.mktemp("zoo")
    table = zoo.zoo_table()
    for entry in table.values():
        shutil.copy(zoo.WEIGHTS_DIR / entry["file"], folder / entry["file"])
    blob = torch.load(zoo.WEIGHTS_DIR / table["taid-x2"]["file"], weights_only=True)
    blob["model_id"] = MODEL
    blob["train_config"] = {**blob.get("train_config", {}), "codec": "webp", "codec_quality": (40, 80),
                            "codec_gradient": "ste"}
    tmp = folder / "blob.tmp"
    torch.save(blob, tmp)
    sha = sha256_file(tmp)
    weights = tmp.rename(folder / f"{MODEL}-{sha[:8]}.pt")
    table[MODEL] = {**table["taid-x2"], "file": weights.name, "sha256": sha, "channel": BLOCK}
    (folder / "zoo.json").write_text(json.dumps(table))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zoo, "ZOO_FILE", folder / "zoo.json")
        mp.setattr(zoo, "WEIGHTS_DIR", folder)
        yield weights


@pytest.fixture(scope="module")
def lossy(codec_zoo):
    return load_pair(MODEL)


@pytest.fixture(scope="module")
def x2(codec_zoo):
    return load_pair("taid-x2")


def photo(h: int = 64, w: int = 96, fmt: str = "JPEG") -> bytes:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 90 * np.sin(xx / 11 + c) * np.cos(yy / 7 - c) for c in range(3)], axis=2)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def test_channel_block():
    assert channel_block(None) is None and channel_block("") is None
    want = {"small_format": "webp-lossy", "quality": 60, "quality_band": [30, 90], "gradient": "ste"}
    assert channel_block("webp-lossy", [30, 90]) == want
    assert channel_block("webp", [30, 90]) == want  # the old spelling, as stored before issue 22
    assert channel_block("jpeg", (20, 50), "proxy") == {"small_format": "jpeg", "quality": 35,
                                                        "quality_band": [20, 50], "gradient": "proxy"}
    assert channel_block("jpeg", (20, 50), quality=45)["quality"] == 45
    assert channel_block("jpeg")["quality_band"] == list(zoo.DEFAULT_QUALITY_BAND)
    with pytest.raises(ValueError, match="avif"):
        channel_block("avif")


def test_load_pair_sets_channel(codec_zoo, lossy, x2):
    assert x2.channel is None  # lossless zoo entries have no channel block
    assert lossy.channel == BLOCK and lossy.model_id == MODEL  # the zoo entry's block wins
    by_file = load_pair(str(codec_zoo))  # not a zoo id: derived from the checkpoint's (old-style) train_config
    assert by_file.channel == {"small_format": "webp-lossy", "quality": 60, "quality_band": [40, 80], "gradient": "ste"}


def test_model_defaults_are_used_and_recorded(lossy):
    data = photo()
    small, _, rec = compress_image(data, lossy, CodecOptions(model_id=MODEL))
    assert rec.status == "ok", rec.error_message
    assert (rec.output_format, rec.small_quality) == ("webp-lossy", 75)
    assert not is_lossless_webp(small) and rec.model_id == MODEL
    lower = compress_image(data, lossy, CodecOptions(quality=40)).record
    assert (lower.output_format, lower.small_quality) == ("webp-lossy", 40) and lower.output_size < rec.output_size


def test_explicit_overrides(lossy, x2):
    data = photo()
    png = compress_image(data, lossy, CodecOptions(small_format="png")).record
    assert (png.output_format, png.small_quality) == ("png", None)
    # another lossy format than the model's: the model's quality belongs to its own codec
    jpeg = compress_image(data, lossy, CodecOptions(small_format="jpeg")).record
    assert (jpeg.output_format, jpeg.small_quality) == ("jpeg", 90)
    assert compress_image(data, lossy, CodecOptions(small_format="jpeg", quality=55)).record.small_quality == 55
    # a lossless pair keeps its lossless default; asked for a lossy file it records the quality
    plain = compress_image(data, x2, CodecOptions()).record
    assert (plain.output_format, plain.small_quality) == ("png", None)
    assert compress_image(data, x2, CodecOptions(small_format="webp-lossy")).record.small_quality == 90


def test_alpha_falls_back_to_webp_at_the_model_quality(codec_zoo):
    """A jpeg codec-aware pair cannot put alpha into JPEG: lossy WebP at the same quality, recorded."""
    pair = load_pair(MODEL)
    pair.channel = {**BLOCK, "small_format": "jpeg", "quality": 70}
    rgba = np.dstack([np.asarray(Image.open(io.BytesIO(photo(fmt="PNG")))), np.tile(np.arange(96, dtype=np.uint8), (64, 1))])
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    _, _, rec = compress_image(buf.getvalue(), pair, CodecOptions())
    assert (rec.output_format, rec.small_quality) == ("webp-lossy", 70) and "alpha" in rec.notes


def test_cli_compress_file_uses_the_model_default(codec_zoo, tmp_path):
    from flows.cli import main

    src, out, rec = tmp_path / "in.jpg", tmp_path / "small.webp", tmp_path / "rec.json"
    src.write_bytes(photo())
    assert main(["compress-file", str(src), str(out), "--model", str(codec_zoo), "--record", str(rec)]) == 0
    record = json.loads(rec.read_text())
    assert (record["output_format"], record["small_quality"]) == ("webp-lossy", 60)  # train_config's band middle
    assert main(["rehydrate-file", str(out), str(tmp_path / "back.jpg"), "--model", str(codec_zoo)]) == 0
    assert Image.open(tmp_path / "back.jpg").size == (96, 64)


def write_archive(root, key: str, small: bytes, rec, schema=None) -> None:
    """What a compress-archive actor writes for one object: the small file, then its manifest row."""
    from datetime import datetime, timezone

    from pipeline.manifest.parts import ManifestWriter
    from pipeline.storage.fs import filesystem

    path = root / (key + SUFFIX[rec.output_format])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(small)
    fs, dest = filesystem(str(root))
    writer = ManifestWriter(fs, dest, "r1", **({"schema": schema} if schema is not None else {}))
    writer.add({**rec.model_dump(), "run_id": "r1", "source_key": key, "output_uri": str(path), "attempts": 1,
                "processed_at": datetime.now(timezone.utc)})
    writer.close()


def test_rehydrate_lossy_archive_and_refuse_another_model(lossy, x2, tmp_path):
    from pipeline.manifest.parts import read_manifest
    from pipeline.archive.access import RehydrateRefused, find_row, rehydrate, rehydrate_row
    from pipeline.storage.fs import filesystem

    data = photo()
    small, _, rec = compress_image(data, lossy, CodecOptions(model_id=MODEL))
    write_archive(tmp_path, "2024/a.jpg", small, rec)
    table = read_manifest(*filesystem(str(tmp_path)))
    assert table.column("small_quality").to_pylist() == [75] and table.column("output_format").to_pylist() == ["webp-lossy"]

    out = decode_output(rehydrate("2024/a.jpg", str(tmp_path)))
    assert out.format == "JPEG" and out.size == (96, 64)
    assert np.array_equal(np.asarray(out), np.asarray(decode_output(rehydrate_image(small, rec, lossy))))

    with pytest.raises(RehydrateError, match="refusing"):
        rehydrate_image(small, None, x2)  # the lossless pair did not make this file
    row = find_row(str(tmp_path), "2024/a.jpg")
    with pytest.raises(RehydrateRefused, match="refusing"):  # a row naming another (real) model
        rehydrate_row({**row, "model_id": "taid-x2", "model_sha256": x2.weights_sha256})
    with pytest.raises(RehydrateRefused, match="expected"):
        rehydrate_row({**row, "model_sha256": "0" * 64})
