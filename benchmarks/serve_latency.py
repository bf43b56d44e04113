"""The archive server (`taid serve`) under load, on this machine: latency of a cached thumbnail, of
warm full-image rehydrations at 0.4, 2 and 12 MP, of the first requests after start-up; requests/s
with 1, 4 and 16 concurrent clients; memory per replica; Serve's and our Prometheus metrics.

    python benchmarks/serve_latency.py [--repeats 3] [--seconds 5]

A real SeaweedFS S3 holds the archive (synthetic photos compressed with taid-x4), a local Ray runs
one replica (1 CPU) and Serve's proxy on 127.0.0.1. Clients keep their connection open (as
browsers do). Writes benchmarks/results/serve_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.rehydrate_latency import pct, photo  # noqa: E402
from pipeline.runtime.local_env import set_local_env_defaults  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SIZES = {"0.4MP": (548, 730), "2MP": (1224, 1632), "12MP": (3000, 4000)}  # (h, w)
BUCKET = "serve-bench"


def build_archive(fs, n_thumbs: int) -> dict[str, tuple[int, int]]:
    """Small files + one manifest part written the way compress-archive writes them (taid-x4, PNG)."""
    from PIL import Image

    from models.zoo import load_pair
    from pipeline.codec.options import CodecOptions
    from pipeline.codec.image import compress_image
    from pipeline.manifest.parts import ManifestWriter
    from pipeline.storage.fs import atomic_write

    pair = load_pair("taid-x4")
    photos = {f"photos/{name}.jpg": hw for name, hw in SIZES.items()}
    photos |= {f"gallery/img{i:02d}.jpg": (480, 640) for i in range(n_thumbs)}
    writer = ManifestWriter(fs, f"{BUCKET}/archive", "bench")
    for i, (key, (h, w)) in enumerate(photos.items()):
        buf = io.BytesIO()
        Image.fromarray(photo(h, w, i)).save(buf, "JPEG", quality=92)
        small, _, rec = compress_image(buf.getvalue(), pair, CodecOptions(model_id="taid-x4", scale=4))
        uri = f"s3://{BUCKET}/archive/{key}.png"
        atomic_write(fs, uri.removeprefix("s3://"), small)
        writer.add({**rec.model_dump(), "run_id": "bench", "source_key": key, "source_uri": f"s3://{BUCKET}/src/{key}",
                    "output_uri": uri, "processed_at": datetime.now(timezone.utc)})
        print(f"compressed {key} ({w}x{h})", flush=True)
    writer.close()
    return photos


class Conn:
    """One keep-alive client connection."""

    def __init__(self, port: int):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def get(self, path: str) -> tuple[int, bytes, float]:
        t = time.perf_counter()
        self.c.request("GET", path)
        r = self.c.getresponse()
        body = r.read()
        return r.status, body, time.perf_counter() - t


def timed(port: int, paths: list[str]) -> list[float]:
    conn = Conn(port)
    out = []
    for p in paths:
        status, _, dt = conn.get(p)
        assert status == 200, (p, status)
        out.append(dt)
    return out


def summary(times: list[float]) -> dict:
    return {"n": len(times), "p50_ms": 1000 * pct(times, 50), "p95_ms": 1000 * pct(times, 95),
            "p99_ms": 1000 * pct(times, 99), "max_ms": 1000 * max(times)}


def tree_rss_bytes(root: int) -> dict:
    """RSS of every process below `root` but the S3 server (Ray's GCS, raylet, Serve's controller,
    proxy and replicas are all children of this driver, as of `taid serve`), summed (shared pages
    count once per process)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "weed":  # the benchmark's SeaweedFS, not part of the server
                    continue
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    todo, seen = list(children.get(root, [])), []  # not the driver: here it also built the archive with torch
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += children.get(pid, [])
    return {"processes": len(seen), "rss_bytes": sum(rss.get(p, 0) for p in seen)}


def load(port: int, paths: list[str], clients: int, seconds: float) -> dict:
    """`clients` threads, each on its own connection, cycling through `paths` for `seconds`."""
    stop = time.perf_counter() + seconds
    lat: list[float] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        conn, mine, k = Conn(port), [], i
        while time.perf_counter() < stop:
            status, _, dt = conn.get(paths[k % len(paths)])
            assert status == 200
            mine.append(dt)
            k += 1
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return {"clients": clients, "requests": len(lat), "requests_per_s": len(lat) / wall, **summary(lat)}


