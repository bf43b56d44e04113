"""Deployments for real: a `prefect server start`, `prefect --no-prompt deploy --all` from
prefect.yaml, a `prefect worker start` on a process pool, and the README's `prefect deployment run`
commands against the SeaweedFS bucket; the nightly deployment fired twice (concurrency limit 1,
ENQUEUE: the second waits, then finds nothing new); and `python -m infra.stack up/status/down`
with `ray job submit` against its Ray head.

The commands below are the README's (and docs/deployment.md's), with the bucket substituted; the last
test checks the README still carries them verbatim. This file does not use `prefect_harness`:
every Prefect call goes to its own server through PREFECT_API_URL in the subprocess env only.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from infra import stack

from tests import ROOT as REPO
BIN = Path(sys.executable).parent

# the README's commands ({bucket} is taid-samples there)
COMPRESS_CMD = (
    "prefect deployment run compress-archive/on-demand "
    """--param params='{{"source": "s3://{bucket}/photos", "dest": "s3://{bucket}/archive-x4", "model_id": "taid-x4"}}' --watch"""
)
REHYDRATE_CMD = (
    "prefect deployment run rehydrate/sample "
    """--params '{{"params": {{"archive": "s3://{bucket}/archive-x4", "to": "s3://{bucket}/restored-x4", "prefix": ""}}}}' --watch"""
)
NIGHTLY_CMD = "prefect deployment run compress-archive/nightly-taid-samples"
JOB_CMD = (
    "ray job submit --working-dir . -- python -m pipeline.jobs.finetune --data s3://taid-samples/photos/Set5/ "
    "--base taid-x2 --name taid-x2-samples --out s3://taid-samples/models --workers 1 --steps 2 "
    "--batch 2 --patch 48 --ckpt-every 2 --holdout-every 2 --force-register"
)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def image_bytes(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=2)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def upload(fs, prefix: str, count: int, size: int = 64) -> dict[str, bytes]:
    objs = {f"img-{i:02d}.png": image_bytes(i, size + 4 * i) for i in range(count)}
    for key, data in objs.items():
        fs.pipe(f"{prefix}/{key}", data)
    return objs


def manifest_rows(fs, uri_path: str) -> list[dict]:
    from pipeline.manifest.parts import read_manifest

    return read_manifest(fs, uri_path).to_pylist()  # file paths resolved to URIs


def run_stats(fs, uri_path: str) -> list[dict]:
    fs.invalidate_cache()
    stats = [json.loads(fs.cat(p)) for p in fs.glob(f"{uri_path}/_runs/*.json")]
    return sorted(stats, key=lambda s: s.get("finished_at", ""))


def sh(cmd: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """A README command line, as a user's shell runs it (from the checkout, venv on PATH)."""
    return subprocess.run(["bash", "-c", cmd], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def prefect_stack(s3):
    """Prefect server (own PREFECT_HOME, free port) + work pool + deploy --all + a process worker.
    Yields (api_url, env for CLI calls). Worker stopped first (SIGINT, SIGKILL), then the server."""
    # a short wait before an enqueued run (deployment concurrency limit) tries again
    with stack.prefect_with_worker({**s3.env(), "PREFECT_WORKER_QUERY_SECONDS": "2"},
                                   server_env={"PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "3"},
                                   worker_name=f"test-worker-{uuid.uuid4().hex[:6]}") as (api, env, out):
        assert "compress-archive/nightly-taid-samples" in out, out[-2000:]
        yield api, env


def deployment(api: str, name: str) -> dict:
    r = httpx.get(f"{api}/deployments/name/{name}", timeout=10)
    r.raise_for_status()
    return r.json()


def flow_runs(api: str, deployment_id: str) -> list[dict]:
    r = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}, timeout=10)
    r.raise_for_status()
    return r.json()


def state_names(api: str, flow_run_id: str) -> list[str]:
    r = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": flow_run_id}, timeout=10)
    r.raise_for_status()
    return [s["name"] for s in sorted(r.json(), key=lambda s: s["timestamp"])]


def test_deployment_run_compress_then_rehydrate(s3, bucket, prefect_stack):
    api, env = prefect_stack
    fs = s3.filesystem()
    originals = upload(fs, f"{bucket}/photos", 5)

    done = sh(COMPRESS_CMD.format(bucket=bucket), env)
    assert done.returncode == 0 and "Completed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    rows = manifest_rows(fs, f"{bucket}/archive-x4")
    assert sorted(r["source_key"] for r in rows) == sorted(originals)
    for r in rows:
        assert r["status"] == "ok" and r["model_id"] == "taid-x4" and r["scale"] == 4
        small = fs.cat(r["output_uri"])
        assert len(small) == r["output_size"] and Image.open(io.BytesIO(small)).size == (r["out_width"], r["out_height"])
    [stats] = run_stats(fs, f"{bucket}/archive-x4")
    assert stats["rows"] == 5 and stats["by_status"] == {"ok": 5} and stats["source"] == f"s3://{bucket}/photos"

    done = sh(REHYDRATE_CMD.format(bucket=bucket), env)
    assert done.returncode == 0 and "Completed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    for key, data in originals.items():
        restored = Image.open(io.BytesIO(fs.cat(f"{bucket}/restored-x4/{key}")))
        assert restored.size == Image.open(io.BytesIO(data)).size and restored.format == "PNG"
    assert [r["status"] for r in manifest_rows(fs, f"{bucket}/restored-x4")] == ["ok"] * 5


