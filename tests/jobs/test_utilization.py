"""Held against busy in real runs: a run in this process (no Ray), a run on the session's Ray, a
command that starts its own Ray and works on the driver meanwhile, and the cost report charging the
held core-seconds. Plus `taid rehydrate` of a key whose layer is the image itself: no torch, no Ray."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.jobs.compress import in_process, run_compress, summary_table
from pipeline.jobs.params import CompressArchiveParams
from pipeline.storage.keys import ObjectInfo

ROOT = Path(__file__).resolve().parents[2]
SET5 = ROOT / "tests" / "data" / "Set5"


def _jpeg(path: Path, seed: int) -> None:
    src = Image.open(sorted(SET5.glob("*.png"))[seed % 5]).convert("RGB").crop((0, 0, 192, 144))  # small: fast
    buf = io.BytesIO()
    src.save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())


def _sources(tmp_path: Path, n: int) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        _jpeg(src / f"img-{i}.jpg", i)
    return src


def _held_and_busy(result: dict) -> dict:
    u = result["utilization"]
    assert u["busy_cpu_s"] == pytest.approx(result["cpu_s"]["total"])  # busy = the rows' stage CPU-s
    assert result["held_core_s"] == pytest.approx(u["held_core_s"]) and u["held_core_s"] >= u["busy_cpu_s"] > 0
    assert u["utilization"] == pytest.approx(u["busy_cpu_s"] / u["held_core_s"])
    idle = u["idle_core_s"]
    assert idle["total"] == pytest.approx(u["held_core_s"] - u["busy_cpu_s"], abs=1e-2)
    assert sum(v for k, v in idle.items() if k != "total") - u["busy_beyond_reserved_cpu_s"] == pytest.approx(
        idle["total"], rel=0.02, abs=0.05)
    for entry in result["payback"].values():  # the one-time cost charges held core-s, busy beside it
        assert entry["one_time_cost"] >= entry["one_time_cost_busy"] > 0
    return u


def test_a_small_plan_runs_in_this_process_and_charges_the_whole_machine(tmp_path):
    src, dest = _sources(tmp_path, 2), tmp_path / "archive"
    result = run_compress(CompressArchiveParams(source=str(src), dest=str(dest), fidelity="standard",
                                                in_process="always"))
    assert result["by_status"] == {"ok": 2}
    assert result["dispatch"]["stages"] == "in_process" and result["dispatch"]["actor_nodes"] == ["driver"]
    u = _held_and_busy(result)
    assert u["basis"] == "machine" and u["cores"] == os.cpu_count()
    assert u["held_core_s"] == pytest.approx(os.cpu_count() * u["wall_s"], rel=1e-6)
    assert 0 <= u["first_batch_s"] < u["wall_s"] and u["phases_s"]["models"] > 0
    assert "_timing" not in result["dispatch"]
    stats = json.loads((dest / "_runs" / f"{result['run_id']}.json").read_text())
    assert stats["utilization"]["held_core_s"] == pytest.approx(u["held_core_s"])
    table = {r["metric"]: r["value"] for r in summary_table(result)}
    assert table["utilisation (busy / held)"].endswith("%") and "machine" in table["core-s held"]
    assert any(k.startswith("payback months on busy CPU-s only") for k in table)


def test_auto_runs_in_process_only_a_small_plan_with_no_cluster():
    p = CompressArchiveParams(source="s", dest="d")
    small = [ObjectInfo("a", "u", "e", 100_000), ObjectInfo("b", "u", "e", 200_000)]
    assert in_process(p, small, more=False, ray_up=False)
    assert not in_process(p, small + [ObjectInfo("c", "u", "e", 1)], more=False, ray_up=False)  # 3 objects
    assert not in_process(p, small, more=True, ray_up=False)  # the listing goes on
    assert not in_process(p, [ObjectInfo("a", "u", "e", 50 << 20)], more=False, ray_up=False)  # 50 MB of work
    assert not in_process(p, small, more=False, ray_up=True)  # connected to a Ray already: use it
    assert not in_process(p.model_copy(update={"ray_address": "ray://head:10001"}), small, False, ray_up=False)
    assert not in_process(p.model_copy(update={"stages": "staged"}), small, False, ray_up=False)
    assert in_process(p.model_copy(update={"in_process": "always"}), small * 50, True, ray_up=True)
    assert not in_process(p.model_copy(update={"in_process": "never"}), small, False, ray_up=False)


def test_a_run_on_a_running_ray_holds_its_actors_cpus(tmp_path, ray_local):
    src, dest = _sources(tmp_path, 4), tmp_path / "archive"
    result = run_compress(CompressArchiveParams(source=str(src), dest=str(dest), fidelity="standard", workers=2,
                                                cpus_per_worker=1.0, in_process="auto"))
    assert result["by_status"] == {"ok": 4} and result["dispatch"]["stages"] == "single"
    u = _held_and_busy(result)
    assert u["basis"] == "actors" and u["cores"] == 2.0  # 2 actors x 1 CPU, for their lives (not the driver's time)
    assert u["held_core_s"] <= 2.0 * u["wall_s"]
    assert sum(u["timeline"]["busy_cores"]) * u["timeline"]["bin_s"] == pytest.approx(u["busy_cpu_s"], rel=1e-2)  # bins rounded to 1e-3 cores


@pytest.mark.services  # a `taid` process that starts its own Ray
def test_a_command_that_starts_ray_works_on_the_driver_meanwhile(tmp_path):
    src, dest = _sources(tmp_path, 4), tmp_path / "archive"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "compress-archive", str(src), str(dest), "--workers",
                           "2", "--in-process", "never", "--start-on-driver"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["by_status"] == {"ok": 4}
    u = _held_and_busy(result)
    assert u["basis"] == "machine" and u["cores"] == os.cpu_count()
    assert "starting Ray" in done.stderr and "actors ready" in done.stderr
    # the first image started on the driver before Ray and the actors were up
    assert result["dispatch"]["driver_items"] >= 1
    assert u["first_batch_s"] < u["phases_s"]["process"] + u["phases_s"]["models"] + u["phases_s"]["planning"] + \
        u["phases_s"]["ray"]


def test_rehydrating_a_key_whose_layer_is_the_image_loads_no_torch(tmp_path):
    src, dest = _sources(tmp_path, 1), tmp_path / "archive"
    result = run_compress(CompressArchiveParams(source=str(src), dest=str(dest), fidelity="original",
                                                in_process="always"))  # a JPEG source: a jxl-jpeg layer
    assert result["by_status"] == {"ok": 1}
    out = tmp_path / "back.jpg"
    code = ("import sys; from flows.cli import main; rc = main(['rehydrate', sys.argv[1], 'img-0.jpg', '-o', sys.argv[2]]);"
            " print(sorted(m for m in ('torch', 'ray') if m in sys.modules)); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(dest), str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"  # neither torch nor Ray was imported
    assert out.read_bytes() == (src / "img-0.jpg").read_bytes()  # the original, byte for byte
    # no pair is loaded, but its identity is still checked: a row naming other weights than its file is refused
    from pipeline.archive import RehydrateRefused, find_row, rehydrate_row

    row = find_row(str(dest), "img-0.jpg")
    with pytest.raises(RehydrateRefused, match="refusing"):
        rehydrate_row({**row, "model_sha256": "0" * 64})
    # the same archive through the pair (a preview runs TAU): the process then does load torch
    done = subprocess.run([sys.executable, "-c", code.replace("'-o'", "'--preview', '-o'"), str(dest),
                           str(tmp_path / "preview.png")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch" in done.stdout.strip().splitlines()[-1]
    assert np.asarray(Image.open(tmp_path / "preview.png")).shape[:2] == Image.open(src / "img-0.jpg").size[::-1]
