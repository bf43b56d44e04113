"""compress-archive with its default fidelity on S3 (Ray actors, the job layer): a JPEG photo
archive gets smaller, every `ok` row meets its target (checked here on what rehydrate returns),
layers are objects of their own that rehydrate finds, verifies and can skip, and an incremental
rerun with another fidelity redoes the images while the same one does nothing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.jobs import run_compress, run_rehydrate, summary_table
from models.metrics import psnr_y
from pipeline.jobs.params import CompressArchiveParams, RehydrateParams
from pipeline.manifest.parts import read_manifest
from pipeline.archive.access import RehydrateRefused, find_row, rehydrate

from tests import DATA
PHOTOS = ["Set14/lenna.png", "Set14/zebra.png", "Set5/bird.png"]


def photo(name: str) -> bytes:
    buf = io.BytesIO()
    Image.open(DATA / name).convert("RGB").crop((0, 0, 224, 224)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_default_fidelity_archive(s3, bucket, ray_local):
    fs = s3.filesystem()
    sources = {f"photos/{Path(n).stem}.jpg": photo(n) for n in PHOTOS}
    for key, data in sources.items():
        fs.pipe(f"{bucket}/src/{key}", data)
    params = CompressArchiveParams(source=f"s3://{bucket}/src", dest=f"s3://{bucket}/archive")
    result = run_compress(params)
    assert result["by_status"] == {"ok": 3} and result["fidelity"] == "standard" and result["target_psnr"] == 36
    assert result["bytes_out_ok"] < result["bytes_in_ok"] and result["psnr_y_min"] >= 36
    assert result["images_with_layer"] == 3
    table = {r["metric"]: r["value"] for r in summary_table(result)}
    assert table["Y-PSNR vs source: minimum"].endswith("dB") and table["bytes saved (ok)"] > 0

    rows = {r["source_key"]: r for r in read_manifest(fs, f"{bucket}/archive").to_pylist()}
    archive = f"s3://{bucket}/archive"
    for key, data in sources.items():
        row = rows[key]
        assert row["fidelity"] == "standard" and row["psnr_y"] >= 36 and row["thumbnail_psnr"] >= 32
        assert row["enhancement_uri"].endswith(".enh") and fs.info(row["enhancement_uri"])["size"] == row["enhancement_size"]
        src = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        full = np.asarray(Image.open(io.BytesIO(rehydrate(key, archive))).convert("RGB"))
        assert psnr_y(full, src) >= 36 and psnr_y(full, src, shave=row["scale"]) >= 36
        preview = np.asarray(Image.open(io.BytesIO(rehydrate(key, archive, preview=True))).convert("RGB"))
        assert preview.shape == src.shape and psnr_y(preview, src) < psnr_y(full, src)

    # a modified layer is refused, and so is a missing one; the preview still works without it
    key = "photos/zebra.jpg"
    layer_uri = find_row(archive, key)["enhancement_uri"]
    good = fs.cat_file(layer_uri)
    fs.pipe(layer_uri, good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(RehydrateRefused, match="enhancement layer .* modified or corrupt"):
        rehydrate(key, archive)
    fs.rm(layer_uri)
    with pytest.raises(RehydrateRefused, match="enhancement layer .* is missing"):
        rehydrate(key, archive)
    assert rehydrate(key, archive, preview=True)
    fs.pipe(layer_uri, good)

    # many at once (Ray actors): PNG outputs named <key>.png, the verified pixels exactly
    batch = run_rehydrate(RehydrateParams(archive=archive, prefix="photos/", to=f"s3://{bucket}/restored"))
    assert batch["by_status"] == {"ok": 3}
    for key, data in sources.items():
        restored = Image.open(io.BytesIO(fs.cat_file(f"{bucket}/restored/{key}.png")))
        assert restored.format == "PNG"
        src = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert psnr_y(np.asarray(restored.convert("RGB")), src) >= 36

    # incremental: the same fidelity touches nothing, another one redoes every image
    again = run_compress(params)
    assert again["rows"] == 0 and again["plan"].get("unchanged") == 3
    high = run_compress(params.model_copy(update={"fidelity": "high"}))
    assert high["by_status"] == {"ok": 3} and high["psnr_y_min"] >= 40
    assert find_row(archive, key)["target_psnr"] == 40
