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
