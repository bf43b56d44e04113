"""The whole local stack in one command, and down again in one command.

    python -m infra.stack up      # SeaweedFS S3 + sample bucket, Ray head, Prefect server, work pool,
                                  # deployments from prefect.yaml, a worker; then compresses and
                                  # rehydrates the sample archive through the deployments
    python -m infra.stack status  # health of each part
    python -m infra.stack down    # stops everything it started and removes runs/stack/

Everything binds 127.0.0.1. Ports: S3 8333, Ray GCS 6379, Ray dashboard/Jobs API 8265, Prefect
4200 unless given (`--s3-port`, `--ray-port`, `--ray-dashboard-port`, `--prefect-port`, 0 = any
free port); a port that is taken is reported by name before anything starts. State (pids, ports,
logs, data, generated S3 keys) lives in `runs/stack/`; `runs/stack/env.sh` exports what a shell
needs to talk to the stack (`. runs/stack/env.sh`). Each service runs in its own process group
and survives this command; `down` stops the worker first (SIGINT, then SIGKILL), then the server,
the Ray head and SeaweedFS.

The helpers (`start_prefect_server`, `start_worker`, `deploy`, `stop_group`...) are what
tests/flows/test_deployment.py uses too, so the tested path and the documented one are the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.runtime.local_env import LOCAL_ENV

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STATE = ROOT / "runs" / "stack"
POOL = "taid-process"
SAMPLE_BUCKET = "taid-samples"

# Ray on loopback without token auth or usage stats; Prefect quiet (../shared/INFRA-NOTES.md)
QUIET_ENV = {**LOCAL_ENV, "PREFECT_CLI_PROMPT": "false"}


class PortTaken(RuntimeError):
    pass


class StackError(RuntimeError):
    pass


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def claim_ports(requested: dict[str, int]) -> dict[str, int]:
    """0 -> a free port; an explicit port must be free, or PortTaken names every clash at once."""
    taken = [f"{what} port {port}" for what, port in requested.items() if port and not port_is_free(port)]
    if taken:
        raise PortTaken(
            "already in use on 127.0.0.1: " + ", ".join(taken)
            + ". Stop whatever holds it (`python -m infra.stack down` if it is an earlier stack), or pick "
            "other ports (--s3-port/--ray-port/--ray-dashboard-port/--prefect-port N, 0 = any free port)."
        )
    return {what: port or free_port() for what, port in requested.items()}


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **QUIET_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(extra or {})
    return env


def spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    """A process in its own session/process group (pgid == pid), output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop_group(pid: int | None, first: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Signal the process group `pid` leads with `first`, then SIGKILL after `grace` seconds."""
    if not pid or not alive(pid):
        return
    try:
        os.killpg(pid, first)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)


def wait_until(what: str, check, proc: subprocess.Popen | None, log: Path | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise StackError(f"{what} exited with {proc.returncode} before it was healthy; log {log}:\n{tail}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} not healthy after {timeout:.0f} s; see {log}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------- Prefect
def prefect_cli(args: list[str], env: dict[str, str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise StackError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def prefect_healthy(api_url: str) -> bool:
    import httpx

    return httpx.get(f"{api_url}/health", timeout=2).status_code == 200


def start_prefect_server(home: Path, port: int, log: Path, extra_env: dict[str, str] | None = None,
                         timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on 127.0.0.1:port with SQLite under `home`; returns (process, API URL)."""
    home.mkdir(parents=True, exist_ok=True)
    env = base_env({"PREFECT_HOME": str(home), **(extra_env or {})})
    env.pop("PREFECT_API_URL", None)
    proc = spawn([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    api_url = f"http://127.0.0.1:{port}/api"
    wait_until("Prefect server", lambda: prefect_healthy(api_url), proc, log, timeout)
    return proc, api_url


def client_env(api_url: str, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Prefect CLI calls and the worker: the API URL, S3/Ray settings from `extra`
    and TAID_ARCHIVE_ROOT (the checkout the deployments' pull step changes into)."""
    return base_env({"PREFECT_API_URL": api_url, "PREFECT_HOME": str(home), "TAID_ARCHIVE_ROOT": str(ROOT),
                     **(extra or {})})


def deploy(env: dict[str, str], pool: str = POOL, names: list[str] | None = None) -> str:
    """Create the process work pool (if missing) and deploy from prefect.yaml (all, or `names`)."""
    if prefect_cli(["work-pool", "inspect", pool], env, check=False).returncode != 0:
        prefect_cli(["work-pool", "create", pool, "--type", "process"], env)
    which = [a for n in names for a in ("--name", n)] if names else ["--all"]
    # TAID_ARCHIVE_ROOT stays out of the deploy: the pull step's {{ $TAID_ARCHIVE_ROOT }} is then
    # kept as a template and resolved by each worker (its own checkout), not baked in here
    env = {k: v for k, v in env.items() if k != "TAID_ARCHIVE_ROOT"}
    return prefect_cli(["--no-prompt", "deploy", *which], env, timeout=600).stdout


def start_worker(env: dict[str, str], log: Path, pool: str = POOL, name: str = "taid-local-worker",
                 timeout: float = 90) -> subprocess.Popen:
    """`prefect worker start` on the pool; healthy once the server lists it ONLINE."""
    import httpx

    proc = spawn([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", name, "--type", "process"], env, log)
    api = env["PREFECT_API_URL"]

    def online() -> bool:
        r = httpx.post(f"{api}/work_pools/{pool}/workers/filter", json={}, timeout=5)
        return any(w["name"] == name and w.get("status") == "ONLINE" for w in r.json())

    wait_until("Prefect worker", online, proc, log, timeout)
    return proc


def stop_worker(proc_or_pid) -> None:
    """The worker ignores SIGTERM: SIGINT, then SIGKILL (INFRA-NOTES). Stop it before the server."""
    pid = proc_or_pid.pid if isinstance(proc_or_pid, subprocess.Popen) else proc_or_pid
    stop_group(pid, signal.SIGINT, grace=15)
    if isinstance(proc_or_pid, subprocess.Popen):
        proc_or_pid.poll()


# -------------------------------------------------------------------------------------------- Ray
@contextlib.contextmanager
def prefect_with_worker(extra_env: dict[str, str], names: list[str] | None = None,
                        server_env: dict[str, str] | None = None, worker_name: str = "taid-local-worker"):
    """A Prefect server on a free port (own PREFECT_HOME in a temp folder), the deployments of
    prefect.yaml (all, or `names`) and a process worker whose environment has `extra_env` (S3 keys,
    TAID_RAY_ADDRESS...). Yields (API URL, env for CLI calls, deploy output). On failure the logs go to
    stderr; at the end the worker is stopped first, then the server, and the folder removed."""
    import shutil

    home = Path(tempfile.mkdtemp(prefix="taid-prefect-"))
    logs = home / "logs"
    server = worker = None
    try:
        server, api = start_prefect_server(home / "home", free_port(), logs / "server.log", extra_env=server_env)
        env = client_env(api, home / "home", extra_env)
        out = deploy(env, names=names)
        worker = start_worker(env, logs / "worker.log", name=worker_name)
        yield api, env, out
    except BaseException:
        for f in sorted(logs.glob("*.log")):
            print(f"---- {f.name}\n{f.read_text(errors='replace')[-4000:]}", file=sys.stderr)
        raise
    finally:
        if worker is not None:
            stop_worker(worker)
        if server is not None:
            stop_group(server.pid, signal.SIGTERM, grace=10)
        shutil.rmtree(home, ignore_errors=True)


def start_ray_head(temp: Path, port: int, dashboard_port: int, env: dict[str, str], log: Path,
                   timeout: float = 120) -> subprocess.Popen:
    """`ray start --head --block` (the foreground process holds the head; killing its group stops it)."""
    ports = {
        "--port": port, "--dashboard-port": dashboard_port, "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port(),
        "--node-manager-port": free_port(), "--object-manager-port": free_port(),
    }
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--num-cpus={min(2, os.cpu_count() or 1)}",
           "--dashboard-host=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats",
           *(f"{k}={v}" for k, v in ports.items())]
    proc = spawn(cmd, env, log)
    address = f"http://127.0.0.1:{dashboard_port}"

    def jobs_api() -> bool:
        from ray.job_submission import JobSubmissionClient

        JobSubmissionClient(address).list_jobs()
        return True

    wait_until("Ray head", jobs_api, proc, log, timeout)
    return proc


# ---------------------------------------------------------------------------------------- samples
def upload_samples(fs, bucket: str = SAMPLE_BUCKET, prefix: str = "photos") -> int:
    """The bundled photos (tests/data/Set5, Set14) as the sample archive: s3://BUCKET/photos/Set5/..."""
    fs.makedirs(bucket, exist_ok=True)
    count = 0
    for path in sorted((ROOT / "tests" / "data").glob("Set*/*.png")):
        fs.pipe(f"{bucket}/{prefix}/{path.parent.name}/{path.name}", path.read_bytes())
        count += 1
    return count


# ------------------------------------------------------------------------------------------ state
def load_state(state_dir: Path) -> dict:
    f = state_dir / "state.json"
    return json.loads(f.read_text()) if f.exists() else {}


def save_state(state_dir: Path, state: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    f = state_dir / "state.json"
    f.write_text(json.dumps(state, indent=2))
    f.chmod(0o600)


def write_env_file(state_dir: Path, state: dict, s3_env: dict[str, str]) -> Path:
    lines = ["# generated by `python -m infra.stack up`: `. runs/stack/env.sh` to use the local stack",
             f"export PREFECT_API_URL={state['prefect_api']}", f"export PREFECT_HOME={state['prefect_home']}",
             f"export RAY_ADDRESS={state['ray_jobs']}"]
    lines += [f"export {k}={v}" for k, v in {**QUIET_ENV, **s3_env}.items()]
    f = state_dir / "env.sh"
    f.write_text("\n".join(lines) + "\n")
    f.chmod(0o600)
    return f


def health(state: dict) -> dict[str, str]:
    """One line per part: 'ok ...' or why not."""
    import httpx

    out = {}
    for part, pid in state.get("pids", {}).items():
        out[part] = "ok" if alive(pid) else "process gone"
    if out.get("s3") == "ok":
        try:
            import s3fs

            fs = s3fs.S3FileSystem(key=state["s3_key"], secret=state["s3_secret"],
                                   client_kwargs={"endpoint_url": state["s3_endpoint"]})
            n = len(fs.ls(f"{SAMPLE_BUCKET}"))
            out["s3"] = f"ok {state['s3_endpoint']} (s3://{SAMPLE_BUCKET}: {n} entries)"
        except Exception as exc:
            out["s3"] = f"not answering: {type(exc).__name__}: {exc}"
    if out.get("ray_head") == "ok":
        try:
            from ray.job_submission import JobSubmissionClient

            JobSubmissionClient(state["ray_jobs"]).list_jobs()
            out["ray_head"] = f"ok {state['ray_jobs']} (GCS 127.0.0.1:{state['ports']['ray']})"
        except Exception as exc:
            out["ray_head"] = f"not answering: {type(exc).__name__}"
    if out.get("prefect_server") == "ok":
        out["prefect_server"] = ("ok " + state["prefect_api"]) if _safe(lambda: prefect_healthy(state["prefect_api"])) \
            else "not answering"
    if out.get("worker") == "ok":
        try:
            r = httpx.post(f"{state['prefect_api']}/work_pools/{POOL}/workers/filter", json={}, timeout=5)
            st = {w["name"]: w.get("status") for w in r.json()}.get("taid-local-worker")
            out["worker"] = f"ok (pool {POOL}: {st})" if st == "ONLINE" else f"process up, worker {st}"
        except Exception as exc:
            out["worker"] = f"unknown: {type(exc).__name__}"
    return out


def _safe(fn) -> bool:
    try:
        return bool(fn())
    except Exception:
        return False


# ------------------------------------------------------------------------------------------ up/down
def up(args) -> int:
    from infra.local_s3 import LocalS3

    state_dir = Path(args.state)
    state = load_state(state_dir)
    if state.get("pids") and any(alive(p) for p in state["pids"].values()):
        print(f"a stack is already running from {state_dir} (`python -m infra.stack status`, or `down` first)")
        for part, line in health(state).items():
            print(f"  {part:<15} {line}")
        return 1
    try:
        ports = claim_ports({"S3": args.s3_port, "Ray GCS": args.ray_port, "Ray dashboard": args.ray_dashboard_port,
                             "Prefect server": args.prefect_port})
    except PortTaken as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    # Ray's socket paths must stay under 107 characters: its temp dir goes under /tmp
    ray_temp = Path(tempfile.mkdtemp(prefix="taid-ray-"))
    state = {"ports": {"s3": ports["S3"], "ray": ports["Ray GCS"], "ray_dashboard": ports["Ray dashboard"],
                       "prefect": ports["Prefect server"]},
             "pids": {}, "ray_temp": str(ray_temp), "prefect_home": str(state_dir / "prefect-home")}
    t0 = time.monotonic()
    try:
        print(f"[1/5] SeaweedFS S3 on 127.0.0.1:{ports['S3']} ...", flush=True)
        s3 = LocalS3(state_dir / "seaweedfs", port=ports["S3"])
        s3.start()
        state["pids"]["s3"] = s3.proc.pid
        state.update(s3_endpoint=s3.endpoint, s3_key=s3.key, s3_secret=s3.secret)
        save_state(state_dir, state)
        n = upload_samples(s3.filesystem())
        print(f"      bucket s3://{SAMPLE_BUCKET}/photos/ with {n} sample images", flush=True)
        s3_env = s3.env()

        print(f"[2/5] Ray head (GCS {ports['Ray GCS']}, Jobs API http://127.0.0.1:{ports['Ray dashboard']}) ...", flush=True)
        head = start_ray_head(ray_temp, ports["Ray GCS"], ports["Ray dashboard"], base_env(s3_env), logs / "ray-head.log")
        state["pids"]["ray_head"] = head.pid
        state["ray_jobs"] = f"http://127.0.0.1:{ports['Ray dashboard']}"
        save_state(state_dir, state)

        print(f"[3/5] Prefect server on 127.0.0.1:{ports['Prefect server']} ...", flush=True)
        server, api = start_prefect_server(Path(state["prefect_home"]), ports["Prefect server"], logs / "prefect-server.log")
        state["pids"]["prefect_server"] = server.pid
        state["prefect_api"] = api
        save_state(state_dir, state)
        env_file = write_env_file(state_dir, state, s3_env)

        print(f"[4/5] work pool {POOL} + deployments from prefect.yaml ...", flush=True)
        env = client_env(api, Path(state["prefect_home"]), s3_env)
        deploy(env)

        print("[5/5] Prefect worker ...", flush=True)
        worker = start_worker(env, logs / "worker.log")
        state["pids"]["worker"] = worker.pid
        save_state(state_dir, state)
    except Exception as exc:
        print(f"error: {exc}\nstopping what was started", file=sys.stderr)
        down_state(state_dir, state, quiet=True)
        return 1
    print(f"stack up in {time.monotonic() - t0:.0f} s; `. {env_file.relative_to(ROOT) if env_file.is_relative_to(ROOT) else env_file}` "
          "to use it from a shell")
    for part, line in health(state).items():
        print(f"  {part:<15} {line}")
    if args.demo:
        return demo(env)
    return 0


def demo(env: dict[str, str]) -> int:
    """compress-archive/sample then rehydrate/sample through the deployments, as the README does."""
    for name in ("compress-archive/sample", "rehydrate/sample"):
        print(f"$ prefect deployment run {name} --watch", flush=True)
        proc = prefect_cli(["deployment", "run", name, "--watch", "--watch-timeout", "900"], env, timeout=960, check=False)
        last = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or [proc.stderr.strip()[-500:]]
        print("  " + last[0], flush=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            return 1
    import s3fs

    fs = s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                           client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]})
    small = [p for p in fs.find(f"{SAMPLE_BUCKET}/archive") if "/_" not in p]
    restored = [p for p in fs.find(f"{SAMPLE_BUCKET}/restored") if "/_" not in p]
    size = lambda paths: sum(fs.info(p)["size"] for p in paths)  # noqa: E731
    originals = [p for p in fs.find(f"{SAMPLE_BUCKET}/photos")]
    print(f"s3://{SAMPLE_BUCKET}/photos    {len(originals)} originals, {size(originals)} B")
    print(f"s3://{SAMPLE_BUCKET}/archive   {len(small)} small files, {size(small)} B (+ _manifest/, _runs/)")
    print(f"s3://{SAMPLE_BUCKET}/restored  {len(restored)} rehydrated images, {size(restored)} B")
    return 0


def down_state(state_dir: Path, state: dict, quiet: bool = False) -> None:
    pids = state.get("pids", {})
    # worker before server (it ignores SIGTERM), then the rest
    if pids.get("worker"):
        stop_worker(pids["worker"])
        if not quiet:
            print("  stopped worker")
    for part, sig, grace in (("prefect_server", signal.SIGTERM, 10), ("ray_head", signal.SIGKILL, 0),
                             ("s3", signal.SIGKILL, 0)):
        if pids.get(part):
            stop_group(pids[part], sig, grace)
            if not quiet:
                print(f"  stopped {part}")
    if state.get("ray_temp"):
        subprocess.run(["rm", "-rf", state["ray_temp"]], check=False)
    subprocess.run(["rm", "-rf", str(state_dir)], check=False)


def down(args) -> int:
    state_dir = Path(args.state)
    state = load_state(state_dir)
    if not state:
        print(f"no stack state in {state_dir}: nothing to stop")
        return 0
    down_state(state_dir, state)
    print(f"stack down; removed {state_dir}")
    return 0


def status(args) -> int:
    state = load_state(Path(args.state))
    if not state:
        print(f"no stack state in {args.state}")
        return 1
    report = health(state)
    for part, line in report.items():
        print(f"  {part:<15} {line}")
    return 0 if all(v.startswith("ok") for v in report.values()) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.stack", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start S3, Ray head, Prefect server, deployments and a worker")
    p_up.add_argument("--s3-port", type=int, default=8333)
    p_up.add_argument("--ray-port", type=int, default=6379)
    p_up.add_argument("--ray-dashboard-port", type=int, default=8265)
    p_up.add_argument("--prefect-port", type=int, default=4200)
    p_up.add_argument("--no-demo", dest="demo", action="store_false",
                      help="do not run compress-archive/sample and rehydrate/sample after start-up")
    for p in (p_up, sub.add_parser("down", help="stop everything and remove the state folder"),
              sub.add_parser("status", help="health of each part")):
        p.add_argument("--state", default=str(STATE), help="state folder (default runs/stack)")
    args = ap.parse_args(argv)
    return {"up": up, "down": down, "status": status}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
