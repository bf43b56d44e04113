"""The `taid` command line: the top of the stack, above the job layer (pipeline.jobs) and the
Prefect flows (flows/), which is why it lives here and not in pipeline/ (nothing below imports it).

`compress-archive` and batch `rehydrate` call the job layer directly, unless a Prefect API is
configured (PREFECT_API_URL, a Prefect profile) or --prefect asks: then they run the flow, so the
run shows in that server's UI with its logs and artifacts. A local run thus starts no Prefect server
and prints no Prefect lines (docs/architecture.md). Each subcommand imports what it needs, so
`taid train` runs on a machine that has only torch (a GPU box) and `taid eval` never starts Ray or
Prefect."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.codec import formats  # constants only: no torch, no Ray


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

    report = evaluate(args.model, args.data, device=args.device, limit=args.limit, channel=args.codec,
                      quality=args.quality, lossless=args.lossless)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _write_atomic(path: str, data: bytes) -> None:
    import os
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".taid-", suffix=".tmp")
    try:  # the temporary file goes on every failure path (disk full included)
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp makes 0600; an output file gets the usual permissions
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _request(args: argparse.Namespace):
    """What a compress-file command asks for (pipeline.codec.request.Request): a fidelity, or one fixed small file."""
    from pipeline.codec.options import CodecOptions
    from pipeline.codec.request import Request

    asked = ("model_id", "small_format", "quality", "scale")
    limits = {k: v for k, v in vars(args).items() if k in CodecOptions.model_fields and k not in asked}
    return Request.of(args.fidelity, args.target_psnr, args.model_id, args.small_format, args.quality,
                      args.scale, args.effort, args.preview_long_side, **limits)


def _compress_file(args: argparse.Namespace) -> int:
    from models.zoo import WeightsError, load_pair
    from pipeline.codec.layer import layer_name
    from pipeline.codec.request import encode

    try:
        request = _request(args)
        with open(args.input, "rb") as f:
            data = f.read()
        small, layer, record = encode(data, request, {m: load_pair(m) for m in request.models})
    except (ValueError, OSError, WeightsError) as exc:  # bad options / model / unreadable path (pydantic errors are ValueErrors)
        print(f"taid compress-file: {exc}", file=sys.stderr)
        return 2
    if args.record:
        _write_atomic(args.record, record.model_dump_json(indent=2).encode())
    if small is None:
        print(f"{args.input}: {record.status}: {record.error_message}", file=sys.stderr)
        return 2
    if layer is not None:  # first: a small file naming a layer is never there without it
        _write_atomic(layer_name(args.output), layer)
    _write_atomic(args.output, small)
    print(
        f"{args.input} ({record.width}x{record.height}, {record.source_size} B) -> {args.output} "
        f"({record.out_width}x{record.out_height} {record.output_format}"
        f"{f' q{record.small_quality}' if record.small_quality else ''}, {record.output_size} B, x{record.scale} {record.model_id})"
    )
    if layer is not None:
        print(f"enhancement layer: {layer_name(args.output)} ({record.enhancement_format}"
              f"{f' level {record.enhancement_level}' if record.enhancement_level is not None else ''}, {len(layer)} B)")
    if record.psnr_y is not None:
        total = record.output_size + len(layer or b"")
        print(f"fidelity {record.fidelity}: Y-PSNR {record.psnr_y:.2f} dB (target {record.target_psnr:g}), "
              f"RGB {record.psnr_rgb:.2f} dB, thumbnail {record.thumbnail_psnr:.2f} dB; "
              f"{total} B stored = {total / record.source_size:.3f} of the source")
    if record.notes:
        print(f"notes: {record.notes}")
    if record.roundtrip_psnr is not None:
        print(f"round-trip PSNR (RGB): {record.roundtrip_psnr:.2f} dB")
    return 0


def _format_of_name(path: str) -> str | None:
    """The output format a file name asks for (RESTORED.png is PNG), None for other names."""
    from pipeline.codec.formats import format_of_name

    return format_of_name(path)


def _rehydrate_file(args: argparse.Namespace) -> int:
    from models.zoo import WeightsError, load_pair
    from pipeline.codec.options import RehydrateError
    from pipeline.codec.image import rehydrate_image
    from pipeline.codec.layer import layer_name
    from pipeline.codec.small_file import SmallFileError, read_small

    try:
        with open(args.input, "rb") as f:
            small = f.read()
        record = None
        if args.record:
            with open(args.record) as f:
                record = json.load(f)
        meta = record if record and record.get("model_id") else read_small(small)[1]
        if not meta:
            raise RehydrateError(f"{args.input} carries no TAID metadata and no --record was given")
        layer = None
        embedded = read_small(small)[1] or {}
        if (meta.get("enhancement_sha256") or embedded.get("enhancement_sha256")) and not args.preview:
            try:  # the layer lives beside the small file (pipeline.codec.layer.layer_name)
                with open(layer_name(args.input), "rb") as f:
                    layer = f.read()
            except FileNotFoundError:
                raise RehydrateError(f"its enhancement layer {layer_name(args.input)} is missing "
                                     "(--preview rehydrates without it, at the small file's fidelity)") from None
        pair = load_pair(args.model or meta["model_id"])
        fmt = args.format or _format_of_name(args.output)
        if fmt and fmt == (meta.get("rehydrate_format") or embedded.get("rehydrate_format") or "png"):
            fmt = None  # the recorded format: keep its recorded quality too
        out = rehydrate_image(small, record, pair, output_format=fmt, quality=args.quality, layer=layer,
                              preview=args.preview)
    except (RehydrateError, SmallFileError, WeightsError, OSError, ValueError) as exc:
        print(f"{args.input}: cannot rehydrate: {exc}", file=sys.stderr)
        return 2
    _write_atomic(args.output, out)
    print(f"{args.input} -> {args.output} ({len(out)} B)")
    return 0


def _ray_fields(args: argparse.Namespace, model) -> dict:
    """The flags that are fields of `model` (a RayParams), as its field values."""
    fields = {k: v for k, v in vars(args).items() if k in model.model_fields and v is not None}
    for name in ("actor_resources", "worker_resources"):
        if name in fields:
            fields[name] = dict(fields[name])
    if getattr(args, "precision", None):
        fields["inference"] = {"precision": args.precision}
    return fields


def compress_params(args: argparse.Namespace):
    """The job parameters of a `compress-archive` command line (pydantic checks them)."""
    from pipeline.jobs.params import CompressArchiveParams

    return CompressArchiveParams(**_ray_fields(args, CompressArchiveParams), show_progress=True)


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
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def _compress_archive(args: argparse.Namespace) -> int:
    try:
        params = compress_params(args)
    except ValueError as exc:  # pydantic's errors are ValueErrors; they never echo the input
        print(f"taid compress-archive: {value_error_line(exc)}", file=sys.stderr)
        return 2
    from pipeline.manifest.lease import DestinationBusy

    try:
        if use_prefect(args):
            from pipeline.jobs.compress import check_storage

            check_storage(params)  # missing keys / endpoint / bucket: one line from main(), before the flow starts
            from flows.compress_archive import compress_archive

            result = compress_archive(params)
        else:
            from pipeline.jobs import TqdmProgress, run_compress

            result = dict(run_compress(params, TqdmProgress("compress-archive")))
    except DestinationBusy as exc:  # another run writes there: one line, nothing done
        print(f"taid compress-archive: {exc}", file=sys.stderr)
        return 2
    return report(result, failed_prefix="failed")


def _compact(args: argparse.Namespace) -> int:
    from pipeline.manifest.index import compact
    from pipeline.storage.s3 import check_access
    from pipeline.storage.fs import filesystem

    fs, root = filesystem(args.dest, endpoint_url=args.endpoint_url)
    check_access(fs, root)
    result = compact(fs, root, repair=args.repair)
    result.pop("runs", None)
    result["files"] = len(result.get("files", []))
    print(json.dumps(result, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pipeline.archive.verify import report_ok, verify_archive

    options = {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None
    report = verify_archive(args.archive, options)
    for what in ("missing", "corrupt"):
        for f in report[what]:
            print(f"{what}: {f['key']} ({f['file']}) {f['uri']}")
    if report["index"]:
        print(f"index: {report['index']} (`taid compact --repair` rebuilds it)")
    print(f"{report['rows']} rows, {report['files']} files: {len(report['missing'])} missing, "
          f"{len(report['corrupt'])} corrupt, index {'broken' if report['index'] else 'ok'}")
    return 0 if report_ok(report) else 1


def _rehydrate(args: argparse.Namespace) -> int:
    if args.key:
        from pipeline.archive.access import RehydrateRefused, find_row, rehydrate

        try:
            data = rehydrate(args.key, args.archive, output_format=args.format, quality=args.quality, registry=args.registry,
                             preview=args.preview)
        except RehydrateRefused as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 2
        from pipeline.jobs.select import output_key

        out = args.output or output_key(find_row(args.archive, args.key), args.format).rsplit("/", 1)[-1]
        _write_atomic(out, data)
        print(f"{args.key} -> {out} ({len(data)} B)")
        return 0
    if not (args.prefix is not None or args.glob or args.run_id) or not args.to:
        print("give a KEY, or --prefix/--glob/--run-id with --to", file=sys.stderr)
        return 2
    params = rehydrate_params(args)
    if use_prefect(args):
        from flows.rehydrate import rehydrate as rehydrate_flow

        return report(rehydrate_flow(params))
    from pipeline.jobs import TqdmProgress, run_rehydrate

    return report(dict(run_rehydrate(params, TqdmProgress("rehydrate"))))


def rehydrate_params(args: argparse.Namespace):
    """The job parameters of a batch `rehydrate` command line."""
    from pipeline.jobs.params import RehydrateParams

    fields = _ray_fields(args, RehydrateParams)
    fields["output_format"] = args.format
    fields["preview"] = args.preview
    return RehydrateParams(**fields)


def _resource(text: str) -> tuple[str, float]:
    name, _, amount = text.partition("=")
    try:
        return name, float(amount or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=AMOUNT") from None


def _fidelity_args(p: argparse.ArgumentParser) -> None:
    """What the small files should be: a fidelity (or target), or one fixed layer (model, format...)."""
    g = p.add_mutually_exclusive_group()  # names are checked by pipeline.codec.fidelity (not imported here: it loads torch)
    g.add_argument("--fidelity", metavar="NAME", help="preview (30 dB), standard (36, the default), high (40), "
                   "lossless (exact pixels) or original (the source file back, byte for byte for JPEG): each image gets "
                   "the cheapest verified representation reaching it (docs/fidelity.md)")
    p.add_argument("--effort", choices=["fast", "default", "best"], help="how hard the fidelity search works for "
                   "bytes: CPU against storage (docs/fidelity.md#effort; default: default)")
    p.add_argument("--preview-long-side", dest="preview_long_side", type=int, metavar="PX",
                   help="long side of the small file where a layer carries the fidelity (default 768)")
    g.add_argument("--target-psnr", dest="target_psnr", type=float, metavar="DB", help="explicit Y-PSNR floor instead")
    p.add_argument("--model", dest="model_id", help="zoo id, weights file or registered model id: with a fidelity, "
                   "the only base pair; without, exactly this pair's single small files (default taid-x2)")
    p.add_argument("--scale", type=int, help="2, 4, ... 128 (a power of the model's scale; default: the model's)")
    p.add_argument("--small-format", dest="small_format", choices=formats.SMALL_FORMATS,
                   help="default: the model's (a codec-aware model's lossy format, else png)")
    p.add_argument("--quality", type=int, help="for webp-lossy / jpeg small files (default: the model's, else 90)")


def _ray_args(p: argparse.ArgumentParser) -> None:
    """How a job runs on Ray (pipeline.runtime.options.RayParams)."""
    p.add_argument("--ray-address", dest="ray_address", help="Ray cluster (default: TAID_RAY_ADDRESS, else a local Ray)")
    p.add_argument("--workers", type=int, help="actors (the CPU workers when staged; default 2)")
    p.add_argument("--cpus-per-worker", dest="cpus_per_worker", type=float, help="Ray CPUs per actor (default 0.5)")
    p.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=float,
                   help="single stage: Ray GPUs per actor (default: a GPU share when the cluster has GPUs; 0 = CPU)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="objects per actor call")
    p.add_argument("--actor-resource", dest="actor_resources", action="append", type=_resource, metavar="NAME=N",
                   help="custom Ray resource each model actor asks for (repeatable), e.g. taid_model=1")
    p.add_argument("--worker-resource", dest="worker_resources", action="append", type=_resource, metavar="NAME=N",
                   help="staged: custom Ray resource each CPU worker asks for (repeatable)")
    p.add_argument("--stages", choices=["auto", "single", "staged"],
                   help="staged: CPU workers + model actors batching tiles (default auto: staged when the cluster has GPUs)")
    p.add_argument("--model-actors", dest="model_actors", type=int, help="staged: model actors (default: one per GPU)")
    p.add_argument("--tile-batch", dest="tile_batch", type=int, help="staged: tiles per forward call (default 16)")
    p.add_argument("--precision", choices=["auto", "fp32", "tf32", "bf16", "fp16"],
                   help="network precision (default: TAID_PRECISION, else fp32 on a CPU, bf16 on CUDA)")


def _prefect_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prefect", dest="prefect", action="store_true", default=None,
                   help="run through the Prefect flow (default: only when a Prefect API URL is configured)")
    g.add_argument("--no-prefect", dest="prefect", action="store_false", help="run the job directly, never the flow")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _serve(args: argparse.Namespace) -> int:
    import hashlib
    import signal
    import threading

    from pipeline.settings import get_settings

    secret = get_settings().serve_token
    token = args.token or (secret.get_secret_value() if secret else None)
    if not token and args.host not in LOOPBACK and not args.insecure_open:
        print(f"taid serve: refusing to serve {args.host} without a token (--token or TAID_SERVE_TOKEN)", file=sys.stderr)
        return 2
    from pipeline.runtime.local_env import SERVE_ENV, set_local_env_defaults
    from pipeline.serving.config import ServeParams

    if not args.ray_address:  # our own local Ray: Serve's throughput settings, before ray is imported
        set_local_env_defaults(**SERVE_ENV)
    try:
        # only the token's sha256 goes into the deployment: Serve keeps deployment arguments in the cluster
        params = ServeParams(archive=args.archive, token_sha256=hashlib.sha256(token.encode()).hexdigest() if token else None,
                             allow_anonymous=not token, cache_bytes=args.cache_mb * 2**20, registry=args.registry,
                             endpoint_url=args.endpoint_url)
    except ValueError as exc:
        print(f"taid serve: {exc}", file=sys.stderr)
        return 2
    import ray
    from ray import serve

    from pipeline.serving.app import deploy

    ray.init(address=args.ray_address or "local", include_dashboard=False if not args.ray_address else None,
             log_to_driver=False)
    url = deploy(params, host=args.host, port=args.port, num_replicas=args.replicas, access_log=args.access_log)
    print(f"serving {args.archive} at {url} ({'token required' if token else 'no token: loopback only'}); Ctrl-C stops")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    serve.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taid", description="Task-Aware Image Downscaling archive tools")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--log-level", dest="log_level", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="level of the taid loggers on stderr (default: TAID_LOG_LEVEL, else INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a TAD/TAU pair on image folders or fsspec URIs")
    t.add_argument("--data", nargs="+", required=True, help="image folders, files or URIs (s3://...)")
    t.add_argument("--out", required=True, help="folder for last.pt and history.jsonl")
    t.add_argument("--task", choices=["scale", "gray", "luma"],
                   help="scale (default): a x2/x4 pair; gray: colour-aware grayscale; luma: its colorization baseline")
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
    t.add_argument("--codec", dest="channel", choices=["jpeg", "webp"], help="train with this lossy codec between the two networks")
    t.add_argument("--codec-quality", dest="channel_quality", type=int, nargs=2, metavar=("QMIN", "QMAX"),
                   help="quality band of the codec in the loop (default 30 90)")
    t.add_argument("--codec-gradient", dest="channel_gradient", choices=["ste", "proxy"],
                   help="gradient around the codec: straight-through or a differentiable JPEG (default ste)")
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
    e.add_argument("--codec", choices=["jpeg", "webp"], help="code the small image with this codec (default: the model's own)")
    e.add_argument("--quality", type=int, help="quality of that codec (default: the model's default, else 90)")
    e.add_argument("--lossless", action="store_true", help="evaluate a codec-aware model on its lossless small image")
    e.set_defaults(func=_eval)

    c = sub.add_parser("compress-file", help="shrink one image file into a TAID small file")
    c.add_argument("input", help="image file")
    c.add_argument("output", help="small file to write (atomically)")
    _fidelity_args(c)
    c.add_argument("--max-pixels", dest="max_pixels", type=int, help="decompression-bomb limit (header check)")
    c.add_argument("--tile", type=int, help="tile side in full-resolution pixels")
    c.add_argument("--multi-frame", dest="multi_frame", choices=["skip", "first"])
    c.add_argument("--high-bit-depth", dest="high_bit_depth", choices=["skip", "to8bit"])
    c.add_argument("--rehydrate-format", dest="rehydrate_format", help="default output format when rehydrating")
    c.add_argument("--verify", action="store_true", default=None, help="rehydrate once and report round-trip PSNR")
    c.add_argument("--record", help="also write the manifest record as JSON here")
    c.set_defaults(func=_compress_file)

    r = sub.add_parser("rehydrate-file", help="restore full resolution from a TAID small file")
    r.add_argument("input", help="TAID small file")
    r.add_argument("output", help="image file to write (atomically)")
    r.add_argument("--record", help="manifest record JSON (default: the metadata embedded in the small file)")
    r.add_argument("--model", help="model to load (default: the one recorded; a mismatch is refused)")
    r.add_argument("--format", help=f"{', '.join(formats.REHYDRATE_FORMATS)} (default: the output name's "
                   "extension, else the source's format)")
    r.add_argument("--quality", type=int, help="for jpeg / lossy webp output")
    r.add_argument("--preview", action="store_true", help="leave out the enhancement layer (the small file's fidelity)")
    r.set_defaults(func=_rehydrate_file)

    a = sub.add_parser("compress-archive", help="compress every image under a folder or S3 prefix into an archive")
    a.add_argument("source", help="local folder or s3://bucket/prefix")
    a.add_argument("dest", help="local folder or s3://bucket/prefix for small files and manifests")
    _fidelity_args(a)
    a.add_argument("--no-incremental", dest="incremental", action="store_false", default=None)
    a.add_argument("--retry-failed", dest="retry_failed", action="store_true", default=None)
    a.add_argument("--include", action="append", help="glob on keys (repeatable)")
    a.add_argument("--exclude", action="append", help="glob on keys (repeatable)")
    a.add_argument("--max-pixels", dest="max_pixels", type=int)
    a.add_argument("--max-images", dest="max_images", type=int)
    _ray_args(a)
    a.add_argument("--endpoint-url", dest="endpoint_url",
                   help="S3-compatible endpoint for s3:// URIs (credentials: AWS_* environment, ~/.aws, fsspec config)")
    a.add_argument("--registry", help="model registry URI for fine-tuned model ids")
    a.add_argument("--verify", action="store_true", default=None, help="record a round-trip PSNR per image")
    a.add_argument("--dry-run", dest="dry_run", action="store_true", default=None)
    a.add_argument("--inventory", help="S3 Inventory manifest.json (CSV or Parquet) to plan from instead of a listing")
    a.add_argument("--list-workers", dest="list_workers", type=int, help="S3 sub-prefixes listed in parallel (default 8)")
    a.add_argument("--compact", choices=["auto", "always", "never"], help="manifest index compaction after the run")
    a.add_argument("--prices", help="price table file (JSON or TOML) over the built-in list prices, for the run's "
                   "cost report (default: TAID_PRICES; docs/costs.md)")
    _prefect_args(a)
    a.set_defaults(func=_compress_archive)

    x = sub.add_parser("compact", help="fold an archive's run partitions into its manifest index (atomic, idempotent)")
    x.add_argument("dest", help="the compress-archive destination URI")
    x.add_argument("--endpoint-url", dest="endpoint_url", help="S3-compatible endpoint for s3:// URIs")
    x.add_argument("--repair", action="store_true", help="read every index file whole first and rebuild the index "
                   "from the run partitions if any is missing or corrupt (compaction alone rebuilds on what it sees)")
    x.set_defaults(func=_compact)

    y = sub.add_parser("verify", help="check every image's files in an archive against their sha256 (exit 1 when any "
                       "is missing or corrupt, or the index is broken)")
    y.add_argument("archive", help="the compress-archive destination URI")
    y.add_argument("--endpoint-url", dest="endpoint_url", help="S3-compatible endpoint for s3:// URIs")
    y.set_defaults(func=_verify)

    h = sub.add_parser("rehydrate", help="full resolution back from an archive (one key, or many with --to)")
    h.add_argument("archive", help="the compress-archive destination URI")
    h.add_argument("key", nargs="?", help="source key (or small-file URI) of one image")
    h.add_argument("-o", "--output", help="file for the one image (default: its name, here)")
    h.add_argument("--prefix", help="rehydrate every key under this prefix ('' = all) ...")
    h.add_argument("--glob", help="... or matching this glob ...")
    h.add_argument("--run-id", dest="run_id", help="... or written by this compress run")
    h.add_argument("--to", help="destination URI for many images")
    h.add_argument("--format", help=f"{', '.join(formats.REHYDRATE_FORMATS)} (default: the source's format)")
    h.add_argument("--quality", type=int)
    h.add_argument("--preview", action="store_true", help="leave out enhancement layers (the small files' fidelity)")
    h.add_argument("--registry", help="model registry URI for fine-tuned model ids")
    _ray_args(h)
    _prefect_args(h)
    h.set_defaults(func=_rehydrate)

    v = sub.add_parser("serve", help="HTTP server (Ray Serve) over one archive: thumbnails, rehydrated images, a browser")
    v.add_argument("archive", help="the compress-archive destination URI")
    v.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; anything else needs a token)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--token", help="bearer token for every route but /healthz (default: TAID_SERVE_TOKEN; "
                   "prefer the variable: arguments show in `ps`)")
    v.add_argument("--insecure-open", dest="insecure_open", action="store_true",
                   help="allow a non-loopback host without a token")
    v.add_argument("--replicas", type=int, help="fixed number of replicas (default 1; autoscaling: infra/serve/taid-serve.yaml)")
    v.add_argument("--cache-mb", dest="cache_mb", type=int, default=256, help="response cache per replica (MiB)")
    v.add_argument("--registry", help="model registry URI for fine-tuned model ids")
    v.add_argument("--endpoint-url", dest="endpoint_url", help="S3-compatible endpoint for s3:// URIs")
    v.add_argument("--ray-address", dest="ray_address", help="Ray cluster to deploy into (default: a local Ray)")
    v.add_argument("--access-log", dest="access_log", action="store_true",
                   help="Serve's per-request access log lines (off: they cost latency under load; metrics count requests)")
    v.set_defaults(func=_serve)
    for command in sub.choices.values():  # --log-level before or after the subcommand
        command.add_argument("--log-level", dest="log_level", type=str.upper, default=argparse.SUPPRESS,
                             choices=["DEBUG", "INFO", "WARNING", "ERROR"], help=argparse.SUPPRESS)
    return parser


def setup(args: argparse.Namespace) -> None:
    """Before any job: local Ray / Prefect without usage stats or telemetry (values already in the
    environment win), and our loggers on stderr at the asked level (libraries at WARNING)."""
    import logging

    from pipeline.runtime.local_env import set_local_env_defaults
    from pipeline.settings import LOGGERS, get_settings

    set_local_env_defaults()
    level = args.log_level or get_settings().log_level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(getattr(h, "taid_cli", False) for h in logger.handlers):
            handler.taid_cli = True
            logger.addHandler(handler)
    logging.captureWarnings(True)


def value_error_line(exc: ValueError) -> str:
    """A parameter error in one line: pydantic's own text takes three lines per error."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    return "; ".join((f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
                     for e in exc.errors())


def one_line(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for an error a user can act on; None for a bug (its traceback shows).
    UserError (pipeline.errors): its message and code; storage misconfiguration (pipeline.storage.s3.explain):
    what to set, 2; a corrupt Parquet file: 2; disk full, read-only or denied: 1 (a run may have done work)."""
    from pipeline.errors import UserError, os_error_line
    from pipeline.storage.s3 import explain

    if isinstance(exc, UserError):
        return str(exc), exc.exit_code
    line = explain(exc)
    if line is not None:
        return line, 2
    import pyarrow as pa

    if isinstance(exc, pa.ArrowInvalid):  # a manifest or index file that is not valid Parquet
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"a manifest or index file is corrupt: {first} (taid --debug shows the traceback)", 2
    line = os_error_line(exc)
    return (line, 1) if line is not None else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup(args)
    try:
        return args.func(args)
    except Exception as exc:
        known = None if args.debug else one_line(exc)
        if known is None:  # --debug, or a bug: the traceback
            raise
        line, code = known
        print(f"taid {args.command}: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
