"""The Ray machinery that knows no job: options, the actor pool, dispatch, the model server, retries.

    options.py       RayParams: workers, resources, stages, precision (shared by every job)
    actor_pool.py    stateful actors that load a model once; every item ends as a row
    stages.py        dispatch: single-stage actors, or CPU workers plus model actors (staged)
    model_server.py  model actors that batch TAD/TAU tiles for many CPU workers
    retry.py         retries of a call around transient errors
    local_env.py     what a local Ray and Prefect need on this machine
    utilization.py   held core-seconds against busy CPU-seconds, and where the idle time went (no Ray)
"""

from __future__ import annotations

from pipeline.face import lazy_face

_EXPORTS = {
    "PoolWorker": "actor_pool", "ensure_ray": "actor_pool",
    "DriverLane": "actor_pool", "Shared": "actor_pool", "torch_device": "actor_pool",
    "dispatch": "stages",
    "SERVE_ENV": "local_env", "set_local_env_defaults": "local_env",
    "bind": "model_server",
    "RayParams": "options",
    "RunClock": "utilization", "process_started": "utilization", "run_utilization": "utilization",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS, globals())
