"""Which image codec should hold the enhancement layer? Measured on held-out training photos.

    python benchmarks/residual_coders.py [--data DIR] [--every N] [--out DIR]

Per image (JPEG q90 of a held-out BSD200 photo, every `every`th file in name order: the split the
presets were tuned on, never an evaluation set): the standard preset's base (taid-x4-webp small file
at q50, then TAU) predicts the image; the residual (source - prediction, offset 128) is coded with
each candidate over a quality sweep; bytes (small file + layer) at 36 and 40 dB Y-PSNR are
interpolated and divided by those of full-image AVIF (Pillow, the layer's settings: 4:2:0, speed 6,
delta-q off) at the same Y-PSNR.
Candidates: AVIF 4:2:0 (the shipped layer), AVIF 4:4:4, WebP (lossy, always 4:2:0), JPEG XL
(pillow-jxl-plugin, effort 7) when installed; and, for reference, JPEG XL of the full image.

Writes <out>/residual_coders.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fidelity import bytes_at, decode  # noqa: E402
from models.zoo import load_pair  # noqa: E402
from pipeline.codec import image as codec, image_io  # noqa: E402
from pipeline.codec.layer import avif_settings  # noqa: E402
from pipeline.codec.fidelity import PRESETS, _Base, fidelity_psnr  # noqa: E402

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "BSD200"


def _jxl() -> bool:
    try:
        import pillow_jxl  # noqa: F401
    except ImportError:
        return False
    return True


def encode(arr: np.ndarray, coder: str, q: int) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if coder == "avif420":  # the layer's own settings
        im.save(buf, "AVIF", **avif_settings(round(q * 63 / 100)))
    elif coder == "avif444":
        im.save(buf, "AVIF", **{**avif_settings(round(q * 63 / 100)), "subsampling": "4:4:4"})
    elif coder == "webp":
        im.save(buf, "WEBP", quality=q, method=4)
    else:
        im.save(buf, "JXL", quality=q, effort=7)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(TRAIN))
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    coders = ["avif420", "avif444", "webp"] + (["jxl"] if _jxl() else [])
    pair = load_pair("taid-x4-webp")
    base = PRESETS["standard"].bases[0]
    files = sorted(Path(args.data).glob("*.png"))[::args.every]
    per_image = []
    for path in files:
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, "JPEG", quality=90)
        dec = image_io.decode_image(buf.getvalue(), 10**9)
        src = codec.reference_rgb(dec)
        b = _Base(dec, pair, base, codec.CodecOptions(), codec.CompressRecord(**codec._known(dec.info)))
        small_bytes, pred = b.prediction(base.layer_quality)
        resid = np.clip(src.astype(np.int16) - pred + 128, 0, 255).astype(np.uint8)
        row = {"image": path.name, "small_bytes": small_bytes}
        qs = list(range(20, 100, 5))
        ref = [(len(d), fidelity_psnr(decode(d), src, 4)) for d in (encode(src, "avif420", q) for q in qs)]
        for coder in coders:
            pts = []
            for q in qs:
                d = encode(resid, coder, q)
                out = np.clip(pred.astype(np.int16) + decode(d).astype(np.int16) - 128, 0, 255).astype(np.uint8)
                pts.append((small_bytes + len(d) + 5, fidelity_psnr(out, src, 4)))
            row[coder] = {t: (bytes_at(pts, t) / bytes_at(ref, t)) if bytes_at(pts, t) and bytes_at(ref, t) else None
                          for t in (36, 40)}
        if "jxl" in coders:
            full = [(len(d), fidelity_psnr(decode(d), src, 4)) for d in (encode(src, "jxl", q) for q in qs)]
            row["jxl_full_image"] = {t: (bytes_at(full, t) / bytes_at(ref, t)) if bytes_at(full, t) and bytes_at(ref, t)
                                     else None for t in (36, 40)}
        per_image.append(row)
        print(row, flush=True)
    names = coders + (["jxl_full_image"] if "jxl" in coders else [])
    summary = {c: {t: float(np.mean([r[c][t] for r in per_image if r[c][t]])) for t in (36, 40)} for c in names}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "residual_coders.json").write_text(json.dumps({"images": len(files), "summary": summary,
                                                         "per_image": per_image}, indent=1))
    lines = ["# Enhancement-layer coders (benchmarks/residual_coders.py)", "",
             f"{len(files)} held-out BSD200 photos as JPEG q90; base = taid-x4-webp q50 + TAU; bytes (small file + "
             "layer) over full-image AVIF 4:2:0 at the same Y-PSNR (lower = better; 1.0 = AVIF).", "",
             "| layer coder | at 36 dB | at 40 dB |", "|---|---:|---:|"]
    lines += [f"| {c} | {v[36]:.3f} | {v[40]:.3f} |" for c, v in summary.items()]
    (out / "residual_coders.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
