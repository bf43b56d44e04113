"""Export a codec-aware training run into the model zoo (weights file + models/zoo.json entry).

    python infra/cpu/add_codec_model.py --run runs/codec/x2-webp --id taid-x2-webp --quality 75 \
        --hardware "2-core CPU VM" --command "taid train ..."

Writes models/weights/<id>-<sha8>.pt (older files of the same id are removed: the zoo keeps one
version per id; the registry is where versions accumulate) and the entry's file, sha256,
architecture, recipe and "codec" block (the small format and default quality compress-archive
uses for this model). Metrics are added by `python benchmarks/quality.py --update-zoo`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from models.codec_channel import SMALL_FORMAT  # noqa: E402
from models.zoo import ARCH_KEYS, WEIGHTS_DIR, ZOO_FILE, export_weights, zoo_table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="training folder holding last.pt")
    p.add_argument("--id", required=True, help="zoo id, e.g. taid-x2-webp")
    p.add_argument("--quality", type=int, required=True, help="default quality of the small file")
    p.add_argument("--hardware", default="2-core CPU VM (no GPU)")
    p.add_argument("--command", required=True, help="the exact training command(s), for reproduction")
    args = p.parse_args()

    state = torch.load(Path(args.run) / "last.pt", map_location="cpu", weights_only=True)
    cfg = state["config"]
    if not cfg.get("codec"):
        raise SystemExit(f"{args.run} was trained without a codec in the loop")
    lo, hi = cfg["codec_quality"]
    old = [f for f in WEIGHTS_DIR.glob(f"{args.id}-*.pt")]
    path, sha = export_weights(Path(args.run) / "last.pt", args.id, WEIGHTS_DIR)
    for f in old:
        if f != path:
            f.unlink()
    params = sum(v.numel() for v in state["state_dict"].values())
    table = zoo_table()
    table[args.id] = {
        "file": path.name,
        "sha256": sha,
        "config": {k: cfg[k] for k in ARCH_KEYS},
        "parameters": params,
        "codec": {"small_format": SMALL_FORMAT[cfg["codec"]], "quality": args.quality, "quality_band": [lo, hi],
                  "gradient": cfg["codec_gradient"]},
        "training": {
            "data": "T91 + BSD200 (../shared/data/train), every 20th file held out for validation",
            "init_from": cfg["init_from"],
            "steps": state["step"],
            "batch": cfg["batch"],
            "patch": cfg["patch"],
            "lr": cfg["lr"],
            "schedule": f"Adam(0.9, 0.99), {cfg['warmup_steps']} warm-up steps, cosine to {cfg['min_lr_ratio']} x lr, "
                        f"grad clip {cfg['grad_clip']}",
            "guidance_weight": cfg["guidance_weight"],
            "codec_in_loop": f"{cfg['codec']} q{lo}-{hi} (one quality per image, uniform), "
                             f"gradient: {cfg['codec_gradient']}",
            "seed": cfg["seed"],
            "hardware": args.hardware,
            "command": args.command,
        },
        "metrics": table.get(args.id, {}).get("metrics", {}),
    }
    ZOO_FILE.write_text(json.dumps(table, indent=2) + "\n")
    print(f"{args.id}: {path} sha256 {sha} ({params} parameters, step {state['step']})")


if __name__ == "__main__":
    main()
