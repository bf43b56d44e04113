"""The job layer: compress and rehydrate runs as plain Python, no Prefect.

    from pipeline.jobs import run_compress, run_rehydrate
    result = run_compress(CompressArchiveParams(source=..., dest=...))

Each job plans, dispatches to the `ActorPool`, writes its manifest and, last, its run stats.
`flows/` wraps them with Prefect (artifacts, run logs, retries, schedules); the CLI calls them
directly or through the flow (docs/architecture.md says when and why).
"""

from pipeline.jobs.compress import CompressResult, run_compress, summary_table
from pipeline.jobs.progress import Progress, TqdmProgress
from pipeline.jobs.rehydrate import RehydrateResult, run_rehydrate

__all__ = ["CompressResult", "Progress", "RehydrateResult", "TqdmProgress", "run_compress", "run_rehydrate",
           "summary_table"]
