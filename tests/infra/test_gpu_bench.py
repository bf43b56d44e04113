"""The GPU machine check must not rot while no GPU machine is lent (issue 23).

- `infra/gpu/bench.sh` runs end to end on the CPU (`--device cpu`, a few tiny images) the way it runs
  on the GPU machine: it builds the project's wheel from the checkout and installs it with pip
  --no-index into a fresh target folder (the venv stands in for what the GPU machine's python and
  the carry hold), checks the imports and runs benchmarks/gpu.py from there. The report must say the
  driver and the Ray workers ran the installed copy. A carried wheel (the project's, repacked by
  infra/gpu/carry.py as ray is) installs the same way, and a missing package is named.
- infra/gpu/carry.py's parts that need no registry: repacking (parts dropped, ELF stripped, LZMA,
  RECORD rewritten; pip installs the result offline), the dependency closure check, the pins.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests import ROOT
sys.path.insert(0, str(ROOT / "infra" / "gpu"))

import carry  # noqa: E402

FIELDS = ("device", "compress_mp_per_s_per_gpu", "rehydrate_mp_per_s_per_gpu", "gpu_busy_fraction",
          "model_busy_fraction", "bf16_psnr_delta_db", "stage_s_per_mp", "cpu_cores_per_gpu", "cross_device",
          "not_measured", "phases", "runs")
STAGES = ("decode", "model", "small_encode", "layer_encode", "layer_apply", "other")
PRESETS = ("fixed", "standard")


def _clean_env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_ADDRESS", "TAID_RAY_ADDRESS",
              "PYTHONPATH"):
        env.pop(k, None)  # the benchmark starts its own Ray; the carry's folder is the only extra path
    return env


@pytest.fixture(scope="module")
def project_wheel(tmp_path_factory) -> Path:
    """The project's wheel as carry.py builds it (offline, from a copy of the packages)."""
    return carry.build_project(tmp_path_factory.mktemp("built"))


def test_project_wheel_holds_the_weights(project_wheel):
    names = set(zipfile.ZipFile(project_wheel).namelist())
    zoo = json.loads((ROOT / "models" / "zoo.json").read_text())
    weights = {f"models/weights/{p.name}" for p in (ROOT / "models" / "weights").glob("*.pt")}
    assert zoo and weights and weights <= names and "models/zoo.json" in names  # what load_pair reads
    assert any(n.startswith("pipeline/serving/static/") for n in names)
    assert not any("__pycache__" in n for n in names)


