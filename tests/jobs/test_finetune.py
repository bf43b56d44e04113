"""Distributed fine-tuning on the real S3 server: Ray Train DDP, checkpoint/resume, registry,
then compress + rehydrate with the new model id; and `ray job submit` on a real Ray head."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from infra.local_s3 import free_port
from models.registry import lookup
from models.synthetic import render_document
from models.zoo import WeightsError, load_pair
from pipeline.codec.options import CodecOptions, RehydrateError
from pipeline.codec.image import compress_image, decode_output, rehydrate_image

from tests import ROOT as REPO
TINY = dict(workers=2, steps=6, batch=2, patch=48, ckpt_every=2, holdout_every=4, warmup_steps=2)


def upload_documents(fs, prefix: str, count: int = 8, size: int = 96) -> list[bytes]:
    pages = []
    for i in range(count):
        buf = io.BytesIO()
        render_document(i, size, size).save(buf, "PNG")
        fs.pipe(f"{prefix}/doc-{i:02d}.png", buf.getvalue())
        pages.append(buf.getvalue())
    return pages


def test_finetune_flow_resumes_registers_and_serves(s3, bucket, ray_local, prefect_harness):
    from flows.finetune import FinetuneParams, finetune

    fs = s3.filesystem()
    pages = upload_documents(fs, f"{bucket}/docs")
    registry = f"s3://{bucket}/models"
    params = FinetuneParams(
        data=f"s3://{bucket}/docs/", base="taid-x2", name="taid-x2-docs", out=registry,
        fail_at_step=3, force_register=True, **TINY,
    )
    report = finetune(params)

    # the injected failure at step 3 was recovered from the step-2 checkpoint on S3
    assert report["steps"] == 6 and report["resumed_from"] == 2
    run_dir = f"{bucket}/models/runs/taid-x2-docs"
    assert any(Path(p).name.startswith("checkpoint_") for p in fs.ls(run_dir))
    assert json.loads(fs.cat(f"{run_dir}/result.json"))["sha256"] == report["sha256"]
    assert set(report["heldout"]) == {"base", "tuned"} and report["registered"]

    entry = lookup("taid-x2-docs", registry)
    assert entry["sha256"] == report["sha256"] and entry["base_model"] == "taid-x2"
    assert fs.exists(entry["weights"])
    assert lookup("taid-x2-docs", registry, report["sha256"])["weights"] == entry["weights"]

    # compress and rehydrate with the new model id, resolved through the registry
    tuned = load_pair("taid-x2-docs", registry=registry)
    assert tuned.weights_sha256 == report["sha256"]
    small, _, record = compress_image(pages[0], tuned, CodecOptions(model_id="taid-x2-docs"))
    assert record.ok and record.model_id == "taid-x2-docs" and record.model_sha256 == report["sha256"]
    restored = decode_output(rehydrate_image(small, None, tuned))
    assert restored.size == (96, 96)
    with pytest.raises(RehydrateError, match="refusing to guess"):
        rehydrate_image(small, None, load_pair("taid-x2"))
    with pytest.raises(WeightsError, match="not registered"):
        load_pair("taid-x2-nosuch", registry=registry)


def test_registration_needs_a_gain_unless_forced(s3, bucket, ray_local):
    from pipeline.jobs.finetune import FinetuneConfig, run_finetune

    fs = s3.filesystem()
    upload_documents(fs, f"{bucket}/docs", count=5)
    cfg = FinetuneConfig(
        data=f"s3://{bucket}/docs/", base="taid-x2", name="taid-x2-noop", out=f"s3://{bucket}/models",
        **{**TINY, "steps": 2, "lr": 1e-12, "workers": 1},  # a learning rate that cannot help
    )
    report = run_finetune(cfg)
    assert report["gain_db"] <= 1e-6 and not report["registered"]
    with pytest.raises(WeightsError, match="not registered"):
        lookup("taid-x2-noop", cfg.out)


@pytest.fixture
def ray_head(s3):
    """A real `ray start --head` (its own ports and temp dir), killed with its process group."""
    # Ray's socket paths must stay under 107 characters: pytest's tmp_path is too deep for them
    temp = Path(tempfile.mkdtemp(prefix="rayhead-"))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    dash = free_port()
    ports = {
        "--port": free_port(), "--dashboard-port": dash, "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port(),
        "--node-manager-port": free_port(), "--object-manager-port": free_port(),
    }
    cmd = [str(bin_dir / "ray"), "start", "--head", "--block", "--num-cpus=2", "--dashboard-host=127.0.0.1",
           f"--temp-dir={temp}", "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())]
    log = open(temp / "head.log", "wb")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 90
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise RuntimeError(f"Ray head did not come up: {(temp / 'head.log').read_text()[-2000:]}")
                time.sleep(1)
        yield address, env
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_end_to_end_and_flow_submission(s3, bucket, ray_head, prefect_harness):
    from flows.finetune import FinetuneParams, finetune

    address, env = ray_head
    fs = s3.filesystem()
    upload_documents(fs, f"{bucket}/docs", count=5)
    registry = f"s3://{bucket}/models"
    job = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
         "python", "-m", "pipeline.jobs.finetune", "--data", f"s3://{bucket}/docs/", "--base", "taid-x2",
         "--name", "taid-x2-cli", "--out", registry, "--workers", "1", "--steps", "2", "--batch", "2",
         "--patch", "48", "--ckpt-every", "2", "--holdout-every", "4", "--force-register"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "registered: True" in job.stdout
    assert lookup("taid-x2-cli", registry)["data_uri"] == f"s3://{bucket}/docs/"

    # the Prefect flow submits the same job through the Jobs API and follows it
    report = finetune(FinetuneParams(
        data=f"s3://{bucket}/docs/", base="taid-x2", name="taid-x2-flowjob", out=registry, ray_address=address,
        workers=1, steps=2, batch=2, patch=48, ckpt_every=2, holdout_every=4, force_register=True,
    ))
    assert report["registered"] and lookup("taid-x2-flowjob", registry)["sha256"] == report["sha256"]
