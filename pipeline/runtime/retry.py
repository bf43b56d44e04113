"""Retries of a batch around transient errors (the pool and the model server share them)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


RETRIES = 3  # tries of a call `with_retries` wraps (the model actor's)


def with_retries(fn, what: str, transient: type[Exception] = Exception, delay: float = 0.2):
    """fn(), tried RETRIES times when it raises `transient` (waits `delay`, then 4x longer); a
    missing or forbidden object is never transient. Not for storage: S3 requests already retry
    by the one policy in `pipeline.storage.s3`, and a local disk error (full, read-only) does not pass."""
    for attempt in range(RETRIES):
        try:
            return fn()
        except (FileNotFoundError, PermissionError):
            raise  # not transient
        except transient as exc:
            if attempt == RETRIES - 1:
                raise
            log.warning("%s failed (attempt %d of %d, retrying): %s: %s", what, attempt + 1, RETRIES,
                        type(exc).__name__, exc)
            time.sleep(delay)
            delay *= 4
