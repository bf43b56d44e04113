"""compress-archive with the real codec-aware taid-x2-webp on S3 (Ray actors, the job layer):
the model's small format and quality are the defaults and land in the manifest, an explicit
format/quality overrides them, and the lossy small files rehydrate with that model only.
Nothing here knows the weights' sha256 or quality numbers: they come from models/zoo.json."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.zoo import zoo_table

MODEL = "taid-x2-webp"
pytestmark = pytest.mark.skipif(MODEL not in zoo_table(), reason=f"{MODEL} is not in models/zoo.json yet (issue 9)")


def sources() -> dict[str, bytes]:
    yy, xx = np.mgrid[0:72, 0:96].astype(np.float64)
    rgb = np.clip(np.stack([128 + 90 * np.sin(xx / 9 + c) * np.cos(yy / 13 - c) for c in range(3)], axis=2), 0, 255)
    rgb = rgb.astype(np.uint8)
    alpha = np.tile(np.arange(96, dtype=np.uint8) * 2, (72, 1))
    out = {}
    for key, im, fmt in [("photos/a.jpg", Image.fromarray(rgb), "JPEG"), ("photos/b.png", Image.fromarray(rgb[::-1]), "PNG"),
                         ("logos/c.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")]:
        buf = io.BytesIO()
        im.save(buf, fmt)
        out[key] = buf.getvalue()
    return out


def rows(fs, dest: str) -> dict[str, dict]:
    from pipeline.manifest.parts import read_manifest

    return {r["source_key"]: r for r in read_manifest(fs, dest).to_pylist()}


def test_codec_aware_model_defaults_overrides_and_rehydrate(s3, bucket, ray_local):
    from pipeline.jobs import run_compress
    from models.zoo import load_pair
    from pipeline.jobs.params import CompressArchiveParams
    from pipeline.archive.access import RehydrateRefused, find_row, rehydrate, rehydrate_row
    from pipeline.codec.small_file import is_lossless_webp

    block = zoo_table()[MODEL]["channel"]
    fs = s3.filesystem()
    objects = sources()
    for key, data in objects.items():
        fs.pipe(f"{bucket}/src/{key}", data)

    def run(dest: str, **kw) -> dict:
        return run_compress(CompressArchiveParams(source=f"s3://{bucket}/src", dest=f"s3://{bucket}/{dest}",
                                                      model_id=MODEL, workers=1, **kw))

    result = run("default")
    assert result["by_status"] == {"ok": 3}
    assert (result["small_format"], result["quality"]) == (block["small_format"], block["quality"])
    written = rows(fs, f"{bucket}/default")
    for key, row in written.items():
        assert (row["model_id"], row["output_format"]) == (MODEL, block["small_format"])
        assert row["small_quality"] == block["quality"]
        small = fs.cat(row["output_uri"])
        if block["small_format"] == "webp-lossy":
            assert row["output_uri"].endswith(".webp") and not is_lossless_webp(small)
        restored = Image.open(io.BytesIO(rehydrate(key, f"s3://{bucket}/default")))
        assert restored.size == Image.open(io.BytesIO(objects[key])).size
    assert Image.open(io.BytesIO(rehydrate("logos/c.png", f"s3://{bucket}/default"))).mode == "RGBA"

    # the same file named with another (real, loadable) model is refused, not upscaled by it
    row = find_row(f"s3://{bucket}/default", "photos/a.jpg")
    x2 = load_pair("taid-x2")
    with pytest.raises(RehydrateRefused, match="refusing"):
        rehydrate_row({**row, "model_id": "taid-x2", "model_sha256": x2.weights_sha256})

    override = run("override", small_format="jpeg", quality=50)
    assert (override["small_format"], override["quality"]) == ("jpeg", 50)
    by_key = rows(fs, f"{bucket}/override")
    assert (by_key["photos/a.jpg"]["output_format"], by_key["photos/a.jpg"]["small_quality"]) == ("jpeg", 50)
    assert (by_key["logos/c.png"]["output_format"], by_key["logos/c.png"]["small_quality"]) == ("webp-lossy", 50)  # alpha
    assert Image.open(io.BytesIO(rehydrate("photos/a.jpg", f"s3://{bucket}/override"))).size == (96, 72)
