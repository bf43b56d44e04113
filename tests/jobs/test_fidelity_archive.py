"""compress-archive with its default fidelity on S3 (Ray actors, the job layer): a JPEG photo
archive gets smaller, every `ok` row meets its target (`standard`: SSIMULACRA2 >= 80 in the worst
256-px region, checked here on what rehydrate returns),
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
from pipeline.codec.measure import Ssimulacra2
from pipeline.jobs.params import CompressArchiveParams, RehydrateParams
from pipeline.manifest.parts import read_manifest
from pipeline.archive.access import RehydrateRefused, find_row, rehydrate

from tests import DATA
PHOTOS = ["Set14/lenna.png", "Set14/zebra.png", "Set5/bird.png"]


def photo(name: str) -> bytes:
    buf = io.BytesIO()
    Image.open(DATA / name).convert("RGB").crop((0, 0, 224, 224)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def worst(out: np.ndarray, src: np.ndarray) -> float:
    """The fidelity a score target promises: SSIMULACRA2 of the worst 256-px region."""
    return Ssimulacra2().score(src, out).worst


def test_default_fidelity_archive(s3, bucket, ray_local):
    fs = s3.filesystem()
    sources = {f"photos/{Path(n).stem}.jpg": photo(n) for n in PHOTOS}
    for key, data in sources.items():
        fs.pipe(f"{bucket}/src/{key}", data)
    params = CompressArchiveParams(source=f"s3://{bucket}/src", dest=f"s3://{bucket}/archive")
    result = run_compress(params)
    assert result["by_status"] == {"ok": 3} and result["fidelity"] == "standard"
    assert result["target_score"] == 80 and result["target_psnr"] is None
    assert result["bytes_out_ok"] < result["bytes_in_ok"]
    assert result["scores"]["images"] == 3 and result["scores"]["worst_min"] >= 80
    assert result["images_with_layer"] == 3
    table = {r["metric"]: r["value"] for r in summary_table(result)}
    assert table["fidelity"] == "standard (SSIMULACRA2 >= 80 in every region)"
    assert float(table["SSIMULACRA2 worst region (min / mean)"].split(" / ")[0]) >= 80
    assert table["Y-PSNR vs source: minimum"] is not None and table["bytes saved (ok)"] > 0

    rows = {r["source_key"]: r for r in read_manifest(fs, f"{bucket}/archive").to_pylist()}
    archive = f"s3://{bucket}/archive"
    for key, data in sources.items():
        row = rows[key]
        assert row["fidelity"] == "standard" and row["target_score"] == 80 and row["target_psnr"] is None
        assert row["score_worst"] >= row["target_score"] and row["score_whole"] >= row["score_worst"]
        # a layer of the image itself (JPEG XL or eye-tuned AVIF bands) beside a faithful thumbnail, or
        # the JPEG kept (JPEG XL recompression) where nothing reaching the target is smaller, beside a
        # preview of a small share of its bytes
        assert row["enhancement_format"] in ("jxl-bands", "avif-bands", "jxl-jpeg"), row["enhancement_format"]
        if row["enhancement_format"] == "jxl-jpeg":
            assert row["score_worst"] == 100 and row["enhancement_size"] < row["source_size"]
            assert row["output_size"] < 0.05 * row["source_size"]
        else:
            assert row["encodes"] >= 1 and row["thumbnail_psnr"] >= 32
        assert row["enhancement_uri"].endswith(".enh") and fs.info(row["enhancement_uri"])["size"] == row["enhancement_size"]
        src = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        full = np.asarray(Image.open(io.BytesIO(rehydrate(key, archive))).convert("RGB"))
        assert full.shape == src.shape and worst(full, src) >= row["target_score"]
        preview = np.asarray(Image.open(io.BytesIO(rehydrate(key, archive, preview=True))).convert("RGB"))
        assert preview.shape == src.shape and psnr_y(preview, src) < psnr_y(full, src)
        assert worst(preview, src) < worst(full, src)

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
        assert worst(np.asarray(restored.convert("RGB")), src) >= rows[key]["target_score"]

    # incremental: the same fidelity touches nothing, another one redoes every image
    again = run_compress(params)
    assert again["rows"] == 0 and again["plan"].get("unchanged") == 3
    high = run_compress(params.model_copy(update={"fidelity": "high"}))
    assert high["by_status"] == {"ok": 3} and high["target_score"] == 90 and high["scores"]["worst_min"] >= 90
    row = find_row(archive, key)
    assert row["fidelity"] == "high" and row["target_score"] == 90 and row["target_psnr"] is None
    assert row["score_worst"] >= 90
    src = np.asarray(Image.open(io.BytesIO(sources[key])).convert("RGB"))
    assert worst(np.asarray(Image.open(io.BytesIO(rehydrate(key, archive))).convert("RGB")), src) >= 90
