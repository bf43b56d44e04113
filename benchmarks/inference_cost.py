"""CPU inference cost of the shipped pairs: ms per megapixel (of the original image) for the
downscaler and the upscaler on one thread, next to Pillow's bicubic resize as the floor.

    python benchmarks/inference_cost.py [--threads 1] [--size 1024] [--repeats 3]

Writes benchmarks/results/inference_cost.{json,md}. Timings are the median of `repeats` runs
after one warm-up, all measured in the same process, so the ratios are side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.zoo import load_pair

RESULTS = Path(__file__).parent / "results"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN picks kernels on first call)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024, help="side of the square test image (multiple of 4)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    megapixels = args.size * args.size / 1e6
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).contiguous(memory_format=torch.channels_last)
    rows = []
    for model in ("taid-x2", "taid-x4"):
        pair = load_pair(model).to(memory_format=torch.channels_last)
        s = pair.scale
        with torch.inference_mode():
            small = pair.downscale(x)["small"]
            down = median_seconds(lambda: pair.downscale(x), args.repeats)
            up = median_seconds(lambda: pair.upscale(small), args.repeats)
        pil = Image.fromarray(img)
        pil_small = pil.resize((args.size // s, args.size // s), Image.Resampling.BICUBIC)
        pil_down = median_seconds(lambda: pil.resize((args.size // s, args.size // s), Image.Resampling.BICUBIC), args.repeats)
        pil_up = median_seconds(lambda: pil_small.resize((args.size, args.size), Image.Resampling.BICUBIC), args.repeats)
        row = {
            "model": model,
            "parameters": sum(p.numel() for p in pair.parameters()),
            "down_ms_per_mp": 1000 * down / megapixels,
            "up_ms_per_mp": 1000 * up / megapixels,
            "pillow_bicubic_down_ms_per_mp": 1000 * pil_down / megapixels,
            "pillow_bicubic_up_ms_per_mp": 1000 * pil_up / megapixels,
        }
        row["seconds_12mp_down"] = row["down_ms_per_mp"] * 12 / 1000
        row["seconds_12mp_up"] = row["up_ms_per_mp"] * 12 / 1000
        rows.append(row)
        print(json.dumps(row))

    report = {
        "benchmark": "inference_cost",
        "threads": args.threads,
        "image": f"{args.size}x{args.size} random RGB",
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inference_cost.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# CPU inference cost ({args.threads} thread(s), {report['image']}, median of {args.repeats})",
        "",
        "| model | params | downscale ms/MP | upscale ms/MP | 12 MP down (s) | 12 MP up (s) | Pillow bicubic down / up ms/MP |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['down_ms_per_mp']:.0f} | {r['up_ms_per_mp']:.0f} | "
            f"{r['seconds_12mp_down']:.1f} | {r['seconds_12mp_up']:.1f} | "
            f"{r['pillow_bicubic_down_ms_per_mp']:.1f} / {r['pillow_bicubic_up_ms_per_mp']:.1f} |"
        )
    lines.append("")
    lines.append("ms/MP is per megapixel of the *original* (large) image, for both directions.")
    (RESULTS / "inference_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
