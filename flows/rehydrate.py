"""Prefect flow `rehydrate`: full-resolution images back from an archive, in parallel on Ray.

Selection: explicit keys, a key prefix, a glob, and/or the rows of one compress run. Each
selected key's latest `ok` row is rehydrated by Ray actors (models cached per model id + sha256)
into `to`, and a manifest of what was produced goes to `to/_manifest/run=<id>/` with run stats
in `to/_runs/<id>.json` (written last). Same rules as compress-archive: refusals and failures are
rows with a status, writes are atomic, and a rerun skips images already rehydrated from the same
small file.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from pipeline.manifest import ManifestWriter, write_run_stats
from pipeline.rehydrate_batch import (  # noqa: F401  (RehydrateParams is this flow's parameter type)
    REHYDRATE_SCHEMA,
    RehydrateParams,
    RehydrateWorker,
    already_done,
    done_row,
    select_rows,
)
from pipeline.storage import filesystem

@task(name="rehydrate-rows")
def rehydrate_rows(params: RehydrateParams, run_id: str) -> dict:
    from pipeline.ray_workers import ensure_ray, run_actor_pool

    logger = get_run_logger()
    started = time.time()
    selected = select_rows(params)
    done = already_done(params)
    todo = [r for r in selected if (r["source_key"], r["output_sha256"]) not in done]
    logger.info("rehydrate %s: %d selected, %d already rehydrated", run_id, len(selected), len(selected) - len(todo))
    result = {"run_id": run_id, "archive": params.archive, "to": params.to, "selected": len(selected),
              "already_done": len(selected) - len(todo)}
    if params.dry_run:
        return {**result, "dry_run": True, "keys": [r["source_key"] for r in todo]}
    fs, root = filesystem(params.to, params.storage_options)
    writer = ManifestWriter(fs, root, run_id, schema=REHYDRATE_SCHEMA)
    by_status: dict[str, int] = {}

    def on_row(row: dict) -> None:
        writer.add(row)
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1

    def crash_row(item: dict, attempt: int, exc: Exception) -> dict:
        return done_row({"run_id": run_id, "source_key": item["source_key"], "small_uri": item["output_uri"],
                      "attempts": attempt}, status="failed", error_message=f"worker crashed: {type(exc).__name__}")

    dispatch = {"actor_restarts": 0, "batches": 0}
    try:
        if todo:
            ensure_ray(params.ray_address)
            dispatch = run_actor_pool(
                RehydrateWorker, (params.model_dump(), run_id), iter(todo), on_row, workers=params.workers,
                cpus=params.cpus_per_worker, gpus=params.gpus_per_worker, batch_size=params.batch_size,
                max_attempts=params.max_attempts, name=f"taid-rehydrate-{run_id}", crash_row=crash_row,
                resources=params.actor_resources,
            )
    finally:
        writer.close()
    result.update({"rows": writer.rows, "by_status": dict(sorted(by_status.items())), "dispatch": dispatch,
                   "seconds": time.time() - started})
    write_run_stats(fs, root, run_id, result)
    return result


@flow(name="rehydrate")
def rehydrate(params: RehydrateParams, run_id: str | None = None) -> dict:
    from flows.compress_archive import new_run_id

    run_id = run_id or new_run_id()
    result = rehydrate_rows(params, run_id)
    if not result.get("dry_run"):
        table = [{"metric": "selected", "value": result["selected"]},
                 {"metric": "already rehydrated", "value": result["already_done"]}]
        table += [{"metric": f"status {k}", "value": v} for k, v in result["by_status"].items()]
        table.append({"metric": "seconds", "value": round(result["seconds"], 2)})
        create_table_artifact(table, key="rehydrate-summary", description=f"run {run_id}")
    return result
