"""Storage misconfiguration: one line that says what to set, exit code 2, no traceback (unless
--debug); the same line as the failed flow run's message."""

from __future__ import annotations

import os
import subprocess
import sys

from infra.faults import SlowDownProxy
from infra.local_s3 import free_port

from tests import ROOT


def taid(args: list[str], env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env={**base, **env}, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_three_misconfigurations_each_give_one_line_and_exit_2(s3, bucket, tmp_path):
    keys = {"AWS_ACCESS_KEY_ID": s3.key, "AWS_SECRET_ACCESS_KEY": s3.secret, "AWS_ENDPOINT_URL": s3.endpoint}
    dest = str(tmp_path / "dest")

    line = one_line(taid(["compress-archive", f"s3://{bucket}/src", dest], {"AWS_ENDPOINT_URL": s3.endpoint}))
    assert "no S3 credentials" in line and "AWS_ACCESS_KEY_ID" in line

    closed = f"http://127.0.0.1:{free_port()}"
    line = one_line(taid(["compress-archive", f"s3://{bucket}/src", dest], {**keys, "AWS_ENDPOINT_URL": closed}))
    assert "cannot reach S3" in line and closed in line and "AWS_ENDPOINT_URL" in line

    line = one_line(taid(["compress-archive", "s3://no-such-bucket-taid/src", dest], keys))
    assert "no-such-bucket-taid does not exist" in line

    debug = taid(["--debug", "compress-archive", "s3://no-such-bucket-taid/src", dest], keys)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert not os.path.exists(dest)  # nothing was started


def test_failed_flow_run_message_is_the_one_line(s3, bucket, prefect_harness, tmp_path):
    from flows.compress_archive import compress_archive
    from pipeline.jobs.params import CompressArchiveParams

    closed = f"http://127.0.0.1:{free_port()}"
    for params, expected in [
        (CompressArchiveParams(source=f"s3://{bucket}/src", dest=str(tmp_path / "d"), endpoint_url=closed), "cannot reach S3"),
        (CompressArchiveParams(source="s3://no-such-bucket-taid/src", dest=str(tmp_path / "d")), "does not exist"),
    ]:
        state = compress_archive(params, return_state=True)
        assert state.is_failed()
        assert expected in state.message and "\n" not in state.message.strip()


def test_throttling_is_retried_and_counted(s3, bucket):
    from pipeline.storage import s3 as s3mod
    from pipeline.storage.fs import filesystem
    from pipeline.storage.listing import list_objects

    s3.filesystem().pipe(f"{bucket}/src/a.png", b"12345")
    proxy = SlowDownProxy(s3.port, first=3)
    try:
        before = dict(s3mod.STATS)
        fs, root = filesystem(f"s3://{bucket}/src", endpoint_url=proxy.endpoint)
        assert [o.key for o in list_objects(fs, root)] == ["a.png"]  # retried past the SlowDowns
        assert s3mod.STATS["throttled"] - before.get("throttled", 0) == 3
    finally:
        proxy.stop()