def test_nightly_fired_twice_never_overlaps_and_second_finds_nothing_new(s3, prefect_stack):
    api, env = prefect_stack
    dep = deployment(api, "compress-archive/nightly-taid-samples")
    [sched] = dep["schedules"]
    assert sched["active"] and sched["schedule"]["cron"] == "15 2 * * *" and sched["schedule"]["timezone"] == "Europe/Berlin"
    assert dep["global_concurrency_limit"]["limit"] == 1 and dep["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert dep["parameters"]["params"]["source"] == "s3://taid-samples/photos"
    assert dep["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $TAID_ARCHIVE_ROOT }}"}}]

    fs = s3.filesystem()
    fs.makedirs("taid-samples", exist_ok=True)
    for old in ("taid-samples/photos", "taid-samples/archive"):
        if fs.exists(old):
            fs.rm(old, recursive=True)
    originals = upload(fs, "taid-samples/photos", 4)

    for _ in range(2):  # what the schedule does at 02:15, twice in a row
        fired = sh(NIGHTLY_CMD, env, timeout=60)
        assert fired.returncode == 0, fired.stdout[-2000:] + fired.stderr[-2000:]
    deadline = time.monotonic() + 240
    while True:
        runs = [r for r in flow_runs(api, dep["id"]) if not r["auto_scheduled"]]  # not the 02:15 ones ahead
        if len(runs) == 2 and all(r["state_type"] in TERMINAL for r in runs):
            break
        assert time.monotonic() < deadline, [(r["name"], r["state_name"]) for r in runs]
        time.sleep(2)
    assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    first, second = sorted(runs, key=lambda r: r["start_time"])
    assert second["start_time"] >= first["end_time"], "two nightly runs over one bucket overlapped"
    assert "AwaitingConcurrencySlot" in state_names(api, second["id"])  # it was held back, not just late

    one, two = run_stats(fs, "taid-samples/archive")
    assert one["rows"] == 4 and one["by_status"] == {"ok": 4}
    assert two["rows"] == 0 and two["plan"] == {"listed": 4, "unchanged": 4}  # nothing new the second time
    assert sorted(r["source_key"] for r in manifest_rows(fs, "taid-samples/archive")) == sorted(originals)


def test_stack_up_status_job_submit_down(s3):
    """The local stack on free ports in a temp state folder, `ray job submit` (README) against its
    Ray head and S3, then down: every process gone."""
    state = Path(tempfile.mkdtemp(prefix="taid-stack-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_API"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    up = [sys.executable, "-m", "infra.stack", "up", "--state", str(state), "--s3-port", "0", "--ray-port", "0",
          "--ray-dashboard-port", "0", "--prefect-port", "0", "--no-demo"]
    pids = {}
    try:
        done = subprocess.run(up, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
        pids = json.loads((state / "state.json").read_text()).get("pids", {}) if (state / "state.json").exists() else {}
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert set(pids) == {"s3", "ray_head", "prefect_server", "worker"}
        st = subprocess.run([sys.executable, "-m", "infra.stack", "status", "--state", str(state)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
        assert st.returncode == 0 and st.stdout.count(" ok") == 4, st.stdout

        # a second `up` refuses while this one runs
        again = subprocess.run(up, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "already running" in again.stdout

        job = sh(f". {state}/env.sh && {JOB_CMD}", env, timeout=300)
        assert job.returncode == 0 and "registered: True" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
    finally:
        subprocess.run([sys.executable, "-m", "infra.stack", "down", "--state", str(state)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
        for pid in pids.values():  # belt and braces: nothing may outlive the test
            if stack.alive(pid):
                os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(state, ignore_errors=True)
    assert not any(stack.alive(p) for p in pids.values()) and not state.exists()


def test_up_names_a_taken_port_and_starts_nothing(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "infra.stack", "up", "--state", str(tmp_path / "st"),
                               "--prefect-port", str(port), "--s3-port", "0", "--ray-port", "0", "--ray-dashboard-port", "0"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"Prefect server port {port}" in done.stderr and "--prefect-port" in done.stderr
    assert not (tmp_path / "st").exists()


def test_readme_carries_the_tested_commands():
    readme = (REPO / "README.md").read_text()
    for cmd in (COMPRESS_CMD.format(bucket="taid-samples"), REHYDRATE_CMD.format(bucket="taid-samples"), NIGHTLY_CMD, JOB_CMD):
        assert cmd in readme, f"README lacks the tested command: {cmd}"
