"""What both jobs share: run ids, the S3 request counters of a run."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from pipeline.storage import s3


def new_run_id() -> str:
    """Sortable by time, unique across machines: 20261202T044309Z-e0af7880."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def s3_counts(before: dict, dispatch: dict | None = None) -> dict:
    """S3 list requests and throttled answers of the run: this driver's since `before` (a copy of
    s3.STATS) plus what the workers reported with their batches (`dispatch["s3"]`)."""
    return s3.add_counts(s3.since(before), (dispatch or {}).get("s3", {}))
