"""Throughput of TAID on CPU: megapixels/s per core (model alone and through the codec) and the
whole compress-archive flow S3 to S3, each next to a plain Pillow bicubic floor in the same run.

    python benchmarks/throughput.py [--images 20] [--codec-images 4] [--models taid-x2 taid-x4]
                                    [--flow-model taid-x2] [--workers 1 2]

Data: synthetic photo-like images (smooth gradients, soft-edged shapes, two scales of texture
noise and grain; 1.2-1.6 MP each, made with a fixed seed), alternately PNG and JPEG q90.

Part 1 (issue 8), one CPU core: every measurement runs in its own spawned process with
torch.set_num_threads(1) (Pillow is single-threaded), so "MP/s per core" is MP/s on one thread;
MP per CPU-second (user+sys of that process) is recorded too, as a check on a shared machine.
Peak memory is that process's RSS high-water mark during the timed work: VmHWM from
/proc/self/status, reset to the current RSS (clear_refs 5) just before the work starts, next to
the RSS at that moment (torch, model loaded, inputs decoded), so the growth is the work's.
Not resource.getrusage's ru_maxrss: on Linux it keeps the high-water mark of the forked copy of
the parent across exec, so a spawned child reports at least the parent's RSS (recorded too).
  * model alone: tiling.downscale_array / upscale_array on decoded uint8 arrays
  * codec: codec.compress_image (file bytes -> PNG small file) and codec.rehydrate_image
    (small file -> the source's format: PNG stays PNG, JPEG stays JPEG q95)
  * floor: Pillow decode + bicubic 1/s + PNG encode, and decode + bicubic up + encode (same
    output formats as the codec's rehydration)
All rates count megapixels of the original (full-resolution) image, in both directions.

Part 2 (issue 4): a SeaweedFS S3 on loopback (infra/local_s3.py), a local Ray with 2 CPUs, the
`compress_archive` flow (Prefect, ephemeral API) with N actors of 1 CPU (1 torch thread) each,
timed from the call to its return (listing, actor start + model load, manifest, run stats
included), after one untimed warm-up run (Prefect's ephemeral server start). Floors, run just
before each flow run: a single-process loop of S3 GET + Pillow decode + bicubic + PNG encode +
S3 PUT, and for N > 1 the same loop in N spawned processes (same number of cores as the flow).
Then one in-process CompressWorker (what an actor runs, 1 thread) over the same objects, with
timers around S3 GET, image_io.decode_image, tiling.downscale_array, small_file.encode_small,
the S3 PUT and the size read-back: where the time goes.

Writes benchmarks/results/throughput.{json,md,png}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput_archive import _plain_init, _plain_one  # noqa: E402  (the same Pillow floor)
RESULTS = Path(__file__).parent / "results"

from pipeline.runtime.local_env import set_local_env_defaults  # noqa: E402

set_local_env_defaults(PREFECT_LOGGING_LEVEL="WARNING")

SIZES = [(1280, 960), (960, 1280), (1440, 1080), (1200, 1200), (1536, 1024), (1024, 1280)]
JPEG_Q = 95  # image_io.DEFAULT_JPEG_QUALITY: what a JPEG source is rehydrated as


# ------------------------------------------------------------------------------ data
def synth_image(seed: int, w: int, h: int):
    """A photo-like RGB image: smooth colour gradients, a few soft-edged shapes, mid-scale
    texture, fine grain. Deterministic for a seed."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)

    def smooth(gh, gw, amp):
        field = rng.uniform(0, 255, (gh, gw, 3)).astype(np.uint8)
        up = Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC)
        return (np.asarray(up, np.float32) - 127.5) * (amp / 127.5)

    img = 127.5 + smooth(4, 5, 100) + smooth(16, 20, 25)
    shapes = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(shapes)
    for _ in range(rng.integers(4, 9)):
        x0, y0 = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.9) * h
        box = [x0, y0, x0 + rng.uniform(0.1, 0.5) * w, y0 + rng.uniform(0.1, 0.5) * h]
        colour = tuple(int(c) for c in rng.integers(1, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    # soft edges: the shapes (and their mask, any non-black pixel) blurred by the same radius
    radius = rng.uniform(0.6, 2.0)
    mask = Image.fromarray((np.asarray(shapes).max(axis=2) > 0).astype(np.uint8) * 255)
    mask = mask.filter(ImageFilter.GaussianBlur(radius))
    shapes = shapes.filter(ImageFilter.GaussianBlur(radius))
    a = np.asarray(mask, np.float32)[..., None] / 255.0
    img = img * (1 - 0.7 * a) + np.asarray(shapes, np.float32) * (0.7 * a)
    img += smooth(h // 6, w // 6, 18)  # mid-scale texture
    img += rng.normal(0, 4.0, (h, w, 3)).astype(np.float32)  # grain
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))


def make_data(folder: Path, n: int, seed: int) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        im = synth_image(seed + i, w, h)
        if i % 2 == 0:
            path = folder / f"img{i:02d}.png"
            im.save(path, "PNG")
        else:
            path = folder / f"img{i:02d}.jpg"
            im.save(path, "JPEG", quality=90)
        out.append({"name": path.name, "path": str(path), "width": w, "height": h, "bytes": path.stat().st_size,
                    "format": "PNG" if i % 2 == 0 else "JPEG"})
    return out


# ------------------------------------------------------------------------------ part 1: one core
def _status_kib(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_hwm() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(spec: dict) -> dict:
    """Runs in a fresh spawned process: one measurement on one thread."""
    import gc
    import resource

    import numpy as np
    from PIL import Image

    kind, files, scale = spec["kind"], spec["files"], spec["scale"]
    small_dir = Path(spec["small_dir"])
    small_dir.mkdir(parents=True, exist_ok=True)
    datas = [Path(f["path"]).read_bytes() for f in files]
    pair = None
    if not kind.startswith("pillow"):
        import torch

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        from models.zoo import load_pair
        from pipeline.codec import image as codec, tiling

        pair = load_pair(spec["model"])

    def small_name(f):
        return small_dir / (f["name"] + ".small.png")

    produced: list = []  # small files written after the timer, for the rehydrate measurements

    # ---- inputs (untimed) and the work (timed)
    if kind == "model_down":
        arrays = [tiling.pad_to_multiple(np.asarray(Image.open(io.BytesIO(d)).convert("RGB")), scale) for d in datas]
        tiling.downscale_array(pair, arrays[0][:256, :256].copy(), scale)  # warm-up (oneDNN, threads)

        def work():
            return [tiling.downscale_array(pair, a, scale)[0].nbytes for a in arrays]
    elif kind == "model_up":
        arrays = [np.asarray(Image.open(small_name(f)).convert("RGB")) for f in files]
        tiling.upscale_array(pair, arrays[0][:64, :64].copy(), scale)

        def work():
            return [tiling.upscale_array(pair, a, scale)[0].nbytes for a in arrays]
    elif kind == "codec_compress":
        options = codec.CodecOptions(model_id=spec["model"], scale=scale, small_format="png")
        tiling.downscale_array(pair, np.zeros((256, 256, 3), np.uint8), scale)

        def work():
            sizes = []
            for f, d in zip(files, datas):
                small, _, rec = codec.compress_image(d, pair, options)
                assert rec.ok, rec.error_message
                produced.append((small_name(f), small))
                sizes.append(len(small))
            return sizes
    elif kind == "codec_rehydrate":
        smalls = [small_name(f).read_bytes() for f in files]
        tiling.upscale_array(pair, np.zeros((64, 64, 3), np.uint8), scale)

        def work():
            return [len(codec.rehydrate_image(s, None, pair)) for s in smalls]
    elif kind == "pillow_compress":
        def work():
            sizes = []
            for f, d in zip(files, datas):
                im = Image.open(io.BytesIO(d)).convert("RGB")
                w, h = im.size
                small = im.resize((-(-w // scale), -(-h // scale)), Image.Resampling.BICUBIC)
                buf = io.BytesIO()
                small.save(buf, "PNG")  # Pillow's default (compress_level 6)
                produced.append((small_name(f), buf.getvalue()))
                sizes.append(buf.tell())
            return sizes
    elif kind == "pillow_rehydrate":
        smalls = [small_name(f).read_bytes() for f in files]

        def work():
            sizes = []
            for f, s in zip(files, smalls):
                im = Image.open(io.BytesIO(s)).convert("RGB")
                up = im.resize((f["width"], f["height"]), Image.Resampling.BICUBIC)
                buf = io.BytesIO()
                if f["format"] == "JPEG":  # the codec's encode_output settings for each format
                    up.save(buf, "JPEG", quality=JPEG_Q, subsampling=0)
                else:
                    up.save(buf, "PNG", compress_level=6)
                sizes.append(buf.tell())
            return sizes
    else:
        raise ValueError(kind)

    gc.collect()
    hwm_setup = _status_kib("VmHWM")
    hwm_reset = _reset_hwm()
    rss_start = _status_kib("VmRSS")
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out_sizes = work()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    peak = _status_kib("VmHWM")  # the high-water mark of the work (or of the whole process if not reset)
    for path, blob in produced:
        path.write_bytes(blob)
    mp = sum(f["width"] * f["height"] for f in files) / 1e6
    return {
        "kind": kind, "model": spec.get("model"), "scale": scale, "images": len(files), "megapixels": mp,
        "seconds": wall, "cpu_seconds": cpu, "mp_per_s": mp / wall, "mp_per_cpu_s": mp / cpu if cpu else None,
        "rss_start_mib": rss_start / 1024, "peak_rss_mib": peak / 1024, "peak_growth_mib": (peak - rss_start) / 1024,
        "hwm_reset_before_work": hwm_reset, "peak_rss_setup_mib": hwm_setup / 1024,
        "ru_maxrss_mib": ru1.ru_maxrss / 1024, "bytes_out": int(sum(out_sizes)),
    }


def run_isolated(spec: dict) -> dict:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, spec).result()


def part1(files: list[dict], models: list[str], work: Path) -> dict:
    from models.zoo import zoo_table

    scales = {m: int(zoo_table()[m]["config"]["scale"]) for m in models}
    rows = {}
    for m in models:
        s = scales[m]
        common = {"files": files, "scale": s, "model": m, "small_dir": str(work / f"small-{m}")}
        floor = {"files": files, "scale": s, "small_dir": str(work / f"small-pillow-x{s}")}
        entry = {}
        # order matters: codec_compress writes the small files that model_up and codec_rehydrate read
        for kind, spec in (("pillow_compress", floor), ("pillow_rehydrate", floor), ("model_down", common),
                           ("codec_compress", common), ("model_up", common), ("codec_rehydrate", common)):
            r = run_isolated({**spec, "kind": kind})
            entry[kind] = r
            print(f"  {m} {kind:17s} {r['mp_per_s']:8.3f} MP/s ({r['mp_per_cpu_s'] or 0:.3f} MP/cpu-s), "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB (+{r['peak_growth_mib']:.0f})", flush=True)
        rows[m] = entry
    return rows


# ------------------------------------------------------------------------------ part 2: S3 to S3
def _warm(_: int) -> int:
    time.sleep(0.05)
    return os.getpid()


def _rates(images: int, pixels: float, seconds: float, cores: int) -> dict:
    return {"images": images, "megapixels": pixels / 1e6, "seconds": seconds, "cores": cores,
            "images_per_s": images / seconds, "mp_per_s": pixels / 1e6 / seconds,
            "mp_per_s_per_core": pixels / 1e6 / seconds / cores}


def run_plain(fs, keys: list[str], scale: int, dest: str, processes: int) -> dict:
    jobs = [(f"bench/src/{k}", f"bench/{dest}/{k}.png", scale) for k in keys]
    if processes == 1:
        t0 = time.perf_counter()
        results = [_plain_one(*j, fs=fs) for j in jobs]
        wall = time.perf_counter() - t0
    else:
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_plain_init) as pool:
            list(pool.map(_warm, range(processes * 4)))  # every process started, its s3fs made
            t0 = time.perf_counter()
            results = list(pool.map(_plain_one, *zip(*jobs), chunksize=1))
            wall = time.perf_counter() - t0
    stages = {k: sum(r["t"][k] for r in results) for k in results[0]["t"]}
    return _rates(len(results), sum(r["pixels"] for r in results), wall, processes) | {
        "processes": processes, "stage_seconds": stages, "bytes_out": sum(r["bytes_out"] for r in results)}


def run_flow(model: str, workers: int, source: str, dest: str) -> dict:
    from flows.compress_archive import compress_archive
    from pipeline.jobs.params import CompressArchiveParams

    params = CompressArchiveParams(
        source=source, dest=dest, model_id=model, small_format="png", incremental=False,
        workers=workers, cpus_per_worker=1.0, batch_size=1,
    )
    t0 = time.perf_counter()
    res = compress_archive(params)
    wall = time.perf_counter() - t0
    pixels = res["megapixels_per_s"] * res["seconds"] * 1e6
    return _rates(res["rows"], pixels, wall, workers) | {
        "workers": workers, "cpus_per_worker": 1.0, "batch_size": 1, "by_status": res["by_status"],
        "bytes_in": res["bytes_in_ok"], "bytes_out": res["bytes_out_ok"], "flow_internal_seconds": res["seconds"],
        "dispatch": res["dispatch"],
    }


def profile_worker(model: str, warm_key: str) -> dict:
    """One CompressWorker in this process (1 torch thread, as an actor with 1 CPU), timed by stage."""
    import pipeline.jobs.workers as rw
    from pipeline.codec import image_io, small_file, tiling
    from pipeline.jobs.params import CompressArchiveParams
    from pipeline.storage.listing import list_objects

    params = CompressArchiveParams(source="s3://bench/src", dest="s3://bench/profile", model_id=model,
                                   small_format="png", incremental=False, workers=1, cpus_per_worker=1.0)
    worker = rw.CompressWorker(params.model_dump(), "profile")
    spent: dict[str, float] = {}
    cpu: dict[str, float] = {}  # the same stages in CPU time of this process (one thread works)

    def timed(stage, fn):
        def wrapper(*a, **k):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[stage] = spent.get(stage, 0.0) + time.perf_counter() - t0
                cpu[stage] = cpu.get(stage, 0.0) + time.process_time() - c0

        return wrapper

    saved = (image_io.decode_image, tiling.downscale_array, small_file.encode_small, rw.atomic_write)
    image_io.decode_image = timed("decode", saved[0])
    tiling.downscale_array = timed("model", saved[1])
    small_file.encode_small = timed("encode", saved[2])
    rw.atomic_write = timed("s3_put", saved[3])
    worker.src_fs.cat_file = timed("s3_get", worker.src_fs.cat_file)  # instance attributes, removed below
    worker.dst_fs.info = timed("s3_readback", worker.dst_fs.info)
    import pipeline.codec.image as codec_mod

    saved_compress = codec_mod.compress_image
    codec_mod.compress_image = timed("codec_total", saved_compress)
    try:
        warm = next(o for o in list_objects(worker.src_fs, "bench/warm"))
        worker.handle({"key": "warm/" + warm.key, "uri": warm.uri, "etag": warm.etag, "size": warm.size}, 1)
        spent.clear()
        cpu.clear()
        objs = list(list_objects(worker.src_fs, "bench/src"))
        pixels, t0, c0 = 0, time.perf_counter(), time.process_time()
        for o in objs:
            row = worker.handle(o.__dict__, 1)
            assert row.status == "ok", row
            pixels += row.width * row.height
        total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        image_io.decode_image, tiling.downscale_array, small_file.encode_small, rw.atomic_write = saved
        codec_mod.compress_image = saved_compress
        for fs, name in ((worker.src_fs, "cat_file"), (worker.dst_fs, "info")):
            fs.__dict__.pop(name, None)
    stages = {
        "s3_get": spent.get("s3_get", 0.0), "decode": spent["decode"], "model": spent["model"], "encode": spent["encode"],
        "codec_other": spent["codec_total"] - spent["decode"] - spent["model"] - spent["encode"],
        "s3_put": spent.get("s3_put", 0.0), "s3_readback": spent.get("s3_readback", 0.0),
    }
    stages["worker_other"] = total - sum(stages.values())
    cpu_stages = {k: cpu.get(k, 0.0) for k in ("s3_get", "decode", "model", "encode")}
    cpu_stages["codec_other"] = cpu["codec_total"] - cpu["decode"] - cpu["model"] - cpu["encode"]
    cpu_stages.update(s3_put=cpu.get("s3_put", 0.0), s3_readback=cpu.get("s3_readback", 0.0))
    cpu_stages["worker_other"] = total_cpu - sum(cpu_stages.values())
    return {"images": len(objs), "megapixels": pixels / 1e6, "seconds": total, "stage_seconds": stages,
            "cpu_seconds": total_cpu, "stage_cpu_seconds": cpu_stages, "mp_per_cpu_s": pixels / 1e6 / total_cpu,
            "share": {k: v / total for k, v in stages.items()}, "mp_per_s": pixels / 1e6 / total,
            "model_ms_per_mp": 1e3 * spent["model"] / (pixels / 1e6)}


def with_load(fn, *args):
    """fn(*args) with the 1-minute load average before and after (the machine is shared)."""
    before = os.getloadavg()[0]
    out = fn(*args)
    return out | {"loadavg_1min_before": before, "loadavg_1min_after": os.getloadavg()[0]}


def part2(files: list[dict], model: str, workers: list[int], tmp: Path) -> dict:
    import ray

    from infra.local_s3 import LocalS3
    from models.zoo import zoo_table

    scale = int(zoo_table()[model]["config"]["scale"])
    with LocalS3(tmp / "s3") as s3:
        os.environ.update(s3.env())  # before Ray and the plain pool start: they inherit it
        fs = s3.filesystem()
        fs.makedirs("bench", exist_ok=True)
        keys = []
        for f in files:
            fs.pipe_file(f"bench/src/{f['name']}", Path(f["path"]).read_bytes())
            keys.append(f["name"])
        fs.pipe_file(f"bench/warm/{files[0]['name']}", Path(files[0]["path"]).read_bytes())
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(tmp / "ray"))
        runs: dict = {}
        try:
            t0 = time.perf_counter()
            run_flow(model, 1, "s3://bench/warm", "s3://bench/out-warm")  # Prefect ephemeral API start, imports
            warm_s = time.perf_counter() - t0
            print(f"  warm-up flow run: {warm_s:.1f} s", flush=True)
            for n in workers:
                entry = {"plain_1proc": with_load(run_plain, fs, keys, scale, f"plain1-w{n}", 1)}
                if n > 1:
                    entry[f"plain_{n}proc"] = with_load(run_plain, fs, keys, scale, f"plain{n}-w{n}", n)
                entry["taid"] = with_load(run_flow, model, n, "s3://bench/src", f"s3://bench/taid-w{n}")
                t = entry["taid"]
                entry["ratio_vs_plain_1proc"] = t["images_per_s"] / entry["plain_1proc"]["images_per_s"]
                same = entry.get(f"plain_{n}proc", entry["plain_1proc"])
                entry["ratio_vs_plain_same_cores"] = t["images_per_s"] / same["images_per_s"]
                runs[str(n)] = entry
                print(f"  {n} worker(s): taid {t['images_per_s']:.3f} img/s {t['mp_per_s']:.3f} MP/s; plain 1 proc "
                      f"{entry['plain_1proc']['images_per_s']:.2f} img/s; ratio {entry['ratio_vs_plain_1proc']:.4f} "
                      f"(same cores {entry['ratio_vs_plain_same_cores']:.4f})", flush=True)
            profile = with_load(profile_worker, model, files[0]["name"])
            print(f"  profile: {profile['mp_per_s']:.3f} MP/s in one process", flush=True)
        finally:
            ray.shutdown()
    per_image = profile["seconds"] / profile["images"]
    for n, e in runs.items():
        # flow wall clock the per-image work does not explain (N actors splitting the images evenly)
        e["taid"]["overhead_seconds_est"] = e["taid"]["seconds"] - per_image * e["taid"]["images"] / int(n)
    return {"model": model, "scale": scale, "warmup_flow_seconds": warm_s, "runs": runs, "profile": profile}


# ------------------------------------------------------------------------------ report
LABELS = {"model_down": "model alone", "codec_compress": "codec end to end", "pillow_compress": "Pillow floor",
          "model_up": "model alone", "codec_rehydrate": "codec end to end", "pillow_rehydrate": "Pillow floor"}


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    ax = axes[0]
    groups, kinds = [], [("model_down", "model_up"), ("codec_compress", "codec_rehydrate"),
                         ("pillow_compress", "pillow_rehydrate")]
    for m, e in r["per_core"]["rows"].items():
        for d, idx in (("compress", 0), ("rehydrate", 1)):
            groups.append((f"{m}\n{d}", [e[k[idx]]["mp_per_s"] for k in kinds]))
    width = 0.27
    colors = ["tab:blue", "tab:cyan", "tab:gray"]
    for j, (label, color) in enumerate(zip(["model alone", "codec end to end", "Pillow floor"], colors)):
        xs = [i + (j - 1) * width for i in range(len(groups))]
        vals = [g[1][j] for g in groups]
        bars = ax.bar(xs, vals, width, color=color, label=label)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.2g}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("megapixels / s on one core (original MP)")
    ax.set_title("one core (1 thread, own process)")
    ax.legend(fontsize=8)

    ax = axes[1]
    p2 = r["s3"]
    labels, vals, cols = [], [], []
    for n, e in p2["runs"].items():
        for key, col in (("plain_1proc", "tab:gray"), (f"plain_{n}proc", "silver"), ("taid", "tab:blue")):
            if key not in e or (key == f"plain_{n}proc" and n == "1" and col == "silver"):
                continue
            name = {"plain_1proc": "plain\n1 proc", "taid": f"taid\n{n} worker{'s' if n != '1' else ''}"}.get(
                key, f"plain\n{n} procs")
            labels.append(name)
            vals.append(e[key]["images_per_s"])
            cols.append(col)
    bars = ax.bar(range(len(vals)), vals, color=cols)
    for b, v in zip(bars, vals):
        ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(vals)), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("images / s, S3 to S3 (wall clock)")
    ax.set_title(f"compress-archive {p2['model']} vs plain Pillow loop ({r['data']['images']} images)")

    ax = axes[2]
    prof = p2["profile"]["stage_seconds"]
    plain = p2["runs"][next(iter(p2["runs"]))]["plain_1proc"]["stage_seconds"]
    plain_map = {"s3_get": "get", "decode": "decode", "model": "resize", "encode": "encode", "s3_put": "put"}
    palette = dict(zip(prof, ["tab:purple", "tab:orange", "tab:blue", "tab:green", "tab:olive", "tab:red", "tab:pink",
                              "tab:brown"]))
    n_img = p2["profile"]["images"]
    bottom = [0.0, 0.0]
    for name in prof:
        v = [1e3 * plain.get(plain_map.get(name, ""), 0.0) / n_img, 1e3 * prof[name] / n_img]
        ax.bar(["plain loop\n(model = bicubic)", "CompressWorker\n(1 thread)"], v, bottom=bottom, color=palette[name],
               label=name)
        bottom = [b + x for b, x in zip(bottom, v)]
    ax.set_ylabel("ms per image, one process")
    ax.set_title("where the time goes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _load(x: dict) -> str:
    if "loadavg_1min_before" not in x:
        return ""
    return f"{x['loadavg_1min_before']:.1f} -> {x['loadavg_1min_after']:.1f}"


def markdown(r: dict) -> str:
    d = r["data"]
    md = [
        "# TAID throughput on CPU: per core, and compress-archive S3 to S3",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Run {r['started']}, commit {r['commit'][:10]}{' (tree had uncommitted changes)' if r['dirty'] else ''}, "
        f"{r['cpus']} CPUs shared with other work (load average {r['loadavg_start'][0]:.2f} at start, "
        f"{r['loadavg_end'][0]:.2f} at end), torch {r['torch']}, Pillow {r['pillow']}. Total {r['total_seconds']:.0f} s.",
        "",
        f"Data: {d['images']} synthetic photo-like images ({d['description']}), {d['megapixels']:.1f} MP in all, "
        f"{d['mp_min']:.2f}-{d['mp_max']:.2f} MP each; odd-numbered ones JPEG q90, the others PNG.",
        "",
        "## 1. Megapixels/s per CPU core (issue 8)",
        "",
        f"First {r['per_core']['images']} images ({r['per_core']['megapixels']:.2f} MP: "
        f"{r['per_core']['formats']}). Each cell: one spawned process, torch.set_num_threads(1), "
        "after a small warm-up; MP = megapixels of the original image, both directions. "
        "Compress = file bytes -> PNG small file; rehydrate = small file -> the source's format "
        "(PNG, or JPEG q95). Floor = Pillow decode + bicubic + encode (PNG compress_level 6 for the "
        "small image; the codec's small PNG uses compress_level 9). `per CPU-s` divides by the process's "
        "user+sys time instead of wall time (they agree when the core was not shared).",
        "",
        "| model | direction | path | MP/s (1 core, wall) | MP per CPU-s | wall ms/MP | x slower than floor (wall / CPU-s) | peak RSS MiB | RSS at start MiB | growth MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, e in r["per_core"]["rows"].items():
        for direction, ks in (("compress", ("model_down", "codec_compress", "pillow_compress")),
                              ("rehydrate", ("model_up", "codec_rehydrate", "pillow_rehydrate"))):
            floor, floor_cpu = e[ks[2]]["mp_per_s"], e[ks[2]]["mp_per_cpu_s"]
            for k in ks:
                x = e[k]
                md.append(f"| {m} | {direction} | {LABELS[k]} | {x['mp_per_s']:.3f} | {x['mp_per_cpu_s']:.3f} | "
                          f"{1e3 / x['mp_per_s']:.0f} | {floor / x['mp_per_s']:.1f} / {floor_cpu / x['mp_per_cpu_s']:.1f} | "
                          f"{x['peak_rss_mib']:.0f} | "
                          f"{x['rss_start_mib']:.0f} | {x['peak_growth_mib']:.0f} |")
    ratios = sorted(x["cpu_seconds"] / x["seconds"] for e in r["per_core"]["rows"].values() for x in e.values())
    md += [
        "",
        f"CPU-seconds / wall-seconds of the measuring processes: median {ratios[len(ratios) // 2]:.2f} "
        f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}); 1.00 would mean the core was never taken by other work. "
        "Below 1 the wall-clock MP/s understates what a dedicated core does and `MP per CPU-s` is the "
        "better per-core figure; the `x slower than floor` column gives both.",
        "",
        "Peak RSS = VmHWM of the measuring process over the timed work (reset with /proc/self/clear_refs "
        "just before it; torch, the model and the decoded inputs included); growth = peak minus the RSS "
        "when the timed loop started. The Pillow floor's process never imports torch. "
        "(`resource.getrusage(...).ru_maxrss` is not used: in a spawned child on Linux it still holds the "
        "parent's RSS from before exec; the JSON keeps it as `ru_maxrss_mib`.)",
        "",
    ]
    p2 = r["s3"]
    md += [
        f"## 2. compress-archive S3 to S3 vs a plain loop (issue 4): {p2['model']} x{p2['scale']}",
        "",
        "SeaweedFS S3 on 127.0.0.1, local Ray (`num_cpus=2`), Prefect ephemeral API. taid = the "
        "`compress_archive` flow with N actors of `cpus_per_worker=1` (1 torch thread each; N=1 uses one "
        "core, N=2 both), `batch_size=1`, `incremental=False`, PNG small files, wall clock from the call "
        "to its return (listing, actor start + model load, Parquet manifest, run stats included; "
        f"an untimed warm-up run first took {p2['warmup_flow_seconds']:.1f} s). plain = GET + Pillow "
        "decode + bicubic + PNG encode + PUT: a single process (the driver, 1 core), and for N=2 also "
        "N spawned processes (pool warm before the clock) to compare on the same number of cores. "
        "Each plain run ran just before its taid run.",
        "",
        "| workers | pipeline | cores | images/s | MP/s | MP/s per core | wall s | load avg before -> after | taid / plain 1 proc | taid / plain same cores |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for n, e in p2["runs"].items():
        for key in dict.fromkeys(("plain_1proc", f"plain_{n}proc", "taid")):  # n=1: plain_1proc once
            if key not in e:
                continue
            x = e[key]
            name = "taid flow" if key == "taid" else f"plain loop, {x['processes']} proc"
            r1 = f"{e['ratio_vs_plain_1proc']:.4f} (1/{1 / e['ratio_vs_plain_1proc']:.0f})" if key == "taid" else ""
            r2 = f"{e['ratio_vs_plain_same_cores']:.4f} (1/{1 / e['ratio_vs_plain_same_cores']:.0f})" if key == "taid" else ""
            md.append(f"| {n} | {name} | {x['cores']} | {x['images_per_s']:.3f} | {x['mp_per_s']:.3f} | "
                      f"{x['mp_per_s_per_core']:.3f} | {x['seconds']:.1f} | {_load(x)} | {r1} | {r2} |")
    runs = list(p2["runs"].values())
    if len(runs) > 1:
        md += ["", f"Scaling of the flow from {list(p2['runs'])[0]} to {list(p2['runs'])[-1]} workers: "
               f"x{runs[-1]['taid']['images_per_s'] / runs[0]['taid']['images_per_s']:.2f} images/s."]
    p = p2["profile"]
    plain = runs[0]["plain_1proc"]["stage_seconds"]
    plain_map = {"s3_get": "get", "decode": "decode", "model": "resize", "encode": "encode", "s3_put": "put"}
    md += [
        "",
        f"### Where the time goes (one CompressWorker in one process, 1 thread, {p['images']} images, "
        f"{p['mp_per_s']:.3f} MP/s wall" + (f", {p['mp_per_cpu_s']:.3f} MP per CPU-s" if "mp_per_cpu_s" in p else "")
        + ")",
        "",
        "| stage | CompressWorker ms/image (wall) | share | CPU ms/image | CPU share | plain loop ms/image (wall) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    cpu_st = p.get("stage_cpu_seconds", {})
    cpu_total = sum(cpu_st.values()) or 1.0
    n_plain = runs[0]["plain_1proc"]["images"]
    for k, v in p["stage_seconds"].items():
        pv = plain.get(plain_map.get(k, ""))
        plain_ms = "" if pv is None else f"{1e3 * pv / n_plain:.1f}"
        c = cpu_st.get(k)
        cpu_ms = "" if c is None else f"{1e3 * c / p['images']:.1f} | {100 * c / cpu_total:.1f}%"
        md.append(f"| {k} | {1e3 * v / p['images']:.1f} | {100 * p['share'][k]:.1f}% | {cpu_ms or ' | '} | {plain_ms} |")
    md += [
        "",
        "Stages: `s3_get` = `cat_file`; `decode` = `image_io.decode_image`; `model` = "
        "`tiling.downscale_array` (TAD, tiled); `encode` = `small_file.encode_small` (PNG level 9 + "
        "metadata); `codec_other` = the rest of `codec.compress_image` (two sha256, padding, records); "
        "`s3_put` = `atomic_write` (one PUT); `s3_readback` = the size check `info()` after the PUT; "
        "`worker_other` = row bookkeeping. The plain loop's `model` row is Pillow's bicubic resize. "
        f"TAD downscale: {p['model_ms_per_mp']:.0f} ms per original MP on one thread (wall)"
        + (f", {1e3 * p['stage_cpu_seconds']['model'] / p['megapixels']:.0f} ms per MP in CPU time."
           if "stage_cpu_seconds" in p else "."),
        "",
        "Flow wall clock not explained by the per-image work above (Prefect, two listing passes, actor "
        "start + model load, dispatch, manifest, run stats; assuming the actors split the images evenly): "
        + ", ".join(f"{e['taid']['overhead_seconds_est']:.1f} s with {n} worker(s)" for n, e in p2["runs"].items())
        + ".",
    ]
    if r.get("notes"):
        md += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(md) + "\n"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20, help="synthetic images for the S3 part")
    ap.add_argument("--codec-images", type=int, default=4, help="the first N of them for the per-core part")
    ap.add_argument("--models", nargs="+", default=["taid-x2", "taid-x4"])
    ap.add_argument("--flow-model", default="taid-x2")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-s3", action="store_true", help="part 1 only (no outputs written)")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md and .png from the .json")
    args = ap.parse_args(argv)
    if args.render_only:
        report = json.loads((RESULTS / "throughput.json").read_text())
        plot(report, RESULTS / "throughput.png")
        (RESULTS / "throughput.md").write_text(markdown(report))
        return report

    import PIL
    import torch

    started = time.time()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="taid-throughput-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ["PREFECT_HOME"] = str(tmp / "prefect")  # a private ephemeral API database
        files = make_data(tmp / "data", args.images, args.seed)
        print(f"data: {len(files)} images, {sum(f['width'] * f['height'] for f in files) / 1e6:.1f} MP "
              f"({time.time() - started:.0f} s)", flush=True)
        sub = files[: args.codec_images]
        print("part 1: one core per measurement", flush=True)
        rows = part1(sub, args.models, tmp / "work")
        if args.skip_s3:
            return {"rows": rows}
        print("part 2: S3 to S3", flush=True)
        s3 = part2(files, args.flow_model, args.workers, tmp)
    mps = [f["width"] * f["height"] / 1e6 for f in files]
    report = {
        "benchmark": "throughput",
        "command": "python benchmarks/throughput.py" + ("" if not (argv or sys.argv[1:]) else " " + " ".join(
            argv if argv is not None else sys.argv[1:])),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "total_seconds": time.time() - started,
        "commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "python": platform.python_version(), "torch": torch.__version__, "pillow": PIL.__version__,
        "data": {"images": len(files), "megapixels": sum(mps), "mp_min": min(mps), "mp_max": max(mps),
                 "seed": args.seed, "sizes": [[f["width"], f["height"]] for f in files],
                 "description": "smooth gradients + soft-edged shapes + texture noise + grain, seed "
                                f"{args.seed}, `synth_image` in this script",
                 "bytes": sum(f["bytes"] for f in files)},
        "per_core": {"images": len(sub), "megapixels": sum(f["width"] * f["height"] for f in sub) / 1e6,
                     "formats": ", ".join(f"{f['name']} {f['width']}x{f['height']}" for f in sub), "rows": rows},
        "s3": s3,
        "notes": [],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, RESULTS / "throughput.png")
    (RESULTS / "throughput.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
