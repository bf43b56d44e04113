"""Fault injection on loopback: an HTTP proxy in front of a real S3 server (SeaweedFS) that answers
a share of requests with S3's `503 SlowDown`, as a throttled bucket does.

    proxy = SlowDownProxy(s3.port, share=0.3, seed=1)       # 30 % of requests throttled
    proxy = SlowDownProxy(s3.port, first=3)                   # the first 3, then none
    proxy = SlowDownProxy(s3.port, always="img-007")          # every PUT of a key containing this
    ... point a client at proxy.endpoint ...; proxy.stop()

The Host header is forwarded unchanged, so request signatures still verify upstream. `counts`
records what it saw: requests, throttled answers, and PUTs per path."""

from __future__ import annotations

import http.client
import http.server
import random
import threading
from collections import Counter

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "expect", "te", "trailer", "upgrade",
                        "proxy-connection", "content-length"})
SLOWDOWN = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


class SlowDownProxy:
    def __init__(self, upstream_port: int, share: float = 0.0, first: int = 0, always: str | None = None,
                 seed: int = 0):
        self.upstream_port, self.share, self.left, self.always = upstream_port, share, first, always
        self.rng = random.Random(seed)
        self.counts: Counter = Counter()
        self.puts: Counter = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` answered

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():  # Arrow's S3 client streams
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline().strip():  # trailers, then the blank line
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self):
                body = self._body()
                if proxy._throttle(self.command, self.path):
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOWDOWN)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                # a HEAD answer has no body but the object's length, which is what the client asked
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _any

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _throttle(self, method: str, path: str) -> bool:
        with self._lock:
            self.counts["requests"] += 1
            if method == "PUT":
                self.puts[path.split("?", 1)[0]] += 1
            hit = (self.always is not None and method == "PUT" and self.always in path) or self.left > 0 or (
                self.share > 0 and self.rng.random() < self.share)
            if self.left > 0:
                self.left -= 1
            if hit:
                self.counts["throttled"] += 1
            return hit

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
