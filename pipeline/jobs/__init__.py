"""The job layer: compress and rehydrate runs as plain Python, no Prefect.

    from pipeline.jobs import run_compress, run_rehydrate
    result = run_compress(CompressArchiveParams(source=..., dest=...))

Each job plans, dispatches to the `ActorPool`, writes its manifest and, last, its run stats.
`flows/` wraps them with Prefect (artifacts, run logs, retries, schedules); the CLI calls them
directly or through the flow (docs/architecture.md says when and why).
"""

from __future__ import annotations

from pipeline.face import lazy_face

_EXPORTS = {
    "new_run_id": "common",
    "CompressResult": "compress", "run_compress": "compress", "summary_table": "compress",
    "FinetuneConfig": "finetune", "run_finetune": "finetune",
    "CompressArchiveParams": "params", "RehydrateParams": "params",
    "Both": "progress", "Progress": "progress", "TqdmProgress": "progress",
    "RehydrateResult": "rehydrate", "run_rehydrate": "rehydrate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS, globals())
