"""Which coder and which libjxl effort the band layers of score targets use (pipeline/codec/rate.py).

    python benchmarks/band_coders.py [--photos ../shared/data/photos] [--out benchmarks/results]

On centre crops of real phone photos (JPEG and HEIC, read where they are; never copied), one thread:
1. coder choice at `standard`: the whole codec (`pipeline.codec.encode`) with rate.CODERS = ("jxl",)
   against ("avif", "jxl") (the per-image choice on the sample): bytes stored and CPU seconds;
2. libjxl effort: per 1024 x 1024 crop, JPEG XL at efforts 3, 4, 5, 7 over qualities 70-94, the bytes
   at which the worst 256-px region reaches 80.5 (log-rate interpolation) relative to effort 7, and
   the CPU seconds of one encode.
Writes <out>/band_coders.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.zoo import load_pair  # noqa: E402
from pipeline.codec import Request, encode, rate  # noqa: E402
from pipeline.codec import layer as enhancement  # noqa: E402
from pipeline.codec.measure import Ssimulacra2  # noqa: E402
from benchmarks.perceptual import centre_box  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "photos"
CHOICE_PHOTOS = ("lunch.jpg", "cannon.jpg", "saboteur.jpg", "nature-3e12e195-2a45-4b2a-90d6-72dc0bb30bfe.HEIC",
                 "paddleboat.jpg")
EFFORT_PHOTOS = ("lunch.jpg", "cannon.jpg", "nature-3e12e195-2a45-4b2a-90d6-72dc0bb30bfe.HEIC", "paddleboat.jpg",
                 "insect-gps-outside-australia.jpg")
EFFORTS = (3, 4, 5, 7)
QUALITIES = (70, 76, 82, 86, 90, 94)
AIM = 80.5  # `standard`'s 80 plus the bands' aim (rate.BAND_AIM)


def centre(path: Path, w: int, h: int) -> np.ndarray:
    """The upright photo's centre crop, w x h along its long side (benchmarks.perceptual.centre_box)."""
    im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    return np.asarray(im.crop(centre_box(im.width, im.height, (w, h))))


def coder_choice(photos: Path) -> list[dict]:
    req = Request.of("standard")
    pairs = {m: load_pair(m) for m in req.models}
    sources = {}
    for name in CHOICE_PHOTOS:
        buf = io.BytesIO()
        Image.fromarray(centre(photos / name, 2000, 1400)).save(buf, "JPEG", quality=95)  # a 2.8 MP camera JPEG
        sources[name] = buf.getvalue()
    rows, saved = [], rate.CODERS
    try:
        for coders in (("jxl",), ("avif", "jxl")):
            rate.CODERS = coders
            for name, data in sources.items():
                t = time.process_time()
                small, layer, rec = encode(data, req, pairs)
                rows.append({"coders": "+".join(coders), "image": name, "layer": rec.enhancement_format,
                             "bytes": len(small) + len(layer or b""), "score_worst": rec.score_worst,
                             "encodes": rec.encodes, "cpu_s": time.process_time() - t})
                print(rows[-1], flush=True)
    finally:
        rate.CODERS = saved
    return rows


def jxl_efforts(photos: Path) -> list[dict]:
    m, rows = Ssimulacra2(), []
    for name in EFFORT_PHOTOS:
        img = centre(photos / name, 1024, 1024)
        ref = m.prepare(img)
        for effort in EFFORTS:
            sizes, worst, cpu = [], [], 0.0
            for q in QUALITIES:
                t = time.process_time()
                data = enhancement.encode_jxl(img, q, effort)
                cpu += time.process_time() - t
                sizes.append(len(data))
                worst.append(m.score(ref, enhancement.decode_band(data, "jxl", False)).worst)
            ordered = worst == sorted(worst) and worst[0] <= AIM <= worst[-1]
            at = float(np.exp(np.interp(AIM, worst, np.log(sizes)))) if ordered else None
            rows.append({"image": name, "effort": effort, "bytes_at_aim": at, "cpu_s_per_encode": cpu / len(QUALITIES),
                         "points": list(zip(QUALITIES, sizes, worst))})
        base = next(r["bytes_at_aim"] for r in rows if r["image"] == name and r["effort"] == 7)
        for r in rows:
            if r["image"] == name:
                r["over_effort7"] = r["bytes_at_aim"] / base if r["bytes_at_aim"] and base else None
        print(name, {r["effort"]: r["over_effort7"] for r in rows if r["image"] == name}, flush=True)
    return rows


def markdown(choice: list[dict], efforts: list[dict]) -> str:
    lines = ["# Band coders of score targets (benchmarks/band_coders.py)", "",
             f"{time.strftime('%Y-%m-%d')}, one thread, shared 2-core VM. Real phone photos, centre crops.", "",
             "## JPEG XL alone against a per-image choice with eye-tuned AVIF (`standard`, 2000 x 1400 crops as JPEG q95)",
             "", "| coders | bytes (all images) | CPU s | layers chosen |", "|---|---:|---:|---|"]
    for coders in sorted({r["coders"] for r in choice}):
        rs = [r for r in choice if r["coders"] == coders]
        layers = ", ".join(sorted({r["layer"] for r in rs}))
        lines.append(f"| {coders} | {sum(r['bytes'] for r in rs)} | {sum(r['cpu_s'] for r in rs):.1f} | {layers} |")
    lines += ["", f"## libjxl effort: bytes at worst region {AIM} / effort 7, and CPU s per encode (1024 x 1024 crops)", "",
              "| image | " + " | ".join(f"effort {e}" for e in EFFORTS) + " |", "|---|" + "---:|" * len(EFFORTS)]
    for name in dict.fromkeys(r["image"] for r in efforts):
        cells = []
        for e in EFFORTS:
            r = next(x for x in efforts if x["image"] == name and x["effort"] == e)
            ratio = "-" if r["over_effort7"] is None else f"{r['over_effort7']:.3f}"
            cells.append(f"{ratio} ({r['cpu_s_per_encode']:.3f} s)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=PHOTOS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if not args.photos.is_dir():
        sys.exit(f"no photos under {args.photos}: this benchmark needs real photos (see its docstring)")
    import pillow_heif

    pillow_heif.register_heif_opener()
    torch.set_num_threads(1)
    choice, efforts = coder_choice(args.photos), jxl_efforts(args.photos)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "band_coders.json").write_text(json.dumps({"coder_choice": choice, "jxl_efforts": efforts}, indent=2))
    (args.out / "band_coders.md").write_text(markdown(choice, efforts))
    print(markdown(choice, efforts))


if __name__ == "__main__":
    main()
