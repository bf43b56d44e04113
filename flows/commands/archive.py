"""`taid compress-archive`, `compact`, `verify` and `rehydrate`: archives, through the job layer
(pipeline.jobs) or, where a Prefect API is configured, its Prefect flows (flows/)."""

from __future__ import annotations

import argparse
import json
import sys

from flows.commands.base import command, params
from flows.commands.files import fidelity_args
from pipeline.codec import formats  # constants only: no torch


def report(result: dict, ok_statuses: tuple[str, ...] = ("ok",), failed_prefix: str = "") -> int:
    """Print a run's stats as JSON; exit 1 when rows failed (failed_* for compress, anything not ok
    for rehydrate)."""
    print(json.dumps(result, indent=2, default=str))
    statuses = result.get("by_status", {})
    bad = [k for k in statuses if (k.startswith(failed_prefix) if failed_prefix else k not in ok_statuses)]
    return 1 if bad else 0


def use_prefect(args: argparse.Namespace) -> bool:
    """Run through the Prefect flow? --prefect / --no-prefect, else TAID_USE_PREFECT (auto: when a
    Prefect API URL is configured: environment, profile or an enclosing test harness)."""
    if args.prefect is not None:
        return args.prefect
    from pipeline.settings import get_settings

    mode = get_settings().use_prefect
    if mode != "auto":
        return mode == "always"
    if not prefect_may_be_configured():
        return False
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def prefect_may_be_configured() -> bool:
    """Could a Prefect API URL be set? Importing Prefect to ask costs 1-2 s of a command's start, so
    ask it only where one could come from: Prefect already imported (an enclosing harness), the
    environment, or a file Prefect reads its settings from (profiles, prefect.toml, .env,
    pyproject.toml's [tool.prefect])."""
    import os
    from pathlib import Path

    if "prefect" in sys.modules or os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    for path, needle in ((profiles, "PREFECT_API_URL"), (Path("prefect.toml"), "api"), (Path(".env"), "PREFECT_"),
                         (Path("pyproject.toml"), "tool.prefect")):
        try:
            if needle in path.read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


def inference(args: argparse.Namespace) -> dict:
    """--precision as the RayParams field it sets."""
    return {"inference": {"precision": args.precision}} if args.precision else {}


def _compress_archive(args: argparse.Namespace) -> int:
    p = params(args, show_progress=True, **inference(args))
    if use_prefect(args):
        from flows.compress_archive import compress_archive

        p.check_storage()  # missing keys / endpoint / bucket: one line from main(), before the flow starts
        return report(compress_archive(p), failed_prefix="failed")
    from pipeline.jobs import TqdmProgress, run_compress
    from pipeline.runtime import process_started

    return report(dict(run_compress(p, TqdmProgress("compress-archive"), started=process_started())),
                  failed_prefix="failed")


