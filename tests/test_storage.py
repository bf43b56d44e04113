"""Storage options: S3-compatible endpoints without the environment, credentials kept out of
parameters (and out of error messages), transient errors retried."""

from __future__ import annotations

import pytest

from pipeline.config import CompressArchiveParams
from pipeline.workers import with_retries
from pipeline.storage import filesystem, list_objects, secret_option_keys


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
