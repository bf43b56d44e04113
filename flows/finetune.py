"""Prefect flow `finetune`: fine-tune a TAID pair on a domain with Ray Train.

With `ray_address` (the Ray dashboard / Jobs API address, e.g. http://head:8265) the flow submits
`python -m pipeline.jobs.finetune ...` as a Ray job, follows its logs into the flow's log, and retries a
failed submission; without it, the same trainer runs on a local Ray in this process. Either way
the job's result (`<out>/runs/<name>/result.json`) is published as a Prefect artifact.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import fsspec
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pipeline.jobs import FinetuneConfig, run_finetune

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class FinetuneParams(FinetuneConfig):
    ray_address: str = ""
    job_timeout_s: float = 6 * 3600

    def entrypoint(self) -> str:
        args = ["python", "-m", "pipeline.jobs.finetune"]
        for name, value in self.model_dump(exclude={"ray_address", "job_timeout_s"}).items():
            if value is None or value is False:
                continue
            args.append("--" + name.replace("_", "-"))
            if value is not True:
                args.append(str(value))
        return shlex.join(args)


@task(retries=2, retry_delay_seconds=5)
def submit_job(address: str, entrypoint: str) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    # Secrets are not put in the runtime env (it is visible in the dashboard): the cluster's
    # nodes carry their own S3 credentials (environment / instance role).
    return client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(PROJECT_ROOT)})


@task
def follow_job(address: str, job_id: str, timeout_s: float) -> str:
    from ray.job_submission import JobSubmissionClient

    logger = get_run_logger()
    client = JobSubmissionClient(address)
    shown, deadline = 0, time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        for line in logs[shown:].splitlines():
            if line.strip():
                logger.info("[ray job] %s", line)
        shown = len(logs)
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"Ray job {job_id} still {status} after {timeout_s:.0f} s; stopped")
        time.sleep(2)


def read_result(params: FinetuneParams) -> dict:
    with fsspec.open(f"{params.storage_path}/{params.name}/result.json", "rb") as f:
        return json.loads(f.read())


def result_markdown(report: dict) -> str:
    held = report["heldout"]
    lines = [
        f"# Fine-tuned `{report['model_id']}` from `{report['base_model']}`",
        "",
        f"data `{report['data_uri']}`, {report['steps']} steps on {report['workers']} workers; "
        f"registered: **{report['registered']}**, sha256 `{report['sha256'][:16]}...`",
        "",
        "| split | base Y-PSNR | tuned Y-PSNR | base SSIM | tuned SSIM |",
        "|---|---:|---:|---:|---:|",
        f"| domain held-out | {held['base']['psnr_y']:.2f} | {held['tuned']['psnr_y']:.2f} | "
        f"{held['base']['ssim']:.4f} | {held['tuned']['ssim']:.4f} |",
    ]
    if "general" in report:
        g = report["general"]
        lines.append(
            f"| {g['data']} | {g['base']['psnr_y']:.2f} | {g['tuned']['psnr_y']:.2f} | "
            f"{g['base']['ssim']:.4f} | {g['tuned']['ssim']:.4f} |"
        )
    return "\n".join(lines)


@flow(name="finetune")
def finetune(params: FinetuneParams) -> dict:
    logger = get_run_logger()
    if params.ray_address:
        job_id = submit_job(params.ray_address, params.entrypoint())
        logger.info("submitted Ray job %s to %s", job_id, params.ray_address)
        status = follow_job(params.ray_address, job_id, params.job_timeout_s)
        if status != "SUCCEEDED":
            raise RuntimeError(f"Ray job {job_id} ended {status}")
        report = read_result(params)
    else:
        report = run_finetune(FinetuneConfig(**params.model_dump(exclude={"ray_address", "job_timeout_s"})), log=logger.info)
    create_markdown_artifact(result_markdown(report), key=f"finetune-{params.name}".lower(), description="fine-tuning result")
    return report