def _compact(args: argparse.Namespace) -> int:
    from pipeline.manifest import compact

    storage = params(args)
    storage.check(args.dest)
    result = compact(*storage.fs(args.dest), repair=args.repair)
    result.pop("runs", None)
    result["files"] = len(result.get("files", []))
    print(json.dumps(result, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pipeline.archive import report_lines, report_ok, verify_archive

    result = verify_archive(args.archive, params(args).fsspec_options())
    print("\n".join(report_lines(result)))
    return 0 if report_ok(result) else 1


def _rehydrate_key(args: argparse.Namespace) -> int:
    from pipeline.archive import RehydrateRefused, rehydrate_to_file
    from pipeline.storage import StorageParams

    storage = StorageParams(endpoint_url=args.endpoint_url)
    storage.check(args.archive)
    try:
        out, size = rehydrate_to_file(args.key, args.archive, args.output, args.restored_format, args.quality,
                                      args.registry, storage.fsspec_options(), args.preview)
    except RehydrateRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(f"{args.key} -> {out} ({size} B)")
    return 0


def _rehydrate(args: argparse.Namespace) -> int:
    if args.key:
        return _rehydrate_key(args)
    if not (args.prefix is not None or args.glob or args.run_id) or not args.to:
        print("give a KEY, or --prefix/--glob/--run-id with --to", file=sys.stderr)
        return 2
    p = params(args, **inference(args))
    if use_prefect(args):
        from flows.rehydrate import rehydrate

        p.check_storage()  # as compress-archive: one line from main(), before the flow starts
        return report(rehydrate(p))
    from pipeline.jobs import TqdmProgress, run_rehydrate

    return report(dict(run_rehydrate(p, TqdmProgress("rehydrate"))))


class _Resource(argparse.Action):
    """NAME=AMOUNT (repeatable) into a dict, as the RayParams field takes it."""

    def __call__(self, parser, namespace, text, option_string=None):
        name, _, amount = text.partition("=")
        try:
            value = float(amount or 1)
        except ValueError:
            parser.error(f"{option_string}: {text!r}: expected NAME=AMOUNT")
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest) or {}), name: value})


def job_args(p: argparse.ArgumentParser) -> None:
    """How a job runs: Ray (pipeline.runtime.options.RayParams: defaults from its fields), storage, Prefect."""
    p.add_argument("--ray-address", dest="ray_address", help="Ray cluster (default: TAID_RAY_ADDRESS, else a local Ray)")
    p.add_argument("--workers", type=int, help="actors (the CPU workers when staged)")
    p.add_argument("--cpus-per-worker", dest="cpus_per_worker", type=float, help="Ray CPUs per actor")
    p.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=float,
                   help="single stage: Ray GPUs per actor (default: a GPU share when the cluster has GPUs; 0 = CPU)")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--batch-bytes", dest="batch_bytes", type=int,
                   help="a batch also ends at this many source bytes (default 1 MiB; 0 = by count only)")
    p.add_argument("--largest-first", dest="largest_first", type=int, metavar="N",
                   help="hand out each window of N listed objects largest first (default 1000; 0 = listing order)")
    p.add_argument("--actor-resource", dest="actor_resources", action=_Resource, metavar="NAME=N",
                   help="custom Ray resource each model actor asks for (repeatable), e.g. taid_model=1")
    p.add_argument("--worker-resource", dest="worker_resources", action=_Resource, metavar="NAME=N",
                   help="staged: custom Ray resource each CPU worker asks for (repeatable)")
    p.add_argument("--stages", choices=["auto", "single", "staged"],
                   help="staged: CPU workers + model actors batching tiles (default auto: staged when the cluster has GPUs)")
    p.add_argument("--model-actors", dest="model_actors", type=int, help="staged: model actors (default: one per GPU)")
    p.add_argument("--tile-batch", dest="tile_batch", type=int, help="staged: tiles per forward call")
    p.add_argument("--in-process", dest="in_process", choices=["auto", "always", "never"],
                   help="run the workers in this process, without Ray (default auto: a small plan with no cluster "
                   "address; docs/costs.md#small-runs)")
    p.add_argument("--start-on-driver", dest="start_on_driver", action=argparse.BooleanOptionalAction, default=None,
                   help="work on the first images in this process while the actors start (default: on a "
                   "cluster named by --ray-address / TAID_RAY_ADDRESS, off while starting a local Ray)")
    p.add_argument("--precision", choices=["auto", "fp32", "tf32", "bf16", "fp16"],
                   help="network precision (default: TAID_PRECISION, else fp32 on a CPU, bf16 on CUDA)")
    p.add_argument("--registry", help="model registry URI for fine-tuned model ids")
    p.add_argument("--endpoint-url", dest="endpoint_url", help="S3-compatible endpoint for s3:// URIs (credentials: "
                   "AWS_* environment, ~/.aws, fsspec config)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prefect", dest="prefect", action="store_true", default=None,
                   help="run through the Prefect flow (default: only when a Prefect API URL is configured)")
    g.add_argument("--no-prefect", dest="prefect", action="store_false", help="run the job directly, never the flow")


