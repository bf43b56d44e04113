"""Prefect flow `compress-archive`: `pipeline.jobs.run_compress` with Prefect around it (a task in
the UI, the run's logs, a progress artifact and a summary table). Run it from Python, from
`taid compress-archive --prefect`, or as a deployment (prefect.yaml)."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.run_logs import ArtifactProgress, run_logs
from pipeline.jobs import Both, CompressArchiveParams, TqdmProgress, new_run_id, run_compress, summary_table


@task(name="compress-objects")
def compress_objects(params: CompressArchiveParams, run_id: str) -> dict:
    with run_logs():
        progress = ArtifactProgress("compress-archive-progress", f"run {run_id}")
        if params.show_progress:  # the CLI through the flow: its bar too
            progress = Both(progress, TqdmProgress("compress-archive"))
        return dict(run_compress(params, progress, run_id))


@flow(name="compress-archive")
def compress_archive(params: CompressArchiveParams, run_id: str | None = None) -> dict:
    run_id = run_id or new_run_id()
    result = compress_objects(params, run_id)
    if not result.get("dry_run"):
        create_table_artifact(summary_table(result), key="compress-archive-summary", description=f"run {run_id}")
    return result
