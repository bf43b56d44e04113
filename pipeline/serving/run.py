"""Run the archive server in this process until stopped (what `taid serve` does): a local Ray (or
the given cluster), the app deployed on host:port, then wait for Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from pipeline.serving.config import ServeParams


def serve_until_stopped(params: ServeParams, host: str = "127.0.0.1", port: int = 8000, replicas: int | None = None,
                        access_log: bool = False, ray_address: str | None = None,
                        on_ready: Callable[[str], None] = print) -> None:
    """Deploy `params`' archive on host:port and serve until Ctrl-C / SIGTERM; `on_ready` gets a
    line with the URL. Without `ray_address` a local Ray with Serve's throughput settings."""
    from pipeline.runtime import SERVE_ENV, set_local_env_defaults

    if not ray_address:  # our own local Ray: Serve's throughput settings, before ray is imported
        set_local_env_defaults(**SERVE_ENV)
    import ray
    from ray import serve

    from pipeline.serving.app import deploy

    ray.init(address=ray_address or "local", include_dashboard=False if not ray_address else None,
             log_to_driver=False)
    url = deploy(params, host=host, port=port, num_replicas=replicas, access_log=access_log)
    on_ready(f"serving {params.archive} at {url} "
             f"({'no token: loopback only' if params.allow_anonymous else 'token required'}); Ctrl-C stops")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    serve.shutdown()