def add(sub) -> None:
    a = command(sub, "compress-archive", _compress_archive, "pipeline.jobs.params:CompressArchiveParams",
                ("prefect", "precision"), help="compress every image under a folder or S3 prefix into an archive")
    a.add_argument("source", help="local folder or s3://bucket/prefix")
    a.add_argument("dest", help="local folder or s3://bucket/prefix for small files and manifests")
    fidelity_args(a)
    a.add_argument("--no-incremental", dest="incremental", action="store_false", default=None,
                   help="process every object, also those an earlier ok row for this model covers")
    a.add_argument("--retry-failed", dest="retry_failed", action="store_true", default=None)
    a.add_argument("--include", action="append", help="glob on keys (repeatable)")
    a.add_argument("--exclude", action="append", help="glob on keys (repeatable)")
    a.add_argument("--max-pixels", dest="max_pixels", type=int)
    a.add_argument("--max-images", dest="max_images", type=int)
    job_args(a)
    a.add_argument("--verify", action="store_true", default=None, help="record a round-trip PSNR per image")
    a.add_argument("--dry-run", dest="dry_run", action="store_true", default=None)
    a.add_argument("--inventory", help="S3 Inventory manifest.json (CSV or Parquet) to plan from instead of a listing")
    a.add_argument("--list-workers", dest="list_workers", type=int, help="S3 sub-prefixes listed in parallel")
    a.add_argument("--compact", choices=["auto", "always", "never"], help="manifest index compaction after the run")
    a.add_argument("--prices", help="price table file (JSON or TOML) over the built-in list prices, for the run's "
                   "cost report (default: TAID_PRICES; docs/costs.md)")

    x = command(sub, "compact", _compact, "pipeline.storage.params:StorageParams", ("dest", "repair"),
                help="fold an archive's run partitions into its manifest index (atomic, idempotent)")
    x.add_argument("dest", help="the compress-archive destination URI")
    x.add_argument("--endpoint-url", dest="endpoint_url", help="S3-compatible endpoint for s3:// URIs")
    x.add_argument("--repair", action="store_true", help="read every index file whole first and rebuild the index "
                   "from the run partitions if any is missing or corrupt (compaction alone rebuilds on what it sees)")

    y = command(sub, "verify", _verify, "pipeline.storage.params:StorageParams", ("archive",),
                help="check every image's files in an archive against their sha256 (exit 1 when any is missing or "
                "corrupt, or the index is broken)")
    y.add_argument("archive", help="the compress-archive destination URI")
    y.add_argument("--endpoint-url", dest="endpoint_url", help="S3-compatible endpoint for s3:// URIs")

    h = command(sub, "rehydrate", _rehydrate, "pipeline.jobs.params:RehydrateParams",
                ("key", "output", "prefect", "precision"),
                help="full resolution back from an archive (one key, or many with --to)")
    h.add_argument("archive", help="the compress-archive destination URI")
    h.add_argument("key", nargs="?", help="source key (or small-file URI) of one image")
    h.add_argument("-o", "--output", help="file for the one image (default: its name, here)")
    h.add_argument("--prefix", help="rehydrate every key under this prefix ('' = all) ...")
    h.add_argument("--glob", help="... or matching this glob ...")
    h.add_argument("--run-id", dest="run_id", help="... or written by this compress run")
    h.add_argument("--to", help="destination URI for many images")
    h.add_argument("--format", dest="restored_format", type=formats.canonical, choices=formats.REHYDRATE_FORMATS,
                   help="default: the source's format")
    h.add_argument("--quality", type=int)
    h.add_argument("--preview", dest="preview", action="store_true",
                   help="leave out enhancement layers (the small files' fidelity)")
    job_args(h)
