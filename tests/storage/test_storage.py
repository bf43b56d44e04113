"""Storage options: S3-compatible endpoints without the environment, credentials kept out of
parameters (and out of error messages), transient errors retried."""

from __future__ import annotations

import pytest

from pipeline.jobs.params import CompressArchiveParams
from pipeline.runtime.retry import with_retries
from pipeline.storage.fs import filesystem, secret_option_keys
from pipeline.storage.listing import list_objects


def test_endpoint_url_reaches_seaweedfs_without_aws_endpoint_url(s3, bucket, monkeypatch):
    s3.filesystem().pipe(f"{bucket}/src/a/x.png", b"12345")
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # keys stay in the environment, the endpoint is a parameter
    params = CompressArchiveParams(source=f"s3://{bucket}/src", dest=f"s3://{bucket}/dest", endpoint_url=s3.endpoint)
    fs, root = params.fs(params.source)
    [obj] = list(list_objects(fs, root))
    assert (obj.key, obj.size, obj.uri) == ("a/x.png", 5, f"s3://{bucket}/src/a/x.png")
    assert obj.etag == "827ccb0eea8a706c4c34a16891f84e7b"  # single-part ETag = MD5 of the body
    fs_local, path = filesystem("/tmp/some/where", endpoint_url=s3.endpoint)  # ignored for local paths
    assert path == "/tmp/some/where" and "file" in fs_local.protocol


@pytest.mark.parametrize("options", [
    {"key": "AKIA1", "secret": "hunter2-secret"},
    {"client_kwargs": {"aws_secret_access_key": "hunter2-secret"}},
    {"token": "hunter2-secret"},
])
def test_credentials_in_storage_options_are_refused_without_echoing_them(options):
    with pytest.raises(ValueError) as err:
        CompressArchiveParams(source="s3://a/b", dest="s3://a/c", storage_options=options)
    assert "must not carry credentials" in str(err.value) and "hunter2" not in str(err.value)
    assert "hunter2" not in repr(err.value)


def test_harmless_storage_options_pass_and_are_not_in_repr():
    p = CompressArchiveParams(source="s3://a/b", dest="s3://a/c", storage_options={"default_block_size": 5 << 20})
    assert secret_option_keys(p.storage_options) == [] and "storage_options" not in repr(p)


def test_transient_errors_are_retried_and_missing_objects_are_not():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("connection reset by peer")
        return b"data"

    assert with_retries(flaky, "read") == b"data" and len(calls) == 3

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        with_retries(missing, "read")
    assert len(calls) == 1


def test_atomic_write_leaves_no_temporary_file_when_it_fails(tmp_path):
    from pipeline.storage.fs import atomic_write

    fs, root = filesystem(str(tmp_path))
    (tmp_path / "taken").mkdir()  # the rename over a folder fails after the temporary file was written
    with pytest.raises(OSError):
        atomic_write(fs, f"{root}/taken", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_errors_a_user_can_act_on_read_as_one_line():
    import errno

    from flows.cli import one_line, value_error_line
    from pipeline.errors import DestinationFullError, StorageConfigError, storage_refuses

    assert one_line(StorageConfigError("source /x does not exist")) == ("source /x does not exist", 2)
    assert one_line(DestinationFullError("full"))[1] == 1
    assert one_line(OSError(errno.ENOSPC, "No space left on device", "/d/x.tmp")) == (
        "No space left on device (/d/x.tmp)", 1)
    assert one_line(RuntimeError("a bug")) is None  # a bug keeps its traceback
    assert storage_refuses("OSError: [Errno 28] No space left on device: '/d/.x.tmp'")
    assert storage_refuses("OSError: [Errno 30] Read-only file system: '/d'")
    assert not storage_refuses("OSError: wrote 0 of 479 bytes") and not storage_refuses(None)
    with pytest.raises(ValueError) as err:
        CompressArchiveParams(source="/a", dest="/b", target_psnr=1000)
    line = value_error_line(err.value)
    assert "\n" not in line and "lossless" in line


def test_manifest_writer_gives_its_reserve_back_when_the_disk_is_full(tmp_path):
    """The reserve is real disk space, removed at close; a failed part keeps its rows."""
    import os

    from pipeline.errors import ManifestWriteError
    from pipeline.manifest.parts import ManifestWriter, reserve_bytes

    fs, root = filesystem(str(tmp_path / "dest"))
    writer = ManifestWriter(fs, root, "r1", rows_per_part=10, reserve=True)
    assert os.path.getsize(writer.reserve) == reserve_bytes(10)
    writer.add({"source_key": "a", "status": "ok"})
    writer.close()
    assert writer.rows == 1 and writer.reserve is None
    assert [p.name for p in (tmp_path / "dest/_manifest/run=r1").iterdir()] == ["part-00000.parquet"]

    blocked = ManifestWriter(fs, str(tmp_path / "file"), "r2")  # its folder cannot be made: a file is in the way
    (tmp_path / "file").write_bytes(b"")
    blocked.add({"source_key": "b", "status": "ok"})
    with pytest.raises(ManifestWriteError) as err:
        blocked.flush()
    assert blocked.unsaved == 1 and "cannot write the manifest" in str(err.value)
