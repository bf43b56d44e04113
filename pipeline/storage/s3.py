"""S3 robustness: one retry policy, throttling counts, Arrow filesystems and one-line errors.

- Retries: ONE policy, botocore's `standard` mode, at the bottom of every S3 request (reads,
  writes, listings, HEADs; index and manifest reads included): at most `MAX_ATTEMPTS` tries, with
  full-jitter exponential backoff (after a throttling answer: rand x 1, 2, 4, 8 s). Nothing above
  it retries storage again (s3fs's own loop is off: `S3FS_RETRIES` = 1 try; the workers do not
  retry reads or writes), so one request waits at most `MAX_BACKOFF_S` (15 s) between its tries
  and an object that is always throttled fails after `MAX_ATTEMPTS` PUTs instead of three nested
  loops' 54. Not `adaptive`: its client-side rate limiter made a run through a proxy throttling
  30 % of requests take 56 s instead of 30 s, and its waits have no bound. The start-up check
  (`check_access`) applies the same numbers to throttling answers only, so a wrong endpoint
  still fails at once.
- Throttling: every throttling answer (429/503, SlowDown...) is counted in `STATS` of the process
  that got it; workers send their counts back with each batch (`actor_pool.Reply.counts`) and the
  run stats add them up (`"s3": {"throttled": ..., "throttled_gave_up": ...}`; gave up = a
  request still throttled at its last try, so its object failed).
- Arrow: `arrow_filesystem(fs)` gives Arrow the paths of an fsspec filesystem: local, Arrow's
  native one; S3, Arrow over s3fs with whole-object reads, so Arrow's requests go through the
  same retry policy (Arrow's own S3 client fails small ranged reads on a SlowDown body).
- Errors: `explain(exc)` turns missing credentials, an unreachable endpoint and a missing bucket
  into one line saying what to set (`StorageConfigError`); `check_access` finds them up front.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections import Counter

import pyarrow as pa
from pyarrow.fs import FSSpecHandler

from pipeline.errors import StorageConfigError  # re-exported: callers import it from here
from pipeline.settings import get_settings

MAX_ATTEMPTS = 5  # tries per request, the first included
S3FS_RETRIES = 1  # s3fs's retry loop runs range(retries): 1 = no retry of its own on top of botocore's
MAX_BACKOFF_S = sum(min(2 ** i, 20) for i in range(MAX_ATTEMPTS - 1))  # botocore's wait caps: 1+2+4+8
RETRY_CONFIG = {"retries": {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}, "connect_timeout": 5, "read_timeout": 30}
THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                            "TooManyRequests", "TooManyRequestsException", "RequestThrottled", "503"})

STATS: Counter = Counter()  # throttled, throttled_gave_up, list_requests (this process)
_lock = threading.Lock()


def count(name: str, n: int = 1) -> None:
    with _lock:
        STATS[name] += n


def since(before: dict) -> dict:
    """This process's counts since `before` (a copy of STATS), without zeros."""
    with _lock:
        return {k: v - before.get(k, 0) for k, v in STATS.items() if v - before.get(k, 0)}


def add_counts(total: dict, more: dict) -> dict:
    """total += more, per count name (counts from workers' replies)."""
    for k, v in more.items():
        total[k] = total.get(k, 0) + v
    return total


def with_retry_config(options: dict) -> dict:
    """s3fs options with the retry policy, unless the caller configured retries itself."""
    config = dict(options.get("config_kwargs") or {})
    for k, v in RETRY_CONFIG.items():
        config.setdefault(k, v)
    return {**options, "config_kwargs": config}


def is_throttle(status: int | None, code: str | None) -> bool:
    return status in (429, 503) or code in THROTTLE_CODES


def _on_retry(response=None, attempts=None, caught_exception=None, **_):
    """botocore `needs-retry` hook (after every try): count throttling answers, and the requests
    that were still throttled at their last try."""
    if response is None and caught_exception is None:
        return None
    status, code = None, None
    if response is not None:
        http, parsed = response
        status = getattr(http, "status_code", None)
        code = (parsed or {}).get("Error", {}).get("Code")
    if is_throttle(status, code):
        count("throttled")
        if attempts is not None and attempts >= MAX_ATTEMPTS:  # botocore gives up: the call fails
            count("throttled_gave_up")
    return None  # never decides: botocore's retry handler does


def watch(fs) -> None:
    """Register the retry counter on an s3fs filesystem's client (once per client). The client is
    made now if there is none yet (no request is sent): a filesystem's first calls, a worker's
    included, are counted too."""
    try:
        client = fs.s3  # a sync filesystem connects here
    except Exception:  # noqa: BLE001 - no client (e.g. no credentials): the first real call reports it
        return
    if not getattr(client, "_taid_watched", False):
        client.meta.events.register_first("needs-retry.s3", _on_retry)
        client._taid_watched = True


