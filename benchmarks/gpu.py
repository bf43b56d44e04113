"""The GPU machine check (issue 17): compress-archive and rehydrate S3 to S3 on one GPU, in minutes.

    python benchmarks/gpu.py [--device auto|cuda|cpu] [--images 300] [--min-mp 1] [--max-mp 3]
                             [--fidelity standard] [--workers N] [--sample 6] [--out benchmarks/results/gpu.json]

1. A SeaweedFS S3 on loopback (infra/local_s3.py) and a local Ray with every core (and the GPU).
2. N synthetic photo-like images (benchmarks/throughput.synth_image: gradients, soft shapes,
   texture, grain), 1-3 MP each, JPEG q90, made in parallel and uploaded to s3://bench/src/.
3. compress-archive S3 -> S3 through the job layer (pipeline.jobs, `entry_points`): staged by
   default on a GPU (CPU workers = cores - 2, one model actor on the GPU batching tiles across
   images; `--stages single` for actors sharing the GPU, gpus_per_worker = 1/workers), after one
   untimed warm-up run on one image (imports, kernels).
4. rehydrate S3 -> S3 of that run, through the same entry point.
5. GPU utilisation sampled all along (nvidia-smi -lms 200, else torch.cuda.utilization()): the
   busy fraction during each phase (mean utilisation / 100, and the share of samples above 0).
6. Where the time goes: one in-process worker on the same device over a sample of the images,
   timers around decode, the model (tiling, synchronised), small-file encode, layer encode/apply.
7. bf16 vs fp32 Y-PSNR on Set5 round trips on the device (benchmarks/inference_precision.py).
8. Cross-device: a sample of the GPU-compressed archive rehydrated in process on the GPU and on
   the CPU (fp32): Y-PSNR of each against the source, the drop, max |difference|.

`--device cpu` runs everything on the CPU (gpus_per_worker 0): what the tests run, on tiny images.
Rates per GPU divide by the GPUs used (1; on the CPU the rate itself, with gpus = 0).
Writes the JSON to --out and Markdown beside it (same name, .md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline.local_env import set_local_env_defaults  # noqa: E402

set_local_env_defaults(PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

BUCKET = "bench"
SET5 = ROOT / "tests" / "data" / "Set5"


def entry_points() -> SimpleNamespace:
    """The archive jobs (pipeline.jobs: no Prefect in the measured path), imported in one place."""
    from pipeline.config import CompressArchiveParams
    from pipeline.jobs import run_compress, run_rehydrate
    from pipeline.rehydrate_batch import RehydrateParams

    return SimpleNamespace(compress=lambda **kw: run_compress(CompressArchiveParams(**kw)),
                           rehydrate=lambda **kw: run_rehydrate(RehydrateParams(**kw)))


# ------------------------------------------------------------------ data
def _one_image(args: tuple[int, int, int]) -> tuple[str, bytes, int]:
    from throughput import synth_image

    seed, w, h = args
    buf = io.BytesIO()
    synth_image(seed, w, h).save(buf, "JPEG", quality=90)
    return f"img{seed:05d}.jpg", buf.getvalue(), w * h


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


def make_and_upload(fs, prefix: str, sizes: list[tuple[int, int, int]], procs: int) -> dict:
    """Generate the images in `procs` processes and upload them as they come; returns counts."""
    t0 = time.perf_counter()
    pixels = nbytes = 0
    with ProcessPoolExecutor(procs) as pool, ThreadPoolExecutor(8) as up:
        puts = []
        for name, data, px in pool.map(_one_image, sizes, chunksize=2):
            puts.append(up.submit(fs.pipe_file, f"{BUCKET}/{prefix}/{name}", data))
            pixels, nbytes = pixels + px, nbytes + len(data)
        for p in puts:
            p.result()
    return {"images": len(sizes), "megapixels": pixels / 1e6, "bytes": nbytes, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------ GPU utilisation
class UtilSampler:
    """Samples GPU utilisation (percent) every 200 ms in the background: nvidia-smi, else
    torch.cuda.utilization (needs pynvml); `busy(t0, t1)` summarises a phase."""

    def __init__(self, enabled: bool):
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        self.source = None
        self._stop = threading.Event()
        if enabled:
            self._start()

    def _start(self) -> None:
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.source = "nvidia-smi"
            target = self._read_smi
        except OSError:
            self.source = "torch.cuda.utilization"
            target = self._poll_torch
        threading.Thread(target=target, daemon=True).start()

    def _read_smi(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.monotonic(), float(line.split(",")[0])))
            except ValueError:
                continue

    def _poll_torch(self) -> None:
        import torch

        while not self._stop.wait(0.2):
            try:
                self.samples.append((time.monotonic(), float(torch.cuda.utilization())))
            except Exception:  # noqa: BLE001 - no NVML: no samples, reported as None
                self.source = None
                return

    def busy(self, t0: float, t1: float) -> dict:
        vals = [v for t, v in self.samples if t0 <= t <= t1]
        if not vals:
            return {"gpu_busy_fraction": None, "gpu_nonidle_fraction": None, "samples": 0}
        return {"gpu_busy_fraction": float(np.mean(vals)) / 100, "gpu_nonidle_fraction": float(np.mean(np.array(vals) > 0)),
                "samples": len(vals)}

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


# ------------------------------------------------------------------ phases
def timed_phase(sampler: UtilSampler, fn) -> tuple[dict, dict]:
    t0 = time.monotonic()
    result = fn()
    t1 = time.monotonic()
    return result, {"wall_s": t1 - t0, **sampler.busy(t0, t1)}


def compress_phase(ep, sampler, source: str, dest: str, args, gpus_per_worker: float) -> dict:
    kw = dict(source=source, dest=dest, incremental=False, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
              gpus_per_worker=gpus_per_worker, batch_size=args.batch_size, fidelity=args.fidelity, stages=args.stages)
    result, phase = timed_phase(sampler, lambda: ep.compress(**kw))
    mp = result["megapixels_per_s"] * result["seconds"]
    return {"run_id": result["run_id"], "by_status": result["by_status"], "megapixels": mp,
            "mp_per_s": mp / phase["wall_s"], "flow_seconds": result["seconds"], "bytes_in": result["bytes_in_ok"],
            "bytes_out": result["bytes_out_ok"], "psnr_y_mean": result.get("psnr_y_mean"), "dispatch": result["dispatch"],
            **phase}


def rehydrate_phase(ep, sampler, archive: str, to: str, run_id: str, megapixels: float, args, gpus_per_worker: float) -> dict:
    kw = dict(archive=archive, to=to, run_id=run_id, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
              gpus_per_worker=gpus_per_worker, batch_size=args.batch_size, stages=args.stages)
    result, phase = timed_phase(sampler, lambda: ep.rehydrate(**kw))
    return {"by_status": result["by_status"], "megapixels": megapixels, "mp_per_s": megapixels / phase["wall_s"],
            "flow_seconds": result["seconds"], "dispatch": result["dispatch"], **phase}


# ------------------------------------------------------------------ in-process checks
def stage_profile(fs, keys: list[str], device: str, fidelity_name: str) -> dict:
    """One worker in this process on `device`: seconds per stage over `keys` (after one warm-up)."""
    import torch

    from models.zoo import load_pair
    from pipeline import enhancement, fidelity, image_io, small_file, tiling

    spec = fidelity.resolve_fidelity(fidelity_name)
    pairs = {m: load_pair(m, device) for m in spec.models}
    spent: dict[str, float] = {}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    patched = [(image_io, "decode_image", "decode"), (tiling, "downscale_array", "model"),
               (tiling, "upscale_array", "model"), (small_file, "encode_small", "small_encode"),
               (enhancement, "encode_layer", "layer_encode"), (enhancement, "apply_layer", "layer_apply")]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patched]

    def timer(fn, stage):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sync()
                spent[stage] = spent.get(stage, 0.0) + time.perf_counter() - t0
        return wrapper

    blobs = [fs.cat_file(f"{BUCKET}/src/{k}") for k in keys]
    fidelity.compress_to_target(blobs[0], pairs, spec)  # warm-up
    for (mod, name, stage), (_, _, fn) in zip(patched, saved):
        setattr(mod, name, timer(fn, stage))
    try:
        t0 = time.perf_counter()
        for data in blobs:
            fidelity.compress_to_target(data, pairs, spec)
        total = time.perf_counter() - t0
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    spent["other"] = max(0.0, total - sum(spent.values()))
    return {"images": len(keys), "seconds": total, "stage_seconds": spent, "share": {k: v / total for k, v in spent.items()}}


def precision_delta(device: str) -> dict:
    """Mean Y-PSNR of bf16 minus fp32 round trips (TAD + TAU) on Set5, per model, on `device`."""
    from inference_precision import BF16, FP32, round_trip

    from models.data import list_images, mod_crop, read_rgb
    from models.metrics import psnr_y
    from models.zoo import load_pair

    out = {}
    for model in ("taid-x2", "taid-x4"):
        pair = load_pair(model, device)
        deltas, seconds = [], {"fp32": 0.0, "bf16": 0.0}
        for uri in list_images([str(SET5)]):
            img = mod_crop(read_rgb(uri), pair.scale)
            p = {}
            for label, opts in (("fp32", FP32), ("bf16", BF16)):
                t0 = time.perf_counter()
                p[label] = psnr_y(round_trip(pair, img, opts, opts)[1], img, pair.scale)
                seconds[label] += time.perf_counter() - t0
            deltas.append(p["bf16"] - p["fp32"])
        out[model] = {"bf16_psnr_delta_db": float(np.mean(deltas)), "seconds": seconds}
    return out


def cross_device(fs, archive: str, run_id: str, device: str, sample: int) -> dict:
    """Rehydrate `sample` rows of the compress run on `device` (its default precision) and on the
    CPU at fp32, both in process; compare (benchmarks/inference_precision.difference)."""
    from inference_precision import FP32, difference, restore

    from models.zoo import load_pair
    from pipeline import codec, image_io
    from pipeline.inference import InferenceOptions
    from pipeline.manifest import read_manifest

    table = read_manifest(fs, f"{BUCKET}/{archive}").to_pylist()
    rows = [r for r in table if r["run_id"] == run_id and r["status"] == "ok"][:sample]
    pairs: dict = {}
    per_row = []
    for r in rows:
        for dev in (device, "cpu"):
            if (r["model_id"], dev) not in pairs:
                pairs[(r["model_id"], dev)] = load_pair(r["model_id"], dev)
        small = fs.cat_file(r["output_uri"])
        layer = fs.cat_file(r["enhancement_uri"]) if r.get("enhancement_uri") else None
        dec = image_io.decode_image(fs.cat_file(r["source_uri"]), codec.DEFAULT_MAX_PIXELS, "skip", "skip")
        same = restore(small, layer, pairs[(r["model_id"], device)], InferenceOptions())
        other = restore(small, layer, pairs[(r["model_id"], "cpu")], FP32)
        per_row.append({"key": r["source_key"], "layer": r.get("enhancement_format"),
                        **difference(other, same, codec.reference_rgb(dec), int(r["scale"]))})
    if not per_row:
        return {"images": 0}
    return {"images": len(per_row), "max_psnr_drop_db": max(p["psnr_drop_db"] for p in per_row),
            "max_abs_diff": max(p["max_abs_diff"] for p in per_row),
            "max_differing_fraction": max(p["differing_fraction"] for p in per_row), "rows": per_row}


# ------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--min-mp", type=float, default=1.0)
    ap.add_argument("--max-mp", type=float, default=3.0)
    ap.add_argument("--fidelity", default="standard", help="fidelity preset of the compress run")
    ap.add_argument("--workers", type=int, default=None, help="actors (default: cores - 2, at least 1)")
    ap.add_argument("--stages", choices=["auto", "single", "staged"], default="auto",
                    help="auto: staged (CPU workers + a model actor per GPU) when there is a GPU")
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--sample", type=int, default=6, help="images for the stage profile and the cross-device check")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    args = ap.parse_args(argv)
    args.workers = args.workers or max(1, (os.cpu_count() or 2) - 2)
    return args


def pick_device(wanted: str) -> str:
    import torch

    if wanted == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    return "cuda" if wanted in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def device_name(device: str) -> str:
    import torch

    from inference_precision import _cpu

    return torch.cuda.get_device_name(0) if device == "cuda" else _cpu()


def run(args: argparse.Namespace, tmp: Path) -> dict:
    import ray
    import torch

    from infra.local_s3 import LocalS3
    from pipeline.inference import InferenceOptions

    device = pick_device(args.device)
    gpus = 1 if device == "cuda" else 0
    gpw = 1.0 / args.workers if gpus else 0.0
    report: dict = {"benchmark": "gpu", "device": device_name(device), "device_kind": device, "gpus": gpus,
                    "cpus": os.cpu_count(), "torch": torch.__version__, "workers": args.workers,
                    "gpus_per_worker": gpw, "fidelity": args.fidelity,
                    "precision": InferenceOptions().precision_on(device)}
    os.environ["PREFECT_HOME"] = str(tmp / "prefect")  # a private ephemeral API database
    with LocalS3(tmp / "s3") as s3:
        os.environ.update(s3.env())  # before Ray starts: actors inherit it
        fs = s3.filesystem()
        fs.makedirs(BUCKET, exist_ok=True)
        sizes = image_sizes(args.images, args.min_mp, args.max_mp)
        report["data"] = make_and_upload(fs, "src", sizes, max(1, (os.cpu_count() or 2) - 1))
        make_and_upload(fs, "warm", sizes[:1], 1)
        ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=gpus, include_dashboard=False,
                 log_to_driver=False, _temp_dir=str(tmp / "ray"))
        sampler = UtilSampler(enabled=gpus > 0)
        try:
            ep = entry_points()
            t0 = time.perf_counter()
            compress_phase(ep, sampler, f"s3://{BUCKET}/warm", f"s3://{BUCKET}/warm-out", args, gpw)
            report["warmup_s"] = time.perf_counter() - t0
            comp = compress_phase(ep, sampler, f"s3://{BUCKET}/src", f"s3://{BUCKET}/archive", args, gpw)
            reh = rehydrate_phase(ep, sampler, f"s3://{BUCKET}/archive", f"s3://{BUCKET}/restored", comp["run_id"],
                                  comp["megapixels"], args, gpw)
        finally:
            sampler.stop()
            ray.shutdown()
        keys = [f"img{s[0]:05d}.jpg" for s in sizes[: args.sample]]
        report.update({
            "compress": comp, "rehydrate": reh, "utilisation_source": sampler.source,
            "stages": stage_profile(fs, keys, device, args.fidelity),
            "precision_check": precision_delta(device),
            "cross_device": cross_device(fs, "archive", comp["run_id"], device, args.sample),
        })
    per = max(gpus, 1)
    report.update({
        "compress_mp_per_s_per_gpu": comp["mp_per_s"] / per, "rehydrate_mp_per_s_per_gpu": reh["mp_per_s"] / per,
        "gpu_busy_fraction": comp["gpu_busy_fraction"],
        "bf16_psnr_delta_db": min(v["bf16_psnr_delta_db"] for v in report["precision_check"].values()),
    })
    return report


def markdown(r: dict) -> str:
    c, h, x = r["compress"], r["rehydrate"], r["cross_device"]

    def frac(v):
        return "n/a" if v is None else f"{v:.0%}"

    lines = [f"# GPU check: {r['device']} ({r['device_kind']}, {r['gpus']} GPU, {r['cpus']} cores)", "",
             f"Produced by `benchmarks/gpu.py`: {r['data']['images']} synthetic photos, {r['data']['megapixels']:.1f} MP, "
             f"JPEG q90; fidelity `{r['fidelity']}`; {r['workers']} actors x {r['gpus_per_worker']:.3f} GPU; "
             f"precision {r['precision']}; torch {r['torch']}.", "",
             "| phase | MP/s per GPU | wall s | GPU busy (mean util) | GPU non-idle samples | statuses |", "|---|---|---|---|---|---|",
             f"| compress S3->S3 | {r['compress_mp_per_s_per_gpu']:.2f} | {c['wall_s']:.1f} | {frac(c['gpu_busy_fraction'])} | "
             f"{frac(c['gpu_nonidle_fraction'])} | {c['by_status']} |",
             f"| rehydrate S3->S3 | {r['rehydrate_mp_per_s_per_gpu']:.2f} | {h['wall_s']:.1f} | {frac(h['gpu_busy_fraction'])} | "
             f"{frac(h['gpu_nonidle_fraction'])} | {h['by_status']} |", "",
             f"Stage shares (one in-process worker, {r['stages']['images']} images): " +
             ", ".join(f"{k} {v:.0%}" for k, v in sorted(r["stages"]["share"].items(), key=lambda kv: -kv[1])) + ".", "",
             f"bf16 - fp32 Y-PSNR on Set5 round trips (worst model): {r['bf16_psnr_delta_db']:+.4f} dB.", ""]
    if x.get("images"):
        lines.append(f"Cross-device ({x['images']} archived images, rehydrated on {r['device_kind']} and on the CPU at fp32): "
                     f"max Y-PSNR drop {x['max_psnr_drop_db']:.4f} dB, max |difference| {x['max_abs_diff']} levels, "
                     f"at most {x['max_differing_fraction']:.2%} of pixels differ.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from pipeline.manifest import json_safe

    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="taid-gpu-") as tmp:
        report = run(args, Path(tmp))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(report), indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