@pytest.mark.services  # benchmarks/gpu.py starts a local Ray
def test_bench_sh_installs_and_runs_on_cpu(tmp_path):
    """The GPU machine's path: the project is not in the carry; bench.sh builds its wheel from the
    checkout and installs it into the fresh folder (the other packages: the venv, standing in for
    the machine's python plus the carry)."""
    carry_dir, site, results, copy_to = (tmp_path / d for d in ("carry", "site", "results", "copy"))
    carry_dir.mkdir()

    cmd = ["bash", str(ROOT / "infra" / "gpu" / "bench.sh"), "--carry", str(carry_dir), "--site", str(site),
           "--results", str(results), "--copy-to", str(copy_to), "--",
           "--device", "cpu", "--presets", ",".join(PRESETS), "--images", "4", "--min-mp", "0.02", "--max-mp", "0.04",
           "--max-objects", "4",
           "--workers-max", "2", "--sample", "2", "--run-s", "2", "--skip", "s3",
           # every run is "busy enough": the bisection of CPU workers runs once per preset (2 -> 1)
           "--busy-target", "0"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_clean_env(PY=sys.executable), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "carry: no wheels in" in proc.stdout and "could not build" not in proc.stdout

    report = json.loads((results / "gpu.json").read_text())
    assert set(FIELDS) <= set(report) and report["complete"] is True
    assert (results / "gpu.md").exists()
    assert {p.name for p in copy_to.iterdir()} == {"gpu.json", "gpu.md", "bench.log"}
    # the installed copy ran, in this process and in Ray's workers (not the checkout)
    assert Path(report["project_path"]) == site and Path(report["project_path_workers"]) == site
    assert report["device_kind"] == "cpu" and report["gpus"] == 0 and report["busy_source"] == "model_actor"
    assert set(report["not_measured"]) == {"s3", "prefect"}
    for p in PRESETS:
        run = report["runs"][p]
        assert run["compress"]["by_status"] == {"ok": 4} and run["rehydrate"]["by_status"] == {"ok": 4}
        assert report["compress_mp_per_s_per_gpu"][p] > 0 and report["rehydrate_mp_per_s_per_gpu"][p] > 0
        assert report["gpu_busy_fraction"][p] is None and 0 < report["model_busy_fraction"][p] <= 1
        assert set(report["stage_s_per_mp"][p]) == set(STAGES) and report["stage_s_per_mp"][p]["model"] > 0
        cores = report["cpu_cores_per_gpu"][p]
        assert cores["reached"] and cores["workers"] == 1 and [s["workers"] for s in cores["sweep"]] == [2, 1]
    assert report["stage_s_per_mp"]["standard"]["layer_encode"] > 0  # the layer search: band encodes (JPEG XL / AVIF)
    assert report["stage_s_per_mp"]["fixed"]["layer_encode"] == 0
    # bf16 on the CPU: a small loss, never a gain of note (measured -0.03..0 dB on Set5/Set14)
    assert -0.2 < report["bf16_psnr_delta_db"] < 0.05
    # same device, same path: the cross-device check must find nothing
    assert report["cross_device"]["images"] == 2 and report["cross_device"]["max_abs_diff"] == 0


def test_bench_sh_says_what_is_missing(tmp_path, project_wheel):
    """A carry (the project's wheel, repacked as ray is: LZMA, build tag, new RECORD) installs
    offline; a python that still lacks a package gets exit 2 and a line naming it, before any run."""
    fake = tmp_path / "python3"
    # the real interpreter, but `ray` cannot be imported (a module of that name that raises)
    shadow = tmp_path / "shadow"
    (shadow / "ray").mkdir(parents=True)
    (shadow / "ray" / "__init__.py").write_text("raise ImportError('no ray on this machine')\n")
    fake.write_text(f"#!/bin/sh\nPYTHONPATH={shadow}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} \"$@\"\n")
    fake.chmod(0o755)
    carry_dir = tmp_path / "carry"
    carry_dir.mkdir()
    repacked = carry.repack_wheel(project_wheel, carry_dir)
    site = tmp_path / "site"
    proc = subprocess.run(["bash", str(ROOT / "infra" / "gpu" / "bench.sh"), "--carry", str(carry_dir),
                           "--site", str(site), "--results", str(tmp_path / "results")],
                          env=_clean_env(PY=str(fake)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "carry: 1 wheels" in proc.stdout and f"  {repacked.name}" in proc.stdout
    assert re.search(rf"^ +pipeline +{re.escape(str(site))}/pipeline/__init__.py$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^ +ray +MISSING \(ImportError: no ray on this machine\)", proc.stdout, re.M), proc.stdout
    assert "lacks ray after the install" in proc.stdout
    assert not (tmp_path / "results" / "gpu.json").exists()


# ------------------------------------------------------------------ carry.py, offline parts
def _wheel(path: Path, files: dict[str, bytes], name: str = "fakeray", version: str = "1.0") -> Path:
    dist = f"{name}-{version}.dist-info"
    files = {**files, f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
             "Requires-Dist: referencing>=0.30\nRequires-Dist: pytest ; extra == 'test'\n\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},sha256=x,{len(d)}\n" for p, d in files.items()) + f"{dist}/RECORD,,\n"
    whl = path / f"{name}-{version}-py3-none-any.whl"
    path.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
        for p, d in files.items():
            info = zipfile.ZipInfo(p)
            info.external_attr = (stat.S_IFREG | (0o755 if d[:4] == b"\x7fELF" else 0o644)) << 16
            z.writestr(info, d)
        z.writestr(f"{dist}/RECORD", record)
    return whl


def test_repack_wheel_drops_parts_strips_and_installs_offline(tmp_path):
    elf = Path(shutil.which("true")).read_bytes()
    assert elf[:4] == b"\x7fELF"
    src = _wheel(tmp_path / "in", {
        "fakeray/__init__.py": b"VALUE = 42\n",
        "fakeray/core/raylet": elf,
        "fakeray/jars/ray_dist.jar": b"j" * 1000,
        "fakeray/rllib/algo.py": b"x = 1\n",
        "fakeray/dashboard/client/build/index.html": b"<html>",
        "fakeray/dashboard/modules/keep.py": b"KEEP = 1\n",
    })
    drop = ("fakeray/jars/", "fakeray/dashboard/client/build/", "fakeray/rllib/")
    out = carry.repack_wheel(src, tmp_path / "out", drop, shutil.which("strip"))
    assert out.name == "fakeray-1.0-1-py3-none-any.whl"
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert not any(n.startswith(drop) for n in names)
        assert {"fakeray/__init__.py", "fakeray/core/raylet", "fakeray/dashboard/modules/keep.py"} <= names
        assert all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist())
        assert "Build: 1" in z.read("fakeray-1.0.dist-info/WHEEL").decode()
        note = z.read("fakeray-1.0.dist-info/TAID_REPACKED").decode()
        assert all(p in note for p in drop)
        assert len(z.read("fakeray/core/raylet")) <= len(elf)  # stripped, or already was
        rows = [ln.split(",") for ln in z.read("fakeray-1.0.dist-info/RECORD").decode().splitlines()]
        listed = {r[0] for r in rows}
        assert listed == names
        for path, digest, size in rows:
            if digest:  # every member's hash and size match what is in the wheel now
                data = z.read(path)
                assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                assert int(size) == len(data)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--target", str(site), str(out)], check=True)
    done = subprocess.run([sys.executable, "-c", "import fakeray, os; print(fakeray.VALUE, "
                           "os.access(os.path.join(os.path.dirname(fakeray.__file__), 'core', 'raylet'), os.X_OK))"],
                          env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["42", "True"]  # the executable bit survives (raylet, gcs_server)


def test_closure_check_finds_conflicts_and_missing_requirements():
    env = carry.target_environment("3.12")
    carried = {
        "pydantic": ("2.14.4", ["pydantic-core==2.50.5", "typing-extensions>=4.16.0", "annotated-types>=0.6.0"]),
        "pydantic-core": ("2.50.5", ["typing-extensions>=4.16.0"]),
        "typing-extensions": ("4.16.0", []),
        "referencing": ("0.37.0", ["attrs>=22.2.0", "typing-extensions>=4.4.0; python_version < '3.13'",
                                   "rpds-py>=0.7.0", "pytest; extra == 'test'"]),
    }
    problems, assumed = carry.check_closure(carried, {"attrs"}, env)
    assert problems == ["pydantic needs annotated-types>=0.6.0: neither carried nor on the machine",
                        "referencing needs rpds-py>=0.7.0: neither carried nor on the machine"]
    assert assumed == ["referencing needs attrs>=22.2.0: from the machine"]
    carried["pydantic-core"] = ("2.41.0", carried["pydantic-core"][1])
    problems, _ = carry.check_closure(carried, {"attrs", "annotated-types", "rpds-py"}, env)
    assert problems == ["pydantic needs pydantic-core==2.50.5, the carry has pydantic-core 2.41.0"]
    # on 3.13 the marker drops referencing's typing-extensions requirement
    carried.pop("typing-extensions")
    problems, _ = carry.check_closure(carried, {"attrs", "annotated-types", "rpds-py"},
                                      carry.target_environment("3.13"))
    assert not any(p.startswith("referencing") for p in problems)


def test_carry_pins_are_exact_and_closed_over_the_machine_list(tmp_path):
    pins = carry.read_pins(carry.REQUIREMENTS)
    names = {p.name for p in pins}
    assert {"ray", "pydantic", "pydantic-core", "pydantic-settings", "jsonschema", "pillow-heif"} <= names
    machine = carry.read_names(carry.MACHINE_PACKAGES)
    assert {"torch", "numpy", "pyarrow", "fsspec", "psutil"} <= machine and "ray" not in machine
    bad = tmp_path / "req.txt"
    bad.write_text("ray>=2.40  # a range: the carry would not be reproducible\n")
    with pytest.raises(ValueError, match="pin an exact version"):
        carry.read_pins(bad)