WHOLE_READ_MAX = 64 << 20  # Arrow reads of S3 objects up to this size: one GET of the whole object


class ThrottleProofReads(FSSpecHandler):
    """Arrow file access through s3fs, so every request goes through the one retry policy. Reads
    of objects up to WHOLE_READ_MAX are one GET of the whole object (Parquet is then decoded from
    memory); larger ones are s3fs files, whose ranged GETs retry the same way."""

    def open_input_file(self, path):
        size = self.fs.info(path)["size"]  # FileNotFoundError, as Arrow expects
        if size <= WHOLE_READ_MAX:
            return pa.BufferReader(self.fs.cat_file(path))
        return super().open_input_file(path)

    def open_input_stream(self, path):
        return self.open_input_file(path)


def arrow_filesystem(fs):
    """A pyarrow filesystem reading the same paths as the fsspec `fs` (paths without scheme).

    Local: Arrow's native one. S3: Arrow over s3fs (`ThrottleProofReads`), not Arrow's native
    S3 client: that client reads a Parquet column chunk with one small ranged GET into a buffer of
    exactly that size, and a 503 SlowDown body longer than the range failed the read with
    "INTERNAL_FAILURE ... Failed to flush response stream", which it never retries: an incremental
    run through a throttling proxy died at its first index read, 6 of 6 times."""
    from pyarrow import fs as pafs

    from pipeline.storage.keys import protocol_prefix

    proto = protocol_prefix(fs)
    if proto == "":
        return pafs.LocalFileSystem()
    if proto in ("s3://", "s3a://"):
        return pafs.PyFileSystem(ThrottleProofReads(fs))
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


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
        status = (getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
                  if isinstance(e, be.ClientError) else None)
        if code in ("AccessDenied", "403") or status == 403:  # a HEAD has no body: a wrong secret is a bare 403
            where = f" to bucket {bucket}" if bucket else ""
            return (f"S3 refused access{where} (403 Forbidden): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                    "and the bucket's permissions")
        e = e.__cause__ or e.__context__
    return None


# the up-front check: one try per call (botocore would also retry a refused connection, for up
# to MAX_BACKOFF_S), short timeouts; `check_access` retries throttling answers itself
PREFLIGHT = {"retries": {"mode": "standard", "total_max_attempts": 1}, "connect_timeout": 3, "read_timeout": 10}


def status_and_code(exc: BaseException) -> tuple[int | None, str | None]:
    """(HTTP status, S3 error code) of the botocore error in `exc`'s cause chain (s3fs wraps it)."""
    import botocore.exceptions as be

    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, be.ClientError):
            meta = e.response.get("ResponseMetadata", {})
            return meta.get("HTTPStatusCode"), e.response.get("Error", {}).get("Code")
        e = e.__cause__ or e.__context__
    return None, None


def backoff(attempt: int) -> float:
    """botocore's wait after a throttling answer (full jitter): rand x min(2^attempt, 20) s."""
    return random.random() * min(2 ** attempt, 20)


def check_access(fs, path: str) -> None:
    """Fail fast with a one-line StorageConfigError when an s3:// location cannot be used: one
    HeadBucket call (credentials, endpoint and bucket in one request), retried only while S3
    answers with throttling (same tries and waits as every other request). Other filesystems pass."""
    import fsspec

    from pipeline.storage.keys import protocol_prefix

    if protocol_prefix(fs) not in ("s3://", "s3a://"):
        return
    bucket = path.split("/", 1)[0]
    quick = fsspec.filesystem("s3", **{**fs.storage_options, "config_kwargs": {
        **(fs.storage_options.get("config_kwargs") or {}), **PREFLIGHT}})
    quick.retries = 1
    for attempt in range(MAX_ATTEMPTS):
        try:
            quick.call_s3("head_bucket", Bucket=bucket)
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line below
            status, code = status_and_code(exc)
            if is_throttle(status, code) or (isinstance(exc, OSError) and exc.errno == errno.EBUSY):
                count("throttled")
                if attempt < MAX_ATTEMPTS - 1:
                    time.sleep(backoff(attempt))
                    continue
                count("throttled_gave_up")
                raise StorageConfigError(
                    f"S3 at {_endpoint(fs)} answered {MAX_ATTEMPTS} checks of bucket {bucket} with {code or status} "
                    "(throttling): try again later") from None
            raise StorageConfigError(access_line(exc, fs, bucket)) from None


def access_line(exc: BaseException, fs, bucket: str) -> str:
    """The one line for a failed check of `bucket`."""
    line = explain(exc, fs, bucket)
    if line is not None:
        return line
    if isinstance(exc, FileNotFoundError):
        return f"S3 bucket {bucket} does not exist: create it or fix the s3:// URI"
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"cannot use S3 bucket {bucket} at {_endpoint(fs)}: {type(exc).__name__}: {first}"
