"""Does fine-tuning help? Fine-tune taid-x2 on synthetic documents (sharp text, UI boxes: a domain
the photo-trained pair never saw) with Ray Train, then compare base and tuned pairs on the
domain's held-out split and on general photos.

    python benchmarks/finetune_domain.py [--images 60] [--steps 300] [--workers 2]

Runs on a local Ray with local folders (the S3 path is exercised by the tests); writes
benchmarks/results/finetune_domain.{json,md}. The tuned weights are registered in a temporary
registry and not kept.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import ray

from models.synthetic import write_documents
from pipeline.jobs.finetune import FinetuneConfig, run_finetune

RESULTS = Path(__file__).parent / "results"
GENERAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "Set14"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    ray.init(address="local", num_cpus=args.workers, include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        write_documents(docs, args.images, args.size, seed=1000)
        cfg = FinetuneConfig(
            data=str(docs), base="taid-x2", name="taid-x2-docs", out=str(Path(tmp) / "registry"),
            workers=args.workers, steps=args.steps, batch=args.batch, patch=96, lr=2e-4,
            warmup_steps=20, ckpt_every=max(1, args.steps // 3), eval_data=str(GENERAL),
        )
        t0 = time.perf_counter()
        report = run_finetune(cfg)
        report["wall_s"] = time.perf_counter() - t0
    report.pop("entry", None)
    report["setup"] = vars(args) | {"domain": "synthetic documents (models/synthetic.py)", "general": "Set14"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "finetune_domain.json").write_text(json.dumps(report, indent=2))
    held, gen = report["heldout"], report["general"]
    md = [
        f"# Fine-tuning taid-x2 on synthetic documents ({args.steps} steps, batch {args.batch}, "
        f"{args.workers} CPU workers, {report['wall_s']:.0f} s)",
        "",
        "| eval split | metric | base taid-x2 | tuned | change |",
        "|---|---|---:|---:|---:|",
    ]
    for split, r in (("documents held-out", held), ("Set14 (photos)", gen)):
        for key in ("psnr_y", "ssim", "thumb_psnr_y"):
            md.append(f"| {split} | {key} | {r['base'][key]:.4f} | {r['tuned'][key]:.4f} | {r['tuned'][key] - r['base'][key]:+.4f} |")
    (RESULTS / "finetune_domain.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
