"""One writer per archive: a lease object with an expiry, renewed while its holder runs.

    DEST/_runs/LEASE     {"owner": run id, "host", "pid", "acquired_at", "expires_at"}

A compress run takes the lease before any work and gives it back at the end; a second run on
the same destination gets `DestinationBusy` (one line: who holds it, until when) instead of
doing the same work twice. The holder renews it every TTL/4 from a thread, so a run that dies
(SIGKILL, a lost node) blocks the destination for at most `LEASE_TTL_S`; after that the next run
takes it over.

Taking, renewing and taking over are atomic where the store can compare: S3 conditional writes
(`If-None-Match: *` creates only if absent, `If-Match: <ETag>` replaces only the version read;
AWS S3 and SeaweedFS >= 4 honour both), and on a local filesystem a hard link (creates only if
absent) and a rename (moves only one file away). Other fsspec filesystems fall back to
check-then-write with a read-back, which two runs starting within the same few milliseconds
could both pass.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from pipeline.errors import UserError
from pipeline.manifest.parts import RUNS_DIR
from pipeline.storage import atomic_write, protocol_prefix

log = logging.getLogger(__name__)

LEASE = "LEASE"
LEASE_TTL_S = 120.0


class DestinationBusy(UserError, RuntimeError):
    """Another run holds the destination's lease; the message is one line (exit 2: nothing done)."""


def lease_path(dest: str) -> str:
    return f"{dest.rstrip('/')}/{RUNS_DIR}/{LEASE}"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _precondition_failed(exc: BaseException) -> bool:
    """s3fs turns a 412 into an OSError; the botocore error is in the cause chain."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        response = getattr(e, "response", None) or {}
        if response.get("Error", {}).get("Code") in ("PreconditionFailed", "412") or (
                response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412):
            return True
        if "pre-conditions you specified did not hold" in str(e) or "PreconditionFailed" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


class Lease:
    """The lease of `dest` for `owner`. `acquire()` raises DestinationBusy when another live
    holder has it; use as a context manager to renew it in the background and release it."""

    def __init__(self, fs, dest: str, owner: str, ttl_s: float = LEASE_TTL_S):
        self.fs, self.dest, self.owner, self.ttl_s = fs, dest, owner, ttl_s
        self.path = lease_path(dest)
        self.kind = {"s3://": "s3", "s3a://": "s3", "": "local"}.get(protocol_prefix(fs), "other")
        self.etag: str | None = None
        self.acquired_at = time.time()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the record
    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "acquired_at": self.acquired_at, "expires_at": time.time() + self.ttl_s}).encode()

    def _read(self) -> tuple[dict, str | None] | None:
        """(the lease record, its ETag on S3), None when there is none. An unreadable record (a
        local one being written) counts as a fresh lease of an unknown owner."""
        try:
            etag = None
            if self.kind == "s3":  # the ETag first: if the record changes after, If-Match on it fails
                bucket, key = self.path.split("/", 1)
                etag = self.fs.call_s3("head_object", Bucket=bucket, Key=key)["ETag"]
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            return json.loads(data), etag
        except ValueError:
            return {"owner": "?", "expires_at": time.time() + self.ttl_s}, etag

    # -- atomic steps, per kind
    def _create(self) -> bool:
        """Write the record only if there is none; False when there is one."""
        body = self._body()
        if self.kind == "s3":
            bucket, key = self.path.split("/", 1)
            try:
                self.etag = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")["ETag"]
            except OSError as exc:
                if _precondition_failed(exc):
                    return False
                raise
            return True
        if self.kind == "local":
            folder = os.path.dirname(self.path)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{LEASE}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as f:
                f.write(body)
            try:
                os.link(tmp, self.path)  # fails if the lease exists: an atomic create with its content
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        if self.fs.exists(self.path):
            return False
        atomic_write(self.fs, self.path, body)
        held = self._read()
        return held is not None and held[0].get("owner") == self.owner

    def _take_over(self, stale: dict, etag: str | None) -> bool:
        """Replace an expired record, only if it is still the one read."""
        if self.kind == "s3":
            bucket, key = self.path.split("/", 1)
            try:
                self.etag = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self._body(),
                                            IfMatch=etag)["ETag"]
                return True
            except OSError as exc:
                if _precondition_failed(exc):
                    return False
                raise
        if self.kind == "local":
            aside = f"{self.path}.{uuid.uuid4().hex}.stale"
            try:
                os.rename(self.path, aside)  # only one taker moves a given file away
            except FileNotFoundError:
                return self._create()
            with open(aside, "rb") as f:
                moved = f.read()
            try:
                if json.loads(moved) != stale:  # someone renewed or took it over in between: put it back
                    try:
                        os.link(aside, self.path)
                    except FileExistsError:
                        pass
                    return False
            except ValueError:
                pass
            finally:
                os.unlink(aside)
            return self._create()
        self.fs.rm(self.path)
        return self._create()

    # -- the lease
    def acquire(self) -> Lease:
        self.acquired_at = time.time()
        for _ in range(3):
            if self._create():
                return self
            held = self._read()
            if held is None:
                continue  # released in between
            record, etag = held
            if record.get("owner") == self.owner:
                self.etag = etag
                return self
            if record.get("expires_at", 0) > time.time():
                raise DestinationBusy(
                    f"{self.dest} is being written by run {record.get('owner')} (host {record.get('host', '?')}, "
                    f"pid {record.get('pid', '?')}, since {_when(record.get('acquired_at', 0))}); its lease ends "
                    f"{_when(record['expires_at'])} unless renewed: run again when it is done")
            log.warning("taking over the expired lease of run %s on %s", record.get("owner"), self.dest)
            if self._take_over(record, etag):
                return self
        raise DestinationBusy(f"{self.dest}: another run took the destination's lease first; run again when it is done")

    def renew(self) -> None:
        """Extend the expiry, only while we still hold it (else `lost` is set and logged)."""
        held = self._read()
        if held is None or held[0].get("owner") != self.owner:
            self.lost = True
            log.error("lost the lease of %s (now %s): another run may write there", self.dest,
                      held[0].get("owner") if held else "nobody")
            return
        if self.kind == "s3":
            bucket, key = self.path.split("/", 1)
            try:
                self.etag = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self._body(),
                                            IfMatch=held[1])["ETag"]
            except OSError as exc:
                if not _precondition_failed(exc):
                    raise
                self.lost = True
        else:
            atomic_write(self.fs, self.path, self._body())

    def release(self) -> None:
        held = self._read()
        if held is not None and held[0].get("owner") == self.owner:
            self.fs.rm(self.path)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a missed renewal is retried at the next beat
                log.warning("renewing the lease of %s failed: %s: %s", self.dest, type(exc).__name__, exc)

    def __enter__(self) -> Lease:
        self.acquire()
        self._thread = threading.Thread(target=self._heartbeat, name="taid-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.release()
        except Exception as e:  # noqa: BLE001 - it expires by itself
            log.warning("releasing the lease of %s failed (it expires in %.0f s): %s", self.dest, self.ttl_s, e)
