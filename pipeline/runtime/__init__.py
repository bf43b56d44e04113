"""The Ray machinery that knows no job: options, the actor pool, dispatch, the model server, retries.

    options.py       RayParams: workers, resources, stages, precision (shared by every job)
    actor_pool.py    stateful actors that load a model once; every item ends as a row
    dispatch.py      single-stage actors, or CPU workers plus model actors (staged)
    model_server.py  model actors that batch TAD/TAU tiles for many CPU workers
    retry.py         retries of a call around transient errors
    local_env.py     what a local Ray and Prefect need on this machine
"""
