"""Manifest index reads on S3 (SeaweedFS on loopback): compaction, a planning stream and point
lookups, with the number of storage reads they take.

    python benchmarks/index_reads.py [--rows 200000] [--runs 4] [--lookups 200] [--label NAME]

Writes benchmarks/results/index_reads.{json,md} (a run with --label adds or replaces its row, so
two code versions can be compared: run it once per checkout). The reads (plan, lookups) go through
a counting proxy in front of SeaweedFS (GET requests, ranged or whole), so the figure is the same
whichever client (pyarrow's own, s3fs) makes them; compaction writes directly.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socketserver
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).parent / "results"


class CountingProxy(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """An HTTP proxy to one upstream that counts requests by method."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: str):
        self.upstream = upstream.split("://", 1)[1]
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def count(self, method: str) -> None:
        with self.lock:
            self.counts[method] = self.counts.get(method, 0) + 1

    def take(self) -> dict:
        with self.lock:
            out, self.counts = self.counts, {}
        return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _forward(self):
        self.server.count(self.command)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command in ("PUT", "POST") else None
        conn = http.client.HTTPConnection(self.server.upstream, timeout=60)
        conn.request(self.command, self.path, body=body, headers={k: v for k, v in self.headers.items()})
        r = conn.getresponse()
        data = r.read()
        self.send_response(r.status)
        head = self.command == "HEAD"  # its Content-Length is the object's: passed through
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection") and (head or k.lower() != "content-length"):
                self.send_header(k, v)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--lookups", type=int, default=200)
    ap.add_argument("--label", default="this checkout")
    args = ap.parse_args()

    from infra.local_s3 import LocalS3

    server = LocalS3(Path(tempfile.mkdtemp(prefix="taid-index-reads-"))).start()
    env = server.env()
    proxy = CountingProxy(env["AWS_ENDPOINT_URL"])
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    os.environ.update(env)
    try:
        from benchmarks.rehydrate_latency import synthetic_manifest
        from pipeline.manifest import index as mi
        from pipeline.storage.fs import filesystem

        fs, _ = filesystem("s3://bench/archive")
        fs.makedirs("bench", exist_ok=True)
        synthetic_manifest("s3://bench/archive", args.rows, args.runs)
        fs, root = filesystem("s3://bench/archive")
        t = time.perf_counter()
        mi.compact(fs, root)  # direct: the proxy is too slow for pyarrow's multipart uploads
        compact_s = time.perf_counter() - t
        # reads through the counting proxy
        reader = mi.ManifestReader("s3://bench/archive", {"client_kwargs": {
            "endpoint_url": f"http://127.0.0.1:{proxy.server_address[1]}"}})
        proxy.take()
        t = time.perf_counter()
        n = sum(x.num_rows for x in reader.latest(mi.PLAN_COLUMNS))
        plan_s, plan_req = time.perf_counter() - t, proxy.take()
        assert n == args.rows, n

        keys = [f"camera{i % 97:02d}/2026/{i // (args.rows // args.runs):03d}/IMG_{i:08d}.jpg"
                for i in random.Random(0).sample(range(args.rows), args.lookups)]
        times = []
        for key in keys:
            t = time.perf_counter()
            assert reader.lookup(key) is not None, key
            times.append(time.perf_counter() - t)
        lookup_req = proxy.take()
        times.sort()
        result = {
            "label": args.label, "rows": args.rows, "runs": args.runs,
            "compact_s": round(compact_s, 2),
            "plan_s": round(plan_s, 2), "plan_gets": plan_req.get("GET", 0),
            "lookup_p50_ms": round(1000 * statistics.median(times), 1),
            "lookup_p95_ms": round(1000 * times[int(0.95 * (len(times) - 1))], 1),
            "gets_per_lookup": round(lookup_req.get("GET", 0) / len(keys), 2),
            "load_avg": round(os.getloadavg()[0], 1),
        }
    finally:
        proxy.shutdown()
        server.stop()
    print(json.dumps(result))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "index_reads.json"
    rows = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["label"] != args.label]
    rows.append(result)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    md = ["# Manifest index reads on S3 (SeaweedFS on loopback, 2 shared cores)", "",
          "`python benchmarks/index_reads.py --rows N --label NAME`: GETs counted by a proxy in front of "
          "SeaweedFS. Lookups: one shared reader, pointer re-read per lookup (as `find_row`), footers cached.", "",
          "| code | rows | compact | plan stream | its GETs | lookup p50 / p95 | GETs per lookup | load |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['label']} | {r['rows']:,} | {r['compact_s']} s | {r['plan_s']} s | "
                  f"{r['plan_gets']} | {r['lookup_p50_ms']} / {r['lookup_p95_ms']} ms | {r['gets_per_lookup']} | "
                  f"{r['load_avg']} |")
    (RESULTS / "index_reads.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
