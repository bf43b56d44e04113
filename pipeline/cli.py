"""The `taid` command line. Each subcommand imports what it needs, so `taid train` runs on a
machine that has only torch (a GPU box) and `taid eval` never starts Ray or Prefect."""

from __future__ import annotations

import argparse
import json
import sys


def _train(args: argparse.Namespace) -> int:
    from models.training import TrainConfig, train

    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields and v is not None}
    cfg = TrainConfig(**fields)
    last = train(cfg, args.out, device=args.device, resume=not args.fresh, until=args.until)
    print(f"training state: {last}")
    if args.export:
        from models.zoo import export_weights

        path, sha = export_weights(last, args.export, args.out)
        print(f"weights: {path} sha256 {sha}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from models.evaluate import evaluate, format_table

    report = evaluate(args.model, args.data, device=args.device, limit=args.limit)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taid", description="Task-Aware Image Downscaling archive tools")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a TAD/TAU pair on image folders or fsspec URIs")
    t.add_argument("--data", nargs="+", required=True, help="image folders, files or URIs (s3://...)")
    t.add_argument("--out", required=True, help="folder for last.pt and history.jsonl")
    t.add_argument("--scale", type=int)
    t.add_argument("--channels", type=int)
    t.add_argument("--down-blocks", dest="down_blocks", type=int)
    t.add_argument("--up-blocks", dest="up_blocks", type=int)
    t.add_argument("--guidance-weight", dest="guidance_weight", type=float)
    t.add_argument("--holdout-every", dest="holdout_every", type=int)
    t.add_argument("--patch", type=int)
    t.add_argument("--batch", type=int)
    t.add_argument("--steps", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--warmup-steps", dest="warmup_steps", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--val-every", dest="val_every", type=int)
    t.add_argument("--ckpt-every", dest="ckpt_every", type=int)
    t.add_argument("--minutes", type=float, help="wall-clock budget; the schedule is shortened to fit")
    t.add_argument("--init-from", dest="init_from", help="start from these weights (zoo name or .pt)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    t.add_argument("--fresh", action="store_true", help="ignore an existing last.pt instead of resuming")
    t.add_argument("--until", type=int, help="stop (checkpointed) at this step; rerun to resume")
    t.add_argument("--export", metavar="MODEL_ID", help="after training, write shippable weights for MODEL_ID")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="PSNR/SSIM of a model against bicubic and Lanczos baselines")
    e.add_argument("--model", required=True, help="zoo name (taid-x2) or a weights file")
    e.add_argument("--data", required=True, help="folder or URI of original images")
    e.add_argument("--json", help="write the report here")
    e.add_argument("--limit", type=int, default=None, help="only the first N images")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
