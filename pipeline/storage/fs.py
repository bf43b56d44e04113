"""Object storage through fsspec: URIs, streaming listing with ETags, safe keys, atomic writes.

Any fsspec URI works (a local folder, `s3://bucket/prefix`, ...). S3 credentials and endpoints
come the usual ways (environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL /
AWS_DEFAULT_REGION, ~/.aws, fsspec config) or from explicit `storage_options`; nothing here
logs them.
"""

from __future__ import annotations

import os
import posixpath
import uuid

import fsspec

from pipeline.storage.keys import protocol_prefix


def filesystem(uri: str, storage_options: dict | None = None, endpoint_url: str | None = None):
    """(fsspec filesystem, path without scheme) for a URI. `endpoint_url` points s3:// URIs at an
    S3-compatible store (SeaweedFS, MinIO, ...); without it s3fs/botocore use AWS_ENDPOINT_URL,
    ~/.aws/config or AWS itself."""
    options = dict(storage_options or {})
    is_s3 = uri.split("://", 1)[0] in ("s3", "s3a")
    if endpoint_url and is_s3:
        options["client_kwargs"] = {**options.get("client_kwargs", {}), "endpoint_url": endpoint_url}
    if not is_s3:
        return fsspec.core.url_to_fs(uri, **options)
    from pipeline.storage import s3  # the one retry policy, throttling counted

    fs, path = fsspec.core.url_to_fs(uri, **s3.with_retry_config(options))
    fs.retries = s3.S3FS_RETRIES
    s3.watch(fs)
    return fs, path


# option names that carry credentials in fsspec backends (s3fs, gcsfs, adlfs): never parameters
SECRET_OPTION_KEYS = frozenset({
    "key", "secret", "token", "password", "session_token", "aws_access_key_id", "aws_secret_access_key",
    "aws_session_token", "account_key", "sas_token", "client_secret", "connection_string", "credentials",
})


def secret_option_keys(options: dict, _path: str = "") -> list[str]:
    """Paths of credential-like keys in (nested) storage options, e.g. ['client_kwargs.aws_secret_access_key']."""
    found = []
    for k, v in options.items():
        path = f"{_path}{k}"
        if str(k).lower() in SECRET_OPTION_KEYS:
            found.append(path)
        elif isinstance(v, dict):
            found += secret_option_keys(v, path + ".")
    return found


def atomic_write(fs, path: str, data: bytes) -> None:
    """Readers see the old object or the whole new one, never a part.

    Object stores: one PUT of the whole body is atomic (S3 requests retry by the one policy in
    `pipeline.storage.s3`, nothing here retries again). Local and other filesystems: write a temporary
    sibling, then rename over the target; on any failure (disk full, read-only, interrupted) the
    temporary file is removed before the error goes up, so none is ever left behind."""
    if protocol_prefix(fs) in ("s3://", "gs://", "gcs://", "az://", "abfs://"):
        fs.pipe_file(path, data)
        return
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        if protocol_prefix(fs) == "":
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
    except BaseException:
        _remove_quietly(fs, tmp)
        raise


def write_local(path: str, data: bytes) -> None:
    """atomic_write of a local file named as a user names it (relative to the working directory,
    never a URI): folders made as needed, the usual permissions (0666 & ~umask)."""
    atomic_write(fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path)), data)


def _remove_quietly(fs, path: str) -> None:
    """Remove a temporary file if it is there; the error that got us here is the one to report."""
    try:
        if protocol_prefix(fs) == "":
            os.unlink(path)
        else:
            fs.rm_file(path)
    except OSError:  # not there (never created), or the disk refuses even this
        pass


def read_bytes(fs, path: str, start: int | None = None, end: int | None = None) -> bytes:
    """The whole object (or bytes [start, end) of it) in one call: the one read that Parquet
    readers go through (pipeline.storage.parquet), so a retry policy set here covers them, and a
    failed read raises instead of leaving a half-read buffer."""
    return fs.cat_file(path, start=start, end=end)


def check_source(fs, root: str, uri: str) -> None:
    """StorageConfigError (one line) when the source is not there: a local folder that does not
    exist (or is a file), an S3 prefix without a single object (one LIST of at most one key)."""
    from pipeline.errors import StorageConfigError

    proto = protocol_prefix(fs)
    if proto == "":
        if not os.path.isdir(root):
            what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
            raise StorageConfigError(f"source {uri} {what}: give the folder (or s3:// prefix) holding the images")
        return
    if proto in ("s3://", "s3a://"):
        bucket, _, prefix = root.partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        reply = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        if not reply.get("KeyCount", len(reply.get("Contents", []))):
            raise StorageConfigError(f"source {uri} holds no objects: check the bucket and prefix")
    elif not fs.exists(root):
        raise StorageConfigError(f"source {uri} does not exist")


def check_writable(fs, root: str, uri: str) -> None:
    """StorageConfigError (one line) unless a probe object can be written under `root` and
    removed again: a read-only or full disk, a bucket we may not write, found before any work."""
    from pipeline.errors import StorageConfigError, os_error_line
    from pipeline.storage.s3 import explain

    probe = f"{root.rstrip('/')}/_runs/.write-probe-{uuid.uuid4().hex}"
    try:
        atomic_write(fs, probe, b"taid write probe\n")
    except OSError as exc:
        line = explain(exc, fs) or os_error_line(exc) or f"{type(exc).__name__}: {exc}"
        raise StorageConfigError(f"cannot write to {uri}: {line}") from None
    try:
        fs.rm_file(probe)
    except OSError:  # written but not removable: harmless (an empty marker), the run can go on
        pass
