"""How a job's items reach Ray: single-stage actors, or CPU workers plus model actors (staged).
Both jobs call `dispatch`; the pool's guarantees (pipeline.runtime.actor_pool) hold either way.

Single stage (the CPU default): each actor reads, decodes, runs the model and encodes in turn, on
the device it reserved. Staged (the default when the cluster has GPUs): the actors are CPU workers
and the networks run on `model_actors` model actors that batch tiles across images
(pipeline/runtime/model_server.py), so the GPU is fed by all CPU workers at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import ray

from pipeline.runtime.actor_pool import ActorPool, LocalPool, PoolOptions, gpus_per_actor
from pipeline.runtime.options import RayParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    staged: bool
    gpus_per_worker: float  # the pool's actors (CPU workers when staged: 0)
    model_actors: int = 0
    gpus_per_model_actor: float = 0.0


def layout(p: RayParams) -> Layout:
    """Where the networks run, from the params and the cluster's GPUs (call after ray.init)."""
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if not (p.stages == "staged" or (p.stages == "auto" and gpus > 0)):
        return Layout(False, gpus_per_actor(p.gpus_per_worker, p.workers))
    per = p.gpus_per_model_actor if p.gpus_per_model_actor is not None else (1.0 if gpus else 0.0)
    count = p.model_actors or (max(1, int(gpus // per)) if per else 1)
    return Layout(True, 0.0, count, per)


def dispatch(worker_cls: type, params: RayParams, run_id: str, name: str, items: Iterable, on_row: Callable,
             crash_row: Callable, model_ids: list[str], in_process: bool = False,
             on_ready: Callable[[], None] | None = None) -> dict:
    """Run `items` through `worker_cls` actors (init args: params dict, run_id, model actors) and
    return the pool's counters, with the layout and, when staged, each model actor's report.
    `in_process`: one worker in this process, with every core (no Ray at all). The counters'
    `_timing` (lanes, batches' wall clocks, when the actors were ready) is for the job's
    utilisation report (pipeline/runtime/utilization.py), not for the run stats as it is.
    `on_ready`: called once every actor is up, before the first batch goes to one."""
    if in_process:
        import os

        cores = float(os.cpu_count() or 1)
        local = params.model_copy(update={"gpus_per_worker": 0.0, "cpus_per_worker": cores})
        log.info("%s: in this process (no Ray), loading %s", name, ", ".join(model_ids) or "models as rows need them")
        pool = LocalPool(worker_cls, (local.model_dump(), run_id, []), PoolOptions(
            workers=1, cpus=cores, gpus=0.0, batch_size=params.batch_size, max_attempts=params.max_attempts,
            name=name, batch_bytes=params.batch_bytes), crash_row=crash_row)
        counters = pool.run(items, on_row)
        return {**counters, "stages": "in_process", "_timing": _timing(pool)}
    from pipeline.runtime.model_server import start_servers

    plan = layout(params)
    params = params.model_copy(update={"gpus_per_worker": plan.gpus_per_worker})
    servers = []
    if plan.staged:
        inference = params.inference.model_dump() if params.inference else None
        servers = start_servers(model_ids, params.registry, plan.model_actors, plan.gpus_per_model_actor, 1.0,
                                params.actor_resources, name, params.tile_batch, inference)
        log.info("%s: %d CPU workers, %d model actors (%g GPU each)", name, params.workers, len(servers),
                 plan.gpus_per_model_actor)
    pool = ActorPool(worker_cls, (params.model_dump(), run_id, servers), PoolOptions(
        workers=params.workers, cpus=params.cpus_per_worker, gpus=plan.gpus_per_worker, batch_size=params.batch_size,
        max_attempts=params.max_attempts, name=name, batch_bytes=params.batch_bytes,
        resources=params.worker_resources if plan.staged else params.actor_resources), crash_row=crash_row)
    started = time.time()
    log.info("%s: starting %d actors, loading %s", name, params.workers, ", ".join(model_ids) or "models as rows need them")

    def ready() -> None:
        log.info("%s: %d actors ready in %.1f s", name, params.workers, time.time() - started)
        if on_ready is not None:
            on_ready()

    try:
        counters = pool.run(items, on_row, ready)
        if servers:
            counters["model_actors"] = ray.get([s.report.remote() for s in servers])
            counters["model_actor_nodes"] = sorted({r["node"] for r in counters["model_actors"]})
    finally:
        for s in servers:
            ray.kill(s)
    return {**counters, "stages": "staged" if plan.staged else "single", "_timing": _timing(pool)}


def _timing(pool) -> dict:
    return {"lanes": pool.lanes, "intervals": pool.intervals, "ready_at": pool.ready_at}
