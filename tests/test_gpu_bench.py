"""benchmarks/gpu.py, the GPU machine check, runs end to end on the CPU (--device cpu) on a few
tiny images: real SeaweedFS, local Ray, the compress and rehydrate entry points. It starts its own
services, so it runs in a subprocess (the session's Ray and S3 fixtures are not touched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("device", "compress_mp_per_s_per_gpu", "rehydrate_mp_per_s_per_gpu", "gpu_busy_fraction",
        "bf16_psnr_delta_db", "stages", "cross_device", "compress", "rehydrate")


def test_gpu_bench_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--images", "3",
           "--min-mp", "0.02", "--max-mp", "0.04", "--workers", "1", "--sample", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_ADDRESS", "TAID_RAY_ADDRESS"):
        env.pop(k, None)  # the benchmark starts its own S3 and Ray
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(KEYS) <= set(report)
    assert out.with_suffix(".md").exists()
    assert report["device_kind"] == "cpu" and report["gpus"] == 0 and report["gpu_busy_fraction"] is None
    assert report["compress"]["by_status"] == {"ok": 3} and report["rehydrate"]["by_status"] == {"ok": 3}
    assert report["compress_mp_per_s_per_gpu"] > 0 and report["rehydrate_mp_per_s_per_gpu"] > 0
    # bf16 on the CPU: a small loss, never a gain of note (measured -0.03..0 dB on Set5/Set14)
    assert -0.2 < report["bf16_psnr_delta_db"] < 0.05
    shares = report["stages"]["share"]
    assert abs(sum(shares.values()) - 1) < 1e-6 and shares["model"] > 0
    # same device, same path: the cross-device check must find nothing
    assert report["cross_device"]["images"] == 2 and report["cross_device"]["max_abs_diff"] == 0
