"""The actor pool on a real local Ray: lazy consumption, crash recovery, poison objects, GPUs."""

from __future__ import annotations

import logging
import os
import sys

from ray import cloudpickle

from pipeline.runtime.actor_pool import ActorPool, PoolOptions, PoolWorker, gpus_per_actor

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/ modules


class EchoWorker(PoolWorker):
    """A model-free worker: one row per item; an item named 'poison*' kills its process, one named
    'warn*' logs a warning."""

    def __init__(self, tag: str):
        self.tag = tag

    def handle(self, item: dict, attempt: int) -> dict:
        if item["key"].startswith("poison"):
            os._exit(1)  # a hard crash (segfaulting decoder, OOM kill): no exception reaches Ray
        if item["key"].startswith("warn"):
            logging.getLogger("pipeline.jobs.workers").warning("odd object %s", item["key"])
        return {"source_key": item["key"], "status": "ok", "attempts": attempt, "pid": os.getpid()}


def crash_row(item: dict, attempt: int, exc: Exception) -> dict:
    return {"source_key": item["key"], "status": "failed_worker_crash", "attempts": attempt}


def test_poison_object_fails_alone_and_everything_else_is_done_once(ray_local):
    keys = [f"k{i:02d}" for i in range(20)]
    keys.insert(7, "poison-a")
    keys.insert(13, "poison-b")
    pulled = []

    def items():
        for k in keys:
            pulled.append(k)
            yield {"key": k}

    rows = []
    pool = ActorPool(EchoWorker, ("t",), PoolOptions(workers=2, cpus=0.5, gpus=0.0, batch_size=4, max_attempts=2,
                                                     name="test-echo"), crash_row=crash_row)
    counters = pool.run(items(), rows.append)
    by_key = {r["source_key"]: r for r in rows}
    assert len(rows) == len(keys) == len(by_key)  # every item exactly once
    for poison in ("poison-a", "poison-b"):
        assert by_key[poison] == {"source_key": poison, "status": "failed_worker_crash", "attempts": 2}
    # the poisons' batch-mates were retried one by one and succeeded on attempt 2
    mates = [k for k in keys[4:8] + keys[12:16] if not k.startswith("poison")]
    assert all(by_key[k]["status"] == "ok" and by_key[k]["attempts"] == 2 for k in mates)
    # everything else succeeded; at most one extra attempt (a call that finished just before its
    # actor died can lose its reply and take the blame once, then succeeds alone)
    assert all(r["status"] == "ok" and r["attempts"] in (1, 2) for r in rows if not r["source_key"].startswith("p"))
    assert sum(r["status"] == "ok" for r in rows) == len(keys) - 2
    # each poison crashes an actor at least twice (with its batch, then alone); one restart per crash
    assert counters["actor_restarts"] >= 4
    assert pulled == keys
    import ray

    assert not [a for a in ray.util.list_named_actors() if a.startswith("test-echo")]  # killed at the end


def test_gpus_are_automatic(ray_local):
    import ray

    assert ray.cluster_resources().get("GPU", 0) == 0
    assert gpus_per_actor(None, 2) == 0.0  # no GPU in this cluster: the CPU
    assert gpus_per_actor(0.25, 2) == 0.25  # an explicit request is kept


def test_worker_logs_reach_the_driver(ray_local, caplog):
    """A warning logged inside an actor comes back with its batch and is re-emitted on the driver
    under the same logger name (so the CLI's stderr and Prefect's run logs show it)."""
    pool = ActorPool(EchoWorker, ("t",), PoolOptions(workers=1, cpus=0.5, gpus=0.0, batch_size=2, max_attempts=1,
                                                     name="test-logs"), crash_row=crash_row)
    rows = []
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        pool.run(iter([{"key": "a"}, {"key": "warn-me"}, {"key": "b"}]), rows.append)
    assert len(rows) == 3
    records = [r for r in caplog.records if r.name == "pipeline.jobs.workers"]
    assert [r.getMessage() for r in records] == ["[worker] odd object warn-me"]
    assert records[0].levelno == logging.WARNING
