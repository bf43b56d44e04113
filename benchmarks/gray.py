"""Colour-aware grayscale (taid-gray, issue 24): restored colour and grey-image fidelity on every
evaluation set, against the colorization baseline (taid-gray-luma: the same TAU on plain luma).

    python benchmarks/gray.py [--data ../shared/data/eval] [--update-zoo] [--examples]

Writes benchmarks/results/gray.{json,md}; --update-zoo stores the means in models/zoo.json;
--examples writes an example pair through the real codec (`compress_image` / `rehydrate_image`):
gray_example_small.png (the small file itself: an ordinary mode-L PNG), gray_example_restored.png,
and gray_example_baseline.png (the baseline's colorization of plain luma), from Set5's butterfly.
Conventions: models.evaluate.evaluate_gray (no crop, no shave, 8-bit outputs).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.evaluate import evaluate  # noqa: E402
from models.zoo import ZOO_FILE, load_pair, zoo_table  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval"
MODEL = "taid-gray"
EXAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "Set5" / "butterfly.png"
KEYS = ("psnr_rgb", "psnr_y", "ssim")


def write_reports(rows: list[dict], data: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gray.json").write_text(json.dumps({"data": data, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Colour-aware grayscale (taid-gray): restored colour vs the colorization baseline",
        "",
        "RGB / Y PSNR (dB) and SSIM (Y) of the 8-bit restored colour image, no crop or shave; grey vs luma:",
        "PSNR of the 8-bit grey small image against Pillow's BT.601 grayscale (convert('L')). Baseline:",
        "taid-gray-luma, the same upscaler trained on plain luma with the same steps and data (automatic",
        "colorization). Grey only: the luma image itself as RGB, over the images that have colour (Set14's",
        "`man` is grey in RGB). `python benchmarks/gray.py`.",
        "",
        "| set | images | PSNR-RGB | PSNR-Y | SSIM | grey vs luma | baseline PSNR-RGB | baseline PSNR-Y | gain RGB | grey only PSNR-RGB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = r["baseline"]
        lines.append(f"| {r['set']} | {r['n_images']} | {r['psnr_rgb']:.2f} | {r['psnr_y']:.2f} | {r['ssim']:.4f} | "
                     f"{r['gray_vs_luma_psnr']:.2f} | {b['psnr_rgb']:.2f} | {b['psnr_y']:.2f} | "
                     f"{r['psnr_rgb'] - b['psnr_rgb']:+.2f} | {r['gray_only']['psnr_rgb']:.2f} |")
    (RESULTS / "gray.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_examples() -> None:
    from PIL import Image

    from pipeline.codec.options import CodecOptions
    from pipeline.codec.image import compress_image, decode_output, rehydrate_image

    data = EXAMPLE.read_bytes()
    for model, names in ((MODEL, ("gray_example_small.png", "gray_example_restored.png")),
                         (zoo_table()[MODEL]["baseline"], (None, "gray_example_baseline.png"))):
        pair = load_pair(model)
        small, _, rec = compress_image(data, pair, CodecOptions(model_id=model, scale=1))
        if names[0]:
            (RESULTS / names[0]).write_bytes(small)
        restored = decode_output(rehydrate_image(small, rec, pair))
        buf = io.BytesIO()
        restored.save(buf, "PNG", optimize=True)
        (RESULTS / names[1]).write_bytes(buf.getvalue())
        print(f"{model}: small file {Image.open(io.BytesIO(small)).mode} {len(small)} B -> {names[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA if DEFAULT_DATA.exists() else "tests/data"))
    parser.add_argument("--update-zoo", action="store_true")
    parser.add_argument("--examples", action="store_true")
    args = parser.parse_args()

    rows = []
    for folder in sorted(p for p in Path(args.data).iterdir() if p.is_dir()):
        r = evaluate(MODEL, str(folder))
        row = {"set": folder.name, "n_images": r["n_images"], "model_sha256": r["model_sha256"],
               **{k: round(r[k], 4) for k in (*KEYS, "gray_vs_luma_psnr")},
               "min_gray_vs_luma_psnr": round(min(i["gray_vs_luma_psnr"] for i in r["images"]), 4),
               "min_psnr_rgb": round(min(i["psnr_rgb"] for i in r["images"]), 4),
               "baseline": {"model": r["baseline"]["model"], **{k: round(r["baseline"][k], 4) for k in KEYS}},
               "gray_only": {k: round(v, 4) for k, v in r["baselines"]["gray_only"].items()}}  # images with colour
        rows.append(row)
        print(json.dumps(row))
    write_reports(rows, args.data)
    if args.examples:
        write_examples()
    if args.update_zoo:
        table = zoo_table()
        base = table[MODEL]["baseline"]
        for r in rows:
            table[MODEL]["metrics"][r["set"]] = {k: r[k] for k in (*KEYS, "gray_vs_luma_psnr", "min_gray_vs_luma_psnr")} | {
                "baseline_psnr_rgb": r["baseline"]["psnr_rgb"]}
            table[base]["metrics"][r["set"]] = dict(r["baseline"]) | {"model": None}
            table[base]["metrics"][r["set"]].pop("model")
        ZOO_FILE.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
