"""Prefect flow `rehydrate`: `pipeline.jobs.run_rehydrate` with Prefect around it (a task in the UI,
the run's logs, a summary table). See pipeline/jobs/rehydrate.py for what it does."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.run_logs import ArtifactProgress, run_logs
from pipeline.jobs import (
    RehydrateParams,  # noqa: F401  (this flow's parameter type)
    new_run_id,
    run_rehydrate,
)


@task(name="rehydrate-rows")
def rehydrate_rows(params: RehydrateParams, run_id: str) -> dict:
    with run_logs():
        return dict(run_rehydrate(params, ArtifactProgress("rehydrate-progress", f"run {run_id}"), run_id))


@flow(name="rehydrate")
def rehydrate(params: RehydrateParams, run_id: str | None = None) -> dict:
    run_id = run_id or new_run_id()
    result = rehydrate_rows(params, run_id)
    if not result.get("dry_run"):
        table = [{"metric": "selected", "value": result["selected"]},
                 {"metric": "already rehydrated", "value": result["already_done"]}]
        table += [{"metric": f"status {k}", "value": v} for k, v in result["by_status"].items()]
        table.append({"metric": "seconds", "value": round(result["seconds"], 2)})
        create_table_artifact(table, key="rehydrate-summary", description=f"run {run_id}")
    return result
