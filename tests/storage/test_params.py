"""StorageParams: one storage model for compress, rehydrate and serve (endpoint, no credentials,
the up-front check), and the defaults of the job params defined once."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from pipeline.errors import StorageConfigError
from pipeline.jobs.params import CompressArchiveParams, RehydrateParams
from pipeline.runtime.options import RayParams
from pipeline.serving.config import ServeParams
from pipeline.storage.params import StorageParams


def test_compress_rehydrate_and_serve_share_it_with_flat_fields():
    for model in (CompressArchiveParams, RehydrateParams, ServeParams):
        assert issubclass(model, StorageParams)
        assert {"endpoint_url", "storage_options"} <= set(model.model_fields)
    # a Prefect deployment's params / a Serve config's args pass them flat
    p = RehydrateParams.model_validate({"archive": "s3://b/a", "to": "s3://b/r", "endpoint_url": "http://h:1",
                                        "storage_options": {"anon": False}})
    assert p.endpoint_url == "http://h:1" and p.storage_options == {"anon": False}


def test_defaults_are_defined_once():
    for name in ("batch_size", "workers", "cpus_per_worker", "max_attempts", "registry"):
        default = RayParams.model_fields[name].default
        assert CompressArchiveParams.model_fields[name].default == default
        assert RehydrateParams.model_fields[name].default == default
    assert RayParams.model_fields["batch_size"].default == 2


@pytest.mark.parametrize("model,fields", [
    (StorageParams, {}), (CompressArchiveParams, {"source": "s3://b/s", "dest": "s3://b/d"}),
    (RehydrateParams, {"archive": "s3://b/a", "to": "/tmp/r"}), (ServeParams, {"archive": "s3://b/a"})])
def test_credentials_are_refused_without_echoing_them(model, fields):
    with pytest.raises(ValidationError) as info:
        model(**fields, storage_options={"client_kwargs": {"aws_secret_access_key": "s3cr3t-value"}})
    text = str(info.value)
    assert "client_kwargs.aws_secret_access_key" in text and "credentials" in text
    assert "s3cr3t-value" not in text


def test_endpoint_reaches_the_filesystem_and_the_options():
    p = StorageParams(endpoint_url="http://127.0.0.1:9", storage_options={"client_kwargs": {"region_name": "x"}})
    assert p.fsspec_options() == {"client_kwargs": {"region_name": "x", "endpoint_url": "http://127.0.0.1:9"}}
    assert p.storage_options == {"client_kwargs": {"region_name": "x"}}  # the field itself is left alone
    fs, path = p.fs("s3://bucket/archive")
    assert path == "bucket/archive" and fs.client_kwargs["endpoint_url"] == "http://127.0.0.1:9"
    assert StorageParams().fsspec_options() == {}


def test_local_check_source_and_write(tmp_path):
    p = StorageParams()
    with pytest.raises(StorageConfigError, match="does not exist"):
        p.check(str(tmp_path / "nowhere"), source=True)
    p.check(str(tmp_path), source=True)
    p.check(str(tmp_path / "dest"), write=True)
    assert list((tmp_path / "dest" / "_runs").iterdir()) == []  # the probe is removed again
    p.check(str(tmp_path / "not-probed"))  # a read location: nothing written
    assert not (tmp_path / "not-probed").exists()


def test_missing_credentials_are_one_line_without_a_request(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("AWS_") and k != "AWS_EC2_METADATA_DISABLED":
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageConfigError, match="no S3 credentials") as info:
        StorageParams(endpoint_url="http://127.0.0.1:9").check("s3://bucket/archive")
    assert "\n" not in str(info.value)
