"""Export the colour-aware grayscale runs into the model zoo: taid-gray and its colorization
baseline taid-gray-luma (weights files + models/zoo.json entries).

    python infra/cpu/add_gray_model.py --gray runs/gray/gray --baseline runs/gray/luma \
        --command "bash infra/cpu/train_gray.sh"

Writes models/weights/<id>-<sha8>.pt (older files of the same id are removed, as
add_codec_model.py does) and each entry's file, sha256, architecture (with its "task"), recipe and
the pairing: taid-gray's "baseline" names taid-gray-luma (what `taid eval` compares with). Metrics
are added by `python benchmarks/gray.py --update-zoo`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from models.zoo import ZOO_FILE, zoo_entry, zoo_table  # noqa: E402

GRAY_ID, BASELINE_ID = "taid-gray", "taid-gray-luma"


def entry(run: Path, model_id: str, hardware: str, command: str, table: dict, loss: str | None = None) -> dict:
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    cfg = state["config"]
    loss = loss or "L1 reconstruction (RGB)" + (f" + {cfg['guidance_weight']} x L1 guidance of the 8-bit grey image "
                                                "to BT.601 luma" if cfg["task"] == "gray" else ", TAU only")
    out = zoo_entry(run, model_id, state, hardware=hardware, command=command, previous=table.get(model_id),
                    lead={"task": cfg["task"]}, recipe={"loss": loss})
    print(f"{model_id}: {out['file']} sha256 {out['sha256']} ({out['parameters']} parameters, "
          f"step {state['step']} of {cfg['steps']})")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gray", required=True, help="training folder of the grey pair (--task gray), holding last.pt")
    p.add_argument("--baseline", required=True, help="training folder of the baseline (--task luma)")
    p.add_argument("--hardware", default="2-core CPU VM shared with other jobs (no GPU), one thread per run")
    p.add_argument("--command", required=True, help="the exact training command(s), for reproduction")
    p.add_argument("--gray-loss", help="the grey pair's loss as trained, where lambda changed along the way")
    args = p.parse_args()
    table = zoo_table()
    gray = entry(Path(args.gray), GRAY_ID, args.hardware, args.command, table, args.gray_loss)
    base = entry(Path(args.baseline), BASELINE_ID, args.hardware, args.command, table)
    if gray["config"].get("task") != "gray" or base["config"].get("task") != "luma":
        raise SystemExit("--gray must be a --task gray run and --baseline a --task luma run")
    table[GRAY_ID] = {**gray, "baseline": BASELINE_ID}
    table[BASELINE_ID] = {**base, "baseline_of": GRAY_ID}
    ZOO_FILE.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
