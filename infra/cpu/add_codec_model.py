"""Export a codec-aware training run (a pair trained with a lossy channel) into the model zoo
(weights file + models/zoo.json entry).

    python infra/cpu/add_codec_model.py --run runs/codec/x2-webp --id taid-x2-webp --quality 75 \
        --hardware "2-core CPU VM" --command "taid train ..."

Writes models/weights/<id>-<sha8>.pt (older files of the same id are removed: the zoo keeps one
version per id; the registry is where versions accumulate) and the entry's file, sha256,
architecture, recipe and "channel" block (the small format and default quality compress-archive
uses for this model). Metrics are added by `python benchmarks/quality.py --update-zoo`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from models.channel import channel_settings  # noqa: E402
from models.zoo import CHANNEL_KEY, ZOO_FILE, channel_block, zoo_entry, zoo_table  # noqa: E402


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
    loop = channel_settings(cfg)  # a run from before issue 22 stored codec / codec_quality / codec_gradient
    if not loop.get("channel"):
        raise SystemExit(f"{args.run} was trained without a lossy channel in the loop")
    block = channel_block(loop["channel"], loop["channel_quality"], loop["channel_gradient"], args.quality)
    lo, hi = block["quality_band"]
    table = zoo_table()
    entry = zoo_entry(
        args.run, args.id, state, hardware=args.hardware, command=args.command, previous=table.get(args.id),
        lead={"init_from": cfg["init_from"]},
        recipe={"guidance_weight": cfg["guidance_weight"],
                "channel": f"{block['small_format']} q{lo}-{hi} (one quality per image, uniform), "
                           f"gradient: {block['gradient']}"},
    )
    training, metrics = entry.pop("training"), entry.pop("metrics")  # the block goes before them, as before
    table[args.id] = {**entry, CHANNEL_KEY: block, "training": training, "metrics": metrics}
    ZOO_FILE.write_text(json.dumps(table, indent=2) + "\n")
    print(f"{args.id}: {entry['file']} sha256 {entry['sha256']} ({entry['parameters']} parameters, step {state['step']})")


if __name__ == "__main__":
    main()
