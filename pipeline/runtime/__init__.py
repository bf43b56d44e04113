"""The Ray machinery that knows no job: options, the actor pool, dispatch, the model server, retries.

    options.py       RayParams: workers, resources, stages, precision (shared by every job)
    actor_pool.py    stateful actors that load a model once; every item ends as a row
    stages.py        dispatch: single-stage actors, or CPU workers plus model actors (staged)
    model_server.py  model actors that batch TAD/TAU tiles for many CPU workers
    retry.py         retries of a call around transient errors
    local_env.py     what a local Ray and Prefect need on this machine
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PoolWorker": "actor_pool", "ensure_ray": "actor_pool", "torch_device": "actor_pool",
    "dispatch": "stages",
    "SERVE_ENV": "local_env", "set_local_env_defaults": "local_env",
    "bind": "model_server",
    "RayParams": "options",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The face is imported lazily (PEP 562): a caller loads only the modules it uses."""
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = module if _EXPORTS[name] == name else getattr(module, name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