def stats(port: int) -> dict:
    return json.loads(Conn(port).get("/api/stats")[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="samples of each uncached full-image size (12 MP: this many)")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each concurrency level")
    ap.add_argument("--thumbs", type=int, default=12, help="gallery images")
    ap.add_argument("--quick", action="store_true", help="start-up and cached thumbnails under 1 and 16 clients only; "
                    "prints, writes no results (for profiling)")
    args = ap.parse_args()
    from pipeline.runtime.local_env import SERVE_ENV

    set_local_env_defaults(**SERVE_ENV)  # as `taid serve` with its own local Ray
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    import ray
    from ray import serve

    from infra.local_s3 import LocalS3, free_port
    from pipeline.serving.app import deploy
    from pipeline.serving.config import ServeParams

    report: dict = {"benchmark": "serve_latency", "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                    "model": "taid-x4", "replicas": 1, "replica_cpus": 1}
    with tempfile.TemporaryDirectory() as tmp, LocalS3(Path(tmp) / "s3") as s3:
        os.environ.update(s3.env())
        fs = s3.filesystem()
        fs.makedirs(BUCKET, exist_ok=True)
        photos = build_archive(fs, args.thumbs)
        metrics_port, port = free_port(), free_port()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(Path(tmp) / "ray"), _metrics_export_port=metrics_port)
        params = ServeParams(archive=f"s3://{BUCKET}/archive", allow_anonymous=True, cache_bytes=512 * 2**20)

        # 1. start-up, then the first requests (cold: nothing cached, pair already loaded by the replica)
        t = time.perf_counter()
        deploy(params, port=port, num_cpus=1)
        report["startup_s"] = time.perf_counter() - t
        cold = Conn(port)
        report["cold"] = {"thumb_ms": 1000 * cold.get("/thumb/gallery/img00.jpg")[2],
                          "image_0.4MP_ms": 1000 * cold.get("/image/photos/0.4MP.jpg")[2]}
        report["memory_after_start"] = stats(port)
        print(json.dumps({"startup_s": report["startup_s"], "cold": report["cold"]}), flush=True)

        # 2. cached responses: thumbnail (bar: p50 < 30 ms) and a cached 2-MP image
        thumbs = [f"/thumb/{k}" for k in photos if k.startswith("gallery/")]
        timed(port, thumbs)  # fill the cache
        report["cached_thumb"] = summary(timed(port, [thumbs[0]] * 200))
        timed(port, ["/image/photos/2MP.jpg"])
        report["cached_image_2MP"] = summary(timed(port, ["/image/photos/2MP.jpg"] * 30))
        print(json.dumps({"cached_thumb": report["cached_thumb"]}), flush=True)

        # 3. requests/s with 1, 4, 16 clients (cached thumbnails; cached 0.4-MP images)
        if args.quick:
            print(json.dumps([load(port, thumbs, c, args.seconds) for c in (1, 16)]), flush=True)
            print(json.dumps({"replica": stats(port)["rss_bytes"], "tree": tree_rss_bytes(os.getpid())}))
            serve.shutdown()
            ray.shutdown()
            return
        report["throughput_thumbs"] = [load(port, thumbs, c, args.seconds) for c in (1, 4, 16)]
        report["serve_tree_after_load"] = tree_rss_bytes(os.getpid())
        report["throughput_images_0.4MP"] = [load(port, ["/image/photos/0.4MP.jpg"], c, args.seconds) for c in (1, 4, 16)]
        print(json.dumps(report["throughput_thumbs"]), flush=True)

        # 4. warm rehydration, nothing cached: the same app with the response cache off
        deploy(params.model_copy(update={"cache_bytes": 0}), port=port, num_cpus=1)
        time.sleep(2)
        warm = {}
        for name, n in (("0.4MP", 4 * args.repeats), ("2MP", 2 * args.repeats), ("12MP", args.repeats)):
            times = timed(port, [f"/image/photos/{name}.jpg"] * n)
            warm[name] = {**summary(times), "pixels": SIZES[name][0] * SIZES[name][1]}
            print(name, json.dumps(warm[name]), flush=True)
        report["warm_rehydrate_uncached"] = warm
        report["memory_after_12MP"] = stats(port)

        # 5. Prometheus: Serve's own request metrics and ours, from Ray's metrics endpoint
        time.sleep(12)  # metrics are exported every few seconds
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
            names = sorted({line.split("{")[0].split(" ")[0] for line in text.splitlines()
                            if line.startswith(("ray_serve_num_http_requests", "ray_serve_http_request_latency_ms",
                                                "ray_taid_serve", "taid_serve"))})
        except OSError as exc:
            names = [f"unavailable: {exc}"]
        report["prometheus_metrics_seen"] = names
        serve.shutdown()
        ray.shutdown()

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_latency.json").write_text(json.dumps(report, indent=2))
    write_markdown(report)


def write_markdown(r: dict) -> None:
    ms = lambda s: f"{s['p50_ms']:.1f} / {s['p95_ms']:.1f}"  # noqa: E731
    mb = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    md = [
        "# Archive server latency (`taid serve`)", "",
        f"`python benchmarks/serve_latency.py`: SeaweedFS S3 on loopback, local Ray, one replica with 1 CPU, "
        f"taid-x4 PNG small files, keep-alive clients on 127.0.0.1. {r['cpus']} cores shared with other jobs "
        f"(load average at start {r['load_average_at_start'][0]:.1f}): times are upper bounds.", "",
        "| request | p50 / p95 (ms) | samples |", "|---|---:|---:|",
        f"| cached thumbnail (bar: p50 < 30 ms) | {ms(r['cached_thumb'])} | {r['cached_thumb']['n']} |",
        f"| cached full image, 2 MP | {ms(r['cached_image_2MP'])} | {r['cached_image_2MP']['n']} |",
    ]
    for name, s in r["warm_rehydrate_uncached"].items():
        md.append(f"| warm rehydrate (pair loaded, not cached), {name} | {ms(s)} | {s['n']} |")
    md += [
        f"| first thumbnail after start-up | {r['cold']['thumb_ms']:.1f} | 1 |",
        f"| first full image after start-up, 0.4 MP | {r['cold']['image_0.4MP_ms']:.1f} | 1 |",
        "", f"Start-up (deploy until ready, pair preloaded): {r['startup_s']:.1f} s.", "",
        "| concurrent clients | thumbnails req/s | p50 / p95 / p99 (ms) | cached 0.4-MP images req/s | p50 / p95 / p99 (ms) |",
        "|---:|---:|---:|---:|---:|",
    ]
    ms3 = lambda s: f"{s['p50_ms']:.1f} / {s['p95_ms']:.1f} / {s['p99_ms']:.1f}"  # noqa: E731
    for t, i in zip(r["throughput_thumbs"], r["throughput_images_0.4MP"]):
        md.append(f"| {t['clients']} | {t['requests_per_s']:.0f} | {ms3(t)} | {i['requests_per_s']:.0f} | {ms3(i)} |")
    t16 = r["throughput_thumbs"][-1]
    md += ["", f"Bar: warm cached thumbnails under {t16['clients']} clients, p99 < 100 ms: p50 {t16['p50_ms']:.1f} ms, "
           f"p99 {t16['p99_ms']:.1f} ms ({'met' if t16['p99_ms'] < 100 else 'missed'})."]
    a, b = r["memory_after_start"], r["memory_after_12MP"]
    md += [
        "", "Memory per replica (RSS of the replica process):", "",
        f"- after start-up (torch + pair loaded): {mb(a['rss_bytes'])}",
        f"- after the 12-MP rehydrations: {mb(b['rss_bytes'])}, peak {mb(b['rss_peak_bytes'])}",
        f"- the whole server after the load runs (Ray's GCS, raylet, agents, Serve's controller, proxy and the "
        f"replica: {r['serve_tree_after_load']['processes']} processes, RSS summed): "
        f"{mb(r['serve_tree_after_load']['rss_bytes'])}",
        "", f"Prometheus (Ray's metrics endpoint): {', '.join(r['prometheus_metrics_seen']) or 'none seen'}.",
    ]
    (RESULTS / "serve_latency.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
