"""`taid compress-archive` on a local folder, as a user runs it: a fresh process with no Prefect API
configured. It runs the job layer directly (no Prefect server, no telemetry line), a HEIC phone
photo becomes an `ok` row, and `taid rehydrate` brings it back at its original, upright size."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from PIL import Image

from tests import ROOT

pytestmark = pytest.mark.services  # each `taid` process starts its own Ray
BIRD = ROOT / "tests" / "data" / "Set5" / "bird.png"


def taid(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TAID_"))}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(cwd / "prefect-home"))  # no profile with an API URL
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_local_folder_run_is_quiet_and_takes_heic(tmp_path):
    import pillow_heif

    pillow_heif.register_heif_opener()
    src, dest = tmp_path / "photos", tmp_path / "archive"
    src.mkdir()
    stored = Image.open(BIRD).convert("RGB").crop((0, 0, 240, 160))  # as the sensor stored it: landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view: the upright photo is 160 x 240
    stored.save(src / "IMG_0001.HEIC", "HEIF", quality=90, exif=exif.tobytes())
    Image.open(BIRD).save(src / "bird.png")

    run = taid("compress-archive", str(src), str(dest), "--workers", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads(run.stdout)
    assert stats["by_status"] == {"ok": 2} and stats["fidelity"] == "standard"
    noise = [ln for ln in run.stderr.splitlines() if any(w in ln.lower() for w in ("prefect", "telemetry", "temporary server"))]
    assert noise == [], noise
    assert "pipeline.jobs.compress" in run.stderr  # our own log lines do show (INFO by default)

    rows = {r["source_key"]: r for r in ds.dataset(str(dest / "_manifest"), format="parquet").to_table().to_pylist()}
    heic = rows["IMG_0001.HEIC"]
    assert heic["status"] == "ok" and heic["source_format"] == "HEIF" and heic["exif_orientation"] == 6
    assert (heic["width"], heic["height"]) == (160, 240)
    assert heic["target_score"] == 80 and heic["score_worst"] >= heic["target_score"]  # `standard`

    back = taid("rehydrate", str(dest), "IMG_0001.HEIC", "-o", "restored.png", "--log-level", "warning", cwd=tmp_path)
    assert back.returncode == 0, back.stderr[-3000:]
    restored = Image.open(io.BytesIO((tmp_path / "restored.png").read_bytes()))
    assert restored.size == (160, 240)
    assert "INFO" not in back.stderr  # --log-level warning


def test_make_demo_runs_end_to_end(tmp_path):
    """`make demo` (flows/demo.py) in a fresh process on a copy of Set5: compress, incremental rerun,
    and the rehydration of one key through the library (rows hold paths relative to the archive)."""
    import shutil

    shutil.copytree(ROOT / "tests" / "data" / "Set5", tmp_path / "src" / "Set5")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TAID_"))}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(tmp_path / "prefect-home"))
    done = subprocess.run([sys.executable, "-m", "flows.demo", "--source", str(tmp_path / "src"), "--dest",
                           str(tmp_path / "archive"), "--fidelity", "preview"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "second run (incremental): 0 processed" in done.stdout
    assert "rehydrated Set5/butterfly.png" in done.stdout and (tmp_path / "demo-restored" / "Set5" / "butterfly.png").exists()
