"""S3 robustness: adaptive retries, throttling counts, native Arrow filesystems and one-line errors.

- Retries: botocore's `adaptive` mode (exponential backoff with full jitter, capped at 20 s per
  wait, plus a client-side rate limiter that slows down after 503 SlowDown), at most
  `MAX_ATTEMPTS` tries per call; s3fs's own retry loop around it is cut to `S3FS_RETRIES`, so one
  call waits at most about S3FS_RETRIES x (sum of botocore's waits) ~ 2 x 51 s in the worst case.
- Throttling: every retry botocore makes because of a throttling answer is counted in
  `STATS` (this process); the flow puts the counts in the run stats.
- Arrow: pyarrow's own S3/local filesystems read Parquet far faster than fsspec's Python handler;
  `arrow_filesystem(fs)` builds the one matching an fsspec filesystem (pyarrow ignores
  AWS_ENDPOINT_URL, so the endpoint is passed explicitly).
- Errors: `explain(exc)` turns missing credentials, an unreachable endpoint and a missing bucket
  into one line saying what to set (`StorageConfigError`); `check_access` finds them up front.
"""

from __future__ import annotations

import threading
from collections import Counter
from functools import lru_cache

from pipeline.settings import get_settings

MAX_ATTEMPTS = 8
S3FS_RETRIES = 2
RETRY_CONFIG = {"retries": {"mode": "adaptive", "max_attempts": MAX_ATTEMPTS}, "connect_timeout": 5, "read_timeout": 30}
THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                            "TooManyRequests", "TooManyRequestsException", "RequestThrottled", "503"})

STATS: Counter = Counter()  # throttled, retries, list_requests (this process)
_lock = threading.Lock()


def count(name: str, n: int = 1) -> None:
    with _lock:
        STATS[name] += n


def with_retry_config(options: dict) -> dict:
    """s3fs options with adaptive retries, unless the caller configured retries itself."""
    config = dict(options.get("config_kwargs") or {})
    for k, v in RETRY_CONFIG.items():
        config.setdefault(k, v)
    return {**options, "config_kwargs": config}


def _on_retry(response=None, attempts=None, caught_exception=None, **_):
    """botocore `needs-retry` hook: count retries and, among them, throttling answers."""
    if response is None and caught_exception is None:
        return None
    status, code = None, None
    if response is not None:
        http, parsed = response
        status = getattr(http, "status_code", None)
        code = (parsed or {}).get("Error", {}).get("Code")
    if status in (429, 503) or code in THROTTLE_CODES:
        count("throttled")
    return None  # never decides: botocore's retry handler does


def watch(fs) -> None:
    """Register the retry counter on an s3fs filesystem's client (once per client)."""
    try:
        client = fs.s3
    except Exception:  # no client yet (e.g. no credentials): the first real call reports it
        return
    if not getattr(client, "_taid_watched", False):
        client.meta.events.register_first("needs-retry.s3", _on_retry)
        client._taid_watched = True


@lru_cache(maxsize=16)
def _arrow_s3(endpoint: str | None, key: str | None, secret: str | None, token: str | None, region: str | None):
    from pyarrow import fs as pafs

    kw: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS)}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kw.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if key and secret:
        kw.update(access_key=key, secret_key=secret, session_token=token)
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def arrow_filesystem(fs):
    """A pyarrow filesystem reading the same paths as the fsspec `fs` (paths without scheme)."""
    from pyarrow import fs as pafs

    from pipeline.storage import protocol_prefix

    proto = protocol_prefix(fs)
    if proto == "":
        return pafs.LocalFileSystem()
    if proto in ("s3://", "s3a://"):
        ck = getattr(fs, "client_kwargs", {}) or {}
        env = get_settings()
        endpoint = getattr(fs, "endpoint_url", None) or ck.get("endpoint_url") or env.aws_endpoint_url
        region = ck.get("region_name") or env.aws_region
        return _arrow_s3(endpoint, fs.key or ck.get("aws_access_key_id"), fs.secret or ck.get("aws_secret_access_key"),
                         fs.token or ck.get("aws_session_token"), region)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


class StorageConfigError(RuntimeError):
    """Storage is not usable as configured; the message is one line saying what to set."""


def _endpoint(fs) -> str:
    ck = getattr(fs, "client_kwargs", {}) or {}
    return (getattr(fs, "endpoint_url", None) or ck.get("endpoint_url") or get_settings().aws_endpoint_url
            or "AWS S3 (default endpoint)")


def explain(exc: BaseException, fs=None, bucket: str | None = None) -> str | None:
    """One line for a storage misconfiguration, or None when `exc` is something else."""
    import botocore.exceptions as be

    seen, e = set(), exc
    while e is not None and id(e) not in seen:  # the cause chain: s3fs wraps botocore errors
        seen.add(id(e))
        if isinstance(e, StorageConfigError):
            return str(e)
        if isinstance(e, (be.NoCredentialsError, be.PartialCredentialsError)):
            return ("no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / "
                    "~/.aws/credentials, or a workload identity)")
        if isinstance(e, (be.EndpointConnectionError, be.ConnectTimeoutError)) or (
                isinstance(e, ConnectionRefusedError)):
            where = _endpoint(fs) if fs is not None else "the S3 endpoint"
            return f"cannot reach S3 at {where}: check AWS_ENDPOINT_URL (or --endpoint-url) and that the server is up"
        code = getattr(e, "response", {}).get("Error", {}).get("Code") if isinstance(e, be.ClientError) else None
        text = str(e)
        if code == "NoSuchBucket" or "NoSuchBucket" in text or "specified bucket does not exist" in text:
            return f"S3 bucket {bucket or '(of the URI)'} does not exist: create it or fix the s3:// URI"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or "InvalidAccessKeyId" in text:
            return "S3 refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        e = e.__cause__ or e.__context__
    return None


# the up-front check fails fast: two tries, short timeouts (the run itself retries adaptively)
PREFLIGHT = {"retries": {"mode": "standard", "max_attempts": 2}, "connect_timeout": 3, "read_timeout": 10}


def check_access(fs, path: str) -> None:
    """Fail fast with a one-line StorageConfigError when an s3:// location cannot be used: one
    HeadBucket call (credentials, endpoint and bucket in one request). Other filesystems pass."""
    import fsspec

    from pipeline.storage import protocol_prefix

    if protocol_prefix(fs) not in ("s3://", "s3a://"):
        return
    bucket = path.split("/", 1)[0]
    quick = fsspec.filesystem("s3", **{**fs.storage_options, "config_kwargs": {
        **(fs.storage_options.get("config_kwargs") or {}), **PREFLIGHT}})
    quick.retries = 1
    try:
        quick.call_s3("head_bucket", Bucket=bucket)
    except Exception as exc:
        line = explain(exc, fs, bucket)
        if line is None and isinstance(exc, FileNotFoundError):
            line = f"S3 bucket {bucket} does not exist: create it or fix the s3:// URI"
        if line is None:
            raise
        raise StorageConfigError(line) from None
