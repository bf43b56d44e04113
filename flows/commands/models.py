"""`taid train` and `taid eval`: the networks (models/), no Ray, no Prefect, no storage stack."""

from __future__ import annotations

import argparse
import json

from flows.commands.base import command, values

CHANNELS = ["jpeg", "webp-lossy", "webp"]  # models.channel.CHANNEL_FORMATS; "webp": webp-lossy's name before 0.3


def _train(args: argparse.Namespace) -> int:
    from models.training import TrainConfig, train

    last = train(TrainConfig(**values(args)), args.out, device=args.device, resume=not args.fresh, until=args.until)
    print(f"training state: {last}")
    if args.export:
        from models.zoo import export_weights

        path, sha = export_weights(last, args.export, args.out)
        print(f"weights: {path} sha256 {sha}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from models.evaluate import evaluate, format_table
    from pipeline.codec import Ssimulacra2

    ssimulacra2 = Ssimulacra2()  # the archive's perceptual measure, whole image, beside the papers' PSNR / SSIM
    report = evaluate(**values(args), measures={"ssimulacra2": lambda out, ref: ssimulacra2.score(ref, out).whole})
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def add(sub) -> None:
    t = command(sub, "train", _train, "models.training:TrainConfig", ("out", "device", "fresh", "until", "export"),
                help="train (or resume) a TAD/TAU pair on image folders or fsspec URIs")
    t.add_argument("--data", nargs="+", required=True, help="image folders, files or URIs (s3://...)")
    t.add_argument("--out", required=True, help="folder for last.pt and history.jsonl")
    t.add_argument("--task", choices=["scale", "gray", "luma"])
    for name, kind in [("scale", int), ("channels", int), ("down-blocks", int), ("up-blocks", int),
                       ("guidance-weight", float), ("holdout-every", int), ("patch", int), ("batch", int),
                       ("steps", int), ("lr", float), ("warmup-steps", int), ("seed", int), ("val-every", int),
                       ("ckpt-every", int)]:
        t.add_argument(f"--{name}", dest=name.replace("-", "_"), type=kind)
    t.add_argument("--minutes", type=float, help="wall-clock budget; the schedule is shortened to fit")
    t.add_argument("--init-from", dest="init_from", help="start from these weights (zoo name or .pt)")
    # the lossy channel between the two networks (models/channel.py); --codec*: the flags' names before 0.3
    t.add_argument("--channel", "--codec", dest="channel", choices=CHANNELS,
                   help="train with this lossy channel (a real JPEG / lossy WebP round trip) between the two networks")
    t.add_argument("--channel-quality", "--codec-quality", dest="channel_quality", type=int, nargs=2,
                   metavar=("QMIN", "QMAX"), help="quality band of the channel")
    t.add_argument("--channel-gradient", "--codec-gradient", dest="channel_gradient", choices=["ste", "proxy"],
                   help="gradient around the channel: straight-through or a differentiable JPEG")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    t.add_argument("--fresh", action="store_true", help="ignore an existing last.pt instead of resuming")
    t.add_argument("--until", type=int, help="stop (checkpointed) at this step; rerun to resume")
    t.add_argument("--export", metavar="MODEL_ID", help="after training, write shippable weights for MODEL_ID")

    e = command(sub, "eval", _eval, "models.evaluate:evaluate", ("json",),
                help="PSNR/SSIM of a model against bicubic and Lanczos baselines")
    e.add_argument("--model", required=True, help="zoo name (taid-x2) or a weights file")
    e.add_argument("--data", required=True, help="folder or URI of original images")
    e.add_argument("--json", help="write the report here")
    e.add_argument("--limit", type=int, default=None, help="only the first N images")
    e.add_argument("--device", default="cpu")
    e.add_argument("--channel", "--codec", dest="channel", choices=CHANNELS,
                   help="code the small image through this lossy channel (default: a codec-aware model's own)")
    e.add_argument("--quality", type=int, help="quality of that channel (default: the model's default, else 90)")
    e.add_argument("--lossless", action="store_true", help="evaluate a codec-aware model on its lossless small image")
