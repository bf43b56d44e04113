"""What the flows add to the job layer: pipeline/models log records in Prefect's run logs, and a
progress artifact."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from pipeline.settings import LOGGERS


class _ToRunLogger(logging.Handler):
    def __init__(self, run_logger):
        super().__init__(logging.INFO)
        self.run_logger = run_logger

    def emit(self, record: logging.LogRecord) -> None:
        self.run_logger.log(record.levelno, "%s: %s", record.name, record.getMessage())


@contextmanager
def run_logs():
    """Forward the job layer's records (and the actors' records it re-emits) to this run's logs."""
    handler = _ToRunLogger(get_run_logger())
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)


class ArtifactProgress:
    """A job's progress (pipeline.jobs.progress.Progress) as a Prefect progress artifact."""

    def __init__(self, key: str, description: str):
        self.id = create_progress_artifact(0.0, key=key, description=description)

    def update(self, done: int, total: int) -> None:
        update_progress_artifact(self.id, min(100.0, 100.0 * done / max(total, 1)))

    def close(self, done: int) -> None:
        update_progress_artifact(self.id, 100.0)
