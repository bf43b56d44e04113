"""Reconstruction quality of the shipped pairs on every evaluation set, next to bicubic and
Lanczos down+up and the published TAID numbers.

    python benchmarks/quality.py [--data ../shared/data/eval] [--update-zoo]

Writes benchmarks/results/quality.{json,md}; with --update-zoo also stores the means in
models/zoo.json. Each set is a sub-folder of --data (Set5, Set14, B100, ...). LPIPS is not
reported: no installable package ships its weights, and nothing may download them at run time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.evaluate import evaluate
from models.zoo import ZOO_FILE, colour_only, zoo_table

RESULTS = Path(__file__).parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval"
# Kim et al., ECCV 2018, Table 1 (Y-PSNR of the TAD/TAU reconstruction).
PUBLISHED_TAID = {
    2: {"Set5": 38.46, "Set14": 35.52, "B100": 36.68, "Urban100": 35.03},
    4: {"Set5": 31.81, "Set14": 28.63, "B100": 28.51, "Urban100": 26.63},
}


def write_reports(results: list[dict], data: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps({"data": data, "rows": results}, indent=2))
    lines = [
        "# Reconstruction quality (Y-PSNR dB / SSIM on Y, shave = scale; thumbnail = small image vs Pillow bicubic)",
        "",
        "Codec-aware models are measured through their own lossy small format (the channel they were trained",
        "through) at its default quality (column 'small file'; the thumbnail is then the decoded small image,",
        "bpp = coded small image per original pixel), and their bicubic / Lanczos baselines code the Pillow",
        "downscale in the same format and quality.",
        "",
        "| model | small file | set | images | PSNR-Y | PSNR-RGB | SSIM | thumb PSNR-Y (mean / min) | bicubic PSNR-Y | Lanczos PSNR-Y | gain vs bicubic | TAID paper |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        paper = f"{r['published_taid_psnr_y']:.2f}" if r["published_taid_psnr_y"] else "-"
        c = r.get("channel")
        small = f"{c['format']} q{c['quality']}, {r['bpp']:.3f} bpp" if c else "lossless"
        lines.append(
            f"| {r['model']} | {small} | {r['set']} | {r['n_images']} | {r['psnr_y']:.2f} | {r['psnr_rgb']:.2f} | {r['ssim']:.4f} | "
            f"{r['thumb_psnr_y']:.2f} / {r['min_thumb_psnr_y']:.2f} | {r['bicubic']['psnr_y']:.2f} | "
            f"{r['lanczos']['psnr_y']:.2f} | {r['psnr_y'] - r['bicubic']['psnr_y']:+.2f} | {paper} |"
        )
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA if DEFAULT_DATA.exists() else "tests/data"))
    parser.add_argument("--models", nargs="+", default=None, help="zoo ids (default: every shipped pair)")
    parser.add_argument("--update-zoo", action="store_true")
    parser.add_argument("--keep-others", action="store_true", help="keep the rows of models not evaluated this time")
    args = parser.parse_args()

    sets = sorted(p for p in Path(args.data).iterdir() if p.is_dir())
    args.models = args.models or [m for m in zoo_table() if not colour_only(m)]  # taid-gray: benchmarks/gray.py
    results = []
    for model in args.models:
        for folder in sets:
            r = evaluate(model, str(folder))
            row = {
                "model": model,
                "scale": r["scale"],
                "set": folder.name,
                "n_images": r["n_images"],
                "channel": r["channel"],
                **{k: round(v, 4) for k, v in r["mean"].items()},
                "min_thumb_psnr_y": round(min(i["thumb_psnr_y"] for i in r["images"]), 4),
                "bicubic": {k: round(v, 4) for k, v in r["baselines"]["bicubic"].items()},
                "lanczos": {k: round(v, 4) for k, v in r["baselines"]["lanczos"].items()},
                "published_taid_psnr_y": None if r["channel"] else PUBLISHED_TAID.get(r["scale"], {}).get(folder.name),
            }
            results.append(row)
            print(json.dumps(row))

    if args.keep_others and (RESULTS / "quality.json").exists():
        done = {r["model"] for r in results}
        results = [r for r in json.loads((RESULTS / "quality.json").read_text())["rows"] if r["model"] not in done] + results
    write_reports(results, args.data)

    if args.update_zoo:
        table = zoo_table()
        for r in results:
            if r["model"] in table:
                table[r["model"]]["metrics"][r["set"]] = {
                    k: r[k] for k in ("psnr_y", "psnr_rgb", "ssim", "thumb_psnr_y", "min_thumb_psnr_y", "bpp") if k in r
                } | {"bicubic_psnr_y": r["bicubic"]["psnr_y"]}
        ZOO_FILE.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
