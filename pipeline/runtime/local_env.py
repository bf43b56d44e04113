"""The environment a local Ray and Prefect need on this machine (../shared/INFRA-NOTES.md): Ray bound
to loopback without token auth or usage stats, Prefect without analytics. Apply it before `ray` or
`prefect` is imported; values already in the environment win."""

from __future__ import annotations

import os

LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def set_local_env_defaults(**extra: str) -> None:
    """os.environ.setdefault for LOCAL_ENV plus the caller's `extra` variables."""
    for key, value in {**LOCAL_ENV, **extra}.items():
        os.environ.setdefault(key, value)


# A Ray that `taid serve` starts itself: Serve's throughput preset (user code and router on the
# replica's own loop, gRPC from proxy to replica, buffered request logs, GC frozen after start-up),
# without its direct ingress (that would move the port away from --port). Measured with 16
# clients on cached thumbnails: 455 -> 540 req/s, p99 68 -> 51 ms (docs/serve.md). Read by every
# Serve process at import, so set before Ray starts; a cluster's own settings are left alone.
SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
