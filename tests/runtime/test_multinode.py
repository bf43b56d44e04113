"""compress-archive and rehydrate on a real two-node Ray cluster, started with `ray start` on this
machine (issue 17): the model actors run on the second node, the only one with the `taid_model`
resource; they reach S3 with that node's environment (the head has no credentials and the run's
parameters never carry any); and the archive is identical to a local run's. Each node runs in a
process group of its own and is killed by group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.services  # `ray start` nodes, SeaweedFS, a Prefect server and worker
BIN = Path(sys.executable).parent
from tests import DATA
SET5 = DATA / "Set5"
# Multi-node needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 (with 0, which the rest of the suite uses to keep Ray on
# loopback, a joining node refuses to start, and a 127.0.0.1 bootstrap address is rewritten to the
# machine's own address anyway): the cluster lives on this machine's address, as a real one would.
LOCAL = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
         "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_ip() -> str:
    """The address Ray itself picks for this machine (the route to the outside, never used here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 53))  # no packet is sent: this only picks the interface
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def no_aws() -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "TAID_RAY_ADDRESS"}, **LOCAL}


def python(code: str, env: dict, timeout: int = 60) -> str:
    return subprocess.run([str(BIN / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=timeout,
                          check=True).stdout


@pytest.fixture(scope="module")
def cluster(s3):
    # a short temp dir: Ray's socket paths must stay under the 107-byte limit
    tmp = tempfile.mkdtemp(prefix="taidray-", dir="/tmp")
    port, ip = free_port(), machine_ip()
    address = f"{ip}:{port}"
    procs = []

    def start(args: list[str], env: dict, log: str) -> None:
        with open(Path(tmp) / log, "wb") as out:
            procs.append(subprocess.Popen([str(BIN / "ray"), "start", "--block", f"--node-ip-address={ip}", *args],
                                          env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={tmp}",
               "--disable-usage-stats"], no_aws(), "head.log")
        # the second node alone has the model resource, and alone has the S3 credentials
        # it also declares a GPU it does not have: staged runs place their model actor there (on its CPU)
        start([f"--address={address}", "--num-cpus=2", "--num-gpus=1", '--resources={"taid_model": 2}'],
              {**no_aws(), **s3.env()}, "node.log")
        probe = (f"import ray, json; ray.init(address={address!r}, log_to_driver=False); "
                 "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and 'taid_model' in n['Resources']]"
                 " + [sum(n['Alive'] for n in ray.nodes())]))")
        deadline = time.monotonic() + 120
        while True:
            try:
                *model_nodes, alive = json.loads(python(probe, no_aws()).strip().splitlines()[-1])
                if alive == 2 and len(model_nodes) == 1:
                    break
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError, IndexError):
                pass
            assert time.monotonic() < deadline, "the two-node cluster did not come up"
            time.sleep(2)
        yield {"address": address, "model_node": model_nodes[0]}
    finally:
        for p in reversed(procs):  # by process group: raylet, GCS, workers and all
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
        subprocess.run(["pkill", "-9", "-f", tmp], check=False)  # anything that left its group


def taid(*args: str, env: dict) -> dict:
    """Run the CLI; its last stdout lines are the result as JSON."""
    done = subprocess.run([str(BIN / "taid"), *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    return json.loads(out[out.index("\n{") + 1 if not out.startswith("{") else 0:])


def manifest(fs, dest: str) -> dict[str, dict]:
    from pipeline.manifest.parts import read_manifest

    return {r["source_key"]: r for r in read_manifest(fs, dest).to_pylist()}


def test_archive_on_a_two_node_cluster_equals_a_local_run(s3, bucket, cluster, tmp_path):
    fs = s3.filesystem()
    for p in sorted(SET5.glob("*.png"))[:3]:
        fs.pipe(f"{bucket}/src/{p.name}", p.read_bytes())
    driver = {**no_aws(), **s3.env()}  # the driver lists and writes the manifest: it needs S3 too
    common = ["--model", "taid-x4", "--workers", "2", "--stages", "single"]  # staged: the test below
    remote = taid("compress-archive", f"s3://{bucket}/src", f"s3://{bucket}/remote", *common,
                  "--ray-address", cluster["address"], "--actor-resource", "taid_model=1", env=driver)
    assert remote["by_status"] == {"ok": 3}
    assert remote["dispatch"]["actor_nodes"] == [cluster["model_node"]]
    local = taid("compress-archive", f"s3://{bucket}/src", f"s3://{bucket}/local", *common, env=driver)
    assert local["by_status"] == {"ok": 3} and cluster["model_node"] not in local["dispatch"]["actor_nodes"]
    a, b = manifest(fs, f"{bucket}/remote"), manifest(fs, f"{bucket}/local")
    assert sorted(a) == sorted(b)
    for key in a:  # the same small files, byte for byte
        assert a[key]["output_sha256"] == b[key]["output_sha256"], key
        assert fs.cat_file(a[key]["output_uri"]) == fs.cat_file(b[key]["output_uri"])

    back = taid("rehydrate", f"s3://{bucket}/remote", "--prefix", "", "--to", f"s3://{bucket}/restored",
                "--ray-address", cluster["address"], "--actor-resource", "taid_model=1", "--stages", "single", env=driver)
    assert back["by_status"] == {"ok": 3} and back["dispatch"]["actor_nodes"] == [cluster["model_node"]]


@pytest.fixture(scope="module")
def worker_on_cluster(s3, cluster):
    """A Prefect server, the on-demand deployments, and a process worker whose environment names the
    cluster (TAID_RAY_ADDRESS) and holds the S3 keys: the flow runs it picks up send their actors
    to the cluster without any parameter saying so."""
    from infra import stack

    extra = {**LOCAL, **s3.env(), "TAID_RAY_ADDRESS": cluster["address"], "PREFECT_WORKER_QUERY_SECONDS": "2"}
    with stack.prefect_with_worker(extra, names=["compress-archive/on-demand", "rehydrate/sample"],
                                   worker_name="mn-worker") as (_, env, _out):
        yield env


def test_deployment_worker_with_taid_ray_address_runs_on_the_cluster(s3, bucket, cluster, worker_on_cluster):
    fs = s3.filesystem()
    for p in sorted(SET5.glob("*.png"))[:2]:
        fs.pipe(f"{bucket}/src/{p.name}", p.read_bytes())
    params = {"source": f"s3://{bucket}/src", "dest": f"s3://{bucket}/archive", "model_id": "taid-x4", "stages": "single",
              "actor_resources": {"taid_model": 1}}  # no ray_address, no credentials: the worker's environment
    run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "compress-archive/on-demand", "--param",
                          f"params={json.dumps(params)}", "--watch"], env=worker_on_cluster, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    fs.invalidate_cache()
    [stats] = [json.loads(fs.cat(p)) for p in fs.glob(f"{bucket}/archive/_runs/*.json")]
    assert stats["by_status"] == {"ok": 2}
    assert stats["dispatch"]["actor_nodes"] == [cluster["model_node"]]  # the model ran on the second node

    back = {"archive": f"s3://{bucket}/archive", "to": f"s3://{bucket}/restored", "prefix": "", "stages": "single",
            "actor_resources": {"taid_model": 1}}
    run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "rehydrate/sample", "--params",
                          json.dumps({"params": back}), "--watch"], env=worker_on_cluster, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    fs.invalidate_cache()
    [stats] = [json.loads(fs.cat(p)) for p in fs.glob(f"{bucket}/restored/_runs/*.json")]
    assert stats["by_status"] == {"ok": 2} and stats["dispatch"]["actor_nodes"] == [cluster["model_node"]]


def test_staged_run_puts_its_model_actor_on_the_gpu_node(s3, bucket, cluster):
    """The cluster declares a GPU (on the second node): `auto` stages the run, the model actor asks
    for that GPU and so runs there (on its CPU: no CUDA here), and the archive is byte-identical to
    a single-stage local run's."""
    fs = s3.filesystem()
    for p in sorted(SET5.glob("*.png"))[:3]:
        fs.pipe(f"{bucket}/src/{p.name}", p.read_bytes())
    driver = {**no_aws(), **s3.env()}
    # the CPU workers read and write S3: they go where the credentials are (the head has none)
    staged = taid("compress-archive", f"s3://{bucket}/src", f"s3://{bucket}/staged", "--model", "taid-x2",
                  "--workers", "2", "--ray-address", cluster["address"], "--worker-resource", "taid_model=0.5", env=driver)
    assert staged["by_status"] == {"ok": 3} and staged["dispatch"]["stages"] == "staged"
    assert staged["dispatch"]["model_actor_nodes"] == [cluster["model_node"]]
    assert staged["dispatch"]["model_actors"][0]["tiles"] >= 3
    local = taid("compress-archive", f"s3://{bucket}/src", f"s3://{bucket}/local", "--model", "taid-x2",
                 "--workers", "2", "--stages", "single", env=driver)
    assert local["by_status"] == {"ok": 3} and local["dispatch"]["stages"] == "single"
    a, b = manifest(fs, f"{bucket}/staged"), manifest(fs, f"{bucket}/local")
    assert {k: r["output_sha256"] for k, r in a.items()} == {k: r["output_sha256"] for k, r in b.items()}
