"""Real services for the integration tests, started once per session on 127.0.0.1:
SeaweedFS S3 (`s3`), a local Ray (`ray_local`) and Prefect's test harness (`prefect_harness`).

A test that uses one of them gets the `services` marker here; modules and tests that start a service
themselves (`ray start`, a Prefect server, a `taid` process that starts Ray) say so with
`pytest.mark.services`. `make test-fast` runs the rest (`-m "not services"`), `make test` all."""

from __future__ import annotations

import os
import uuid

import pytest

from pipeline.runtime.local_env import set_local_env_defaults

# Ray binds loopback only, no token auth, no usage stats (see ../shared/INFRA-NOTES.md).
set_local_env_defaults(RAY_TRAIN_ENABLE_STATE_TRACKING="0")
# botocore's credential chain must never reach the instance-metadata address from a test
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


# fixtures that start a service (or need one started): a test that uses any of them, directly or through
# another fixture, is a `services` test
SERVICE_FIXTURES = frozenset({"s3", "bucket", "ray_local", "prefect_harness"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A SeaweedFS S3 server with real credentials; AWS_* variables point every client at it
    (set before Ray starts, so Ray workers and jobs inherit them)."""
    from infra.local_s3 import LocalS3

    server = LocalS3(tmp_path_factory.mktemp("seaweedfs")).start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3):
    """A fresh, empty bucket per test; yields its name."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.filesystem().makedirs(name, exist_ok=True)
    return name


@pytest.fixture(scope="session")
def ray_local(s3, tmp_path_factory):
    import ray

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_addoption(parser):
    parser.addoption("--save-screenshots", action="store_true",
                     help="write the serve browser's screenshots to benchmarks/results (docs/serve.md) instead of a temp dir")
