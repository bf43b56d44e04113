"""The rehydrate job: full-resolution images back from an archive, in parallel on the ActorPool.

Selection: explicit keys, a key prefix, a glob, and/or the rows of one compress run
(`pipeline.jobs.select.select_rows`, through the shared manifest reader). Each selected key's
latest `ok` row is rehydrated by `RehydrateWorker`s into `to`, with a manifest of what was produced
(`pipeline.manifest.rows.RestoredRow`) in `to/_manifest/run=<id>/` and run stats in `to/_runs/<id>.json`
(written last). Refusals and failures are rows with a status, writes are atomic, and a rerun skips
images already rehydrated from the same small file.
"""

from __future__ import annotations

import logging
import time
from typing import TypedDict

from pipeline.jobs.common import new_run_id, s3_counts
from pipeline.jobs.params import RehydrateParams
from pipeline.jobs.progress import NoProgress, Progress, Throttled
from pipeline.jobs.select import REHYDRATE_SCHEMA, not_done, select_rows
from pipeline.manifest import ManifestWriter, RestoredRow, RestoredRows, write_run_stats
from pipeline.storage import s3

log = logging.getLogger(__name__)


class RehydrateResult(TypedDict, total=False):
    run_id: str
    archive: str
    to: str
    selected: int
    already_done: int  # selected keys whose file an earlier run wrote from the same small file
    dry_run: bool
    keys: list[str]  # dry runs only: what would be rehydrated
    rows: int
    by_status: dict
    dispatch: dict
    seconds: float
    utilization: dict  # held core-s vs busy (the workers' process CPU-s), idle by cause (pipeline/runtime/utilization.py)
    s3: dict  # throttled answers...: driver + workers


def run_rehydrate(params: RehydrateParams, progress: Progress | None = None,
                  run_id: str | None = None) -> RehydrateResult:
    from pipeline.jobs.workers import RehydrateWorker
    from pipeline.runtime import RunClock, ensure_ray, run_utilization
    from pipeline.runtime import dispatch as run_on_ray

    run_id = run_id or new_run_id()
    progress = Throttled(progress or NoProgress())
    started = time.time()
    clock = RunClock(started)
    s3_before = dict(s3.STATS)
    params.check_storage()
    selected = select_rows(params)
    todo = not_done(params, selected)
    log.info("rehydrate %s: %d selected, %d already rehydrated", run_id, len(selected), len(selected) - len(todo))
    result: RehydrateResult = {"run_id": run_id, "archive": params.archive, "to": params.to,
                               "selected": len(selected), "already_done": len(selected) - len(todo)}
    if params.dry_run:
        return {**result, "dry_run": True, "keys": [r["source_key"] for r in todo]}
    fs, root = params.fs(params.to)
    writer = ManifestWriter(fs, root, run_id, schema=REHYDRATE_SCHEMA)
    by_status: dict[str, int] = {}

    def on_row(row: RestoredRow) -> None:
        writer.add(row)
        by_status[row.status] = by_status.get(row.status, 0) + 1
        progress.update(sum(by_status.values()), len(todo))

    dispatch = {"actor_restarts": 0, "batches": 0}
    machine = False
    clock.mark("planning")
    try:
        if todo:
            machine = ensure_ray(params.ray_address)
            clock.mark("ray")
            dispatch = run_on_ray(RehydrateWorker, params, run_id, f"taid-rehydrate-{run_id}", iter(todo), on_row,
                                  RestoredRows(run_id).crash, [])
    finally:
        writer.close()
        progress.close(writer.rows)
    timing = dispatch.pop("_timing", None)
    result.update({"rows": writer.rows, "by_status": dict(sorted(by_status.items())), "dispatch": dispatch,
                   "seconds": time.time() - started,
                   "utilization": run_utilization(clock, timing, dispatch.get("process_cpu_s", 0.0), time.time(), machine,
                                                  dispatch.get("model_actors")),
                   "s3": s3_counts(s3_before, dispatch)})
    write_run_stats(fs, root, run_id, result)
    log.info("rehydrate %s: %d rows %s in %.1f s", run_id, result["rows"], result["by_status"], result["seconds"])
    return result
