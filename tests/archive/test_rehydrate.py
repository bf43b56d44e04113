"""Rehydrate on the real S3 server: single keys, small-file URIs, a prefix through the Prefect flow (its
one end-to-end test; the rest calls the job layer),
quality equal to the manifest and to `taid eval`, and refusals that write nothing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from flows.rehydrate import RehydrateParams, rehydrate as rehydrate_flow
from models.evaluate import evaluate
from models.metrics import psnr, psnr_y
from flows.cli import main
from pipeline.jobs import run_compress, run_rehydrate
from pipeline.jobs.params import CompressArchiveParams
from pipeline.manifest.parts import read_manifest
from pipeline.archive.access import RehydrateRefused, find_row, rehydrate, rehydrate_pil, rehydrate_row
from pipeline.manifest.rows import RESTORED_SCHEMA
from pipeline.storage.fs import filesystem

from tests import DATA, ROOT
SET5 = DATA / "Set5"


def rgba_png(size: int = 40) -> bytes:
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    arr[..., 3] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def archive(s3, ray_local):
    fs = s3.filesystem()
    bucket = "rehydrate-tests"
    fs.makedirs(bucket, exist_ok=True)
    sources = {f"set5/{p.name}": p.read_bytes() for p in sorted(SET5.glob("*.png"))[:3]}
    sources["alpha/logo.png"] = rgba_png()
    jpeg = io.BytesIO()
    Image.open(SET5 / "bird.png").convert("RGB").save(jpeg, "JPEG", quality=92)
    sources["photos/bird.jpg"] = jpeg.getvalue()
    for key, data in sources.items():
        fs.pipe(f"{bucket}/src/{key}", data)
    result = run_compress(CompressArchiveParams(
        source=f"s3://{bucket}/src", dest=f"s3://{bucket}/archive", model_id="taid-x4", verify=True))
    assert result["by_status"] == {"ok": len(sources)}
    return {"bucket": bucket, "uri": f"s3://{bucket}/archive", "sources": sources, "fs": fs}


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_single_key_matches_manifest_and_eval(archive):
    key = "set5/bird.png"
    row = find_row(archive["uri"], key)
    img = decoded(rehydrate(key, archive["uri"]))
    original = np.asarray(decoded(archive["sources"][key]).convert("RGB"))
    restored = np.asarray(img.convert("RGB"))
    assert img.format == "PNG" and img.size == (row["width"], row["height"])
    assert psnr(restored, original) == pytest.approx(row["roundtrip_psnr"], abs=1e-9)
    per_image = evaluate("taid-x4", [str(SET5 / "bird.png")])["images"][0]  # 288 x 288: no mod-crop
    assert psnr_y(restored, original, shave=4) == pytest.approx(per_image["psnr_y"], abs=1e-9)


def test_a_raw_row_rehydrates_given_its_archive(archive):
    """A row read raw (pyarrow, DuckDB) names its files relative to the archive root: with
    `archive=` rehydrate_row resolves them and gives the same bytes as by key; without, it refuses."""
    import pyarrow.dataset as ds

    key = "set5/bird.png"
    table = ds.dataset(f"{archive['bucket']}/archive/_manifest", filesystem=archive["fs"], format="parquet").to_table()
    raw = next(r for r in table.to_pylist() if r["source_key"] == key and r["status"] == "ok")
    assert "://" not in raw["output_uri"]  # relative, as written
    with pytest.raises(RehydrateRefused):
        rehydrate_row(raw)
    assert rehydrate_row(raw, archive=archive["uri"]) == rehydrate(key, archive["uri"])


def test_small_file_uri_alpha_and_original_format(archive):
    row = find_row(archive["uri"], "alpha/logo.png")
    by_uri = rehydrate_pil(row["output_uri"], archive["uri"])
    assert by_uri.mode == "RGBA" and by_uri.size == (40, 40)
    alpha = np.asarray(by_uri)[..., 3].astype(int)
    assert np.abs(alpha - np.linspace(0, 255, 40, dtype=np.uint8)[None, :]).mean() < 8  # alpha came back
    jpg = decoded(rehydrate("photos/bird.jpg", archive["uri"]))
    assert jpg.format == "JPEG" and jpg.size == (288, 288)  # JPEG stays JPEG
    assert decoded(rehydrate("photos/bird.jpg", archive["uri"], restored_format="png")).format == "PNG"


def test_prefix_flow_writes_manifest_and_is_idempotent(archive, prefect_harness):
    to = f"s3://{archive['bucket']}/restored"
    first = rehydrate_flow(RehydrateParams(archive=archive["uri"], to=to, prefix="set5/"))
    assert first["by_status"] == {"ok": 3}
    fs = archive["fs"]
    for key in [k for k in archive["sources"] if k.startswith("set5/")]:
        got = np.asarray(decoded(fs.cat(f"{archive['bucket']}/restored/{key}")).convert("RGB"))
        assert got.shape == np.asarray(decoded(archive["sources"][key])).shape[:2] + (3,)
    again = rehydrate_flow(RehydrateParams(archive=archive["uri"], to=to, prefix="set5/"))
    assert again["already_done"] == 3 and again["rows"] == 0
    with pytest.raises(ValueError, match="select something"):
        rehydrate_flow(RehydrateParams(archive=archive["uri"], to=to))


def test_rerun_into_the_same_place_redoes_only_what_it_would_write_differently(archive):
    """Idempotence is per file written: another format is a new file, and a full rehydrate after a
    preview one (or the reverse) is not the same file either; the same request again is a no-op."""
    to, fs = f"s3://{archive['bucket']}/again", archive["fs"]
    ask = dict(archive=archive["uri"], to=to, prefix="set5/")
    assert run_rehydrate(RehydrateParams(**ask))["by_status"] == {"ok": 3}
    as_jpeg = run_rehydrate(RehydrateParams(**ask, restored_format="jpeg"))
    assert as_jpeg["already_done"] == 0 and as_jpeg["by_status"] == {"ok": 3}
    assert decoded(fs.cat(f"{archive['bucket']}/again/set5/bird.jpg")).format == "JPEG"
    preview = run_rehydrate(RehydrateParams(**ask, preview=True))
    assert preview["already_done"] == 0 and preview["by_status"] == {"ok": 3}
    assert run_rehydrate(RehydrateParams(**ask, preview=True))["already_done"] == 3
    assert run_rehydrate(RehydrateParams(**ask, restored_format="jpeg"))["already_done"] == 3
    rows = read_manifest(*filesystem(to), schema=RESTORED_SCHEMA).to_pylist()
    assert {(r["restored_uri"].rsplit(".", 1)[-1], r["preview"]) for r in rows} == {("png", False), ("jpg", False),
                                                                                     ("png", True)}


def test_refusals_write_nothing(archive, tmp_path):
    fs, uri = archive["fs"], archive["uri"]
    with pytest.raises(RehydrateRefused, match="no ok row"):
        rehydrate("set5/nosuch.png", uri)
    row = find_row(uri, "set5/baby.png")
    with pytest.raises(RehydrateRefused, match="expected|not registered|unknown"):
        rehydrate_row({**row, "model_sha256": "0" * 64})  # weights that are not the ones that made it
    small = row["output_uri"].split("://", 1)[1]
    original = fs.cat(small)
    try:
        fs.pipe(small, original[:-10] + b"0123456789")  # tampered small file
        with pytest.raises(RehydrateRefused, match="modified or corrupt"):
            rehydrate("set5/baby.png", uri)
        out = tmp_path / "baby.png"
        assert main(["rehydrate", uri, "set5/baby.png", "-o", str(out)]) == 2 and not out.exists()
        to = f"s3://{archive['bucket']}/refused"
        result = run_rehydrate(RehydrateParams(archive=uri, to=to, source_keys=["set5/baby.png"]))
        assert result["by_status"] == {"refused": 1}
        assert not fs.exists(f"{archive['bucket']}/refused/set5/baby.png")
        fs.rm(small)
        with pytest.raises(RehydrateRefused, match="missing"):
            rehydrate("set5/baby.png", uri)
    finally:
        fs.pipe(small, original)
    out = tmp_path / "baby.png"
    assert main(["rehydrate", uri, "set5/baby.png", "-o", str(out)]) == 0
    assert decoded(out.read_bytes()).size == (512, 512)


def test_batch_cli_endpoint_only_by_flag_and_missing_credentials_one_line(archive, s3, tmp_path):
    """`taid rehydrate ARCHIVE --prefix P --to DEST --endpoint-url URL` in a fresh process whose
    AWS_ENDPOINT_URL points elsewhere: the flag alone reaches the driver and the Ray workers. Without
    credentials: one line, exit 2, before any work."""
    import os
    import subprocess
    import sys

    from infra.local_s3 import free_port

    root = ROOT
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TAID_", "AWS_", "RAY_ADDRESS"))}
    env.update(PYTHONPATH=str(root), PREFECT_HOME=str(tmp_path / "prefect-home"), OMP_NUM_THREADS="1",
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    to = f"s3://{archive['bucket']}/by-flag"
    args = [sys.executable, "-m", "flows.cli", "--log-level", "WARNING", "rehydrate", archive["uri"], "--prefix",
            "set5/", "--to", to, "--endpoint-url", s3.endpoint, "--workers", "1", "--no-prefect"]

    keyless = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [ln for ln in keyless.stderr.splitlines() if ln.strip()]
    assert keyless.returncode == 2 and len(lines) == 1, keyless.stderr[-3000:]
    assert lines[0].startswith("taid rehydrate: no S3 credentials") and "AWS_ACCESS_KEY_ID" in lines[0]

    env.update(AWS_ACCESS_KEY_ID=s3.key, AWS_SECRET_ACCESS_KEY=s3.secret)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    assert json.loads(done.stdout)["by_status"] == {"ok": 3}
    for key in [k for k in archive["sources"] if k.startswith("set5/")]:
        assert archive["fs"].exists(f"{archive['bucket']}/by-flag/{key}")
