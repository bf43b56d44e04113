"""What both jobs share: run ids, the S3 request counters of a run."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from pipeline import s3


def new_run_id() -> str:
    """Sortable by time, unique across machines: 20261202T044309Z-e0af7880."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def s3_counts(before: dict) -> dict:
    """S3 requests, retries and throttled answers of this driver since `before` (a copy of s3.STATS)."""
    return {k: v - before.get(k, 0) for k, v in s3.STATS.items() if v - before.get(k, 0)}
