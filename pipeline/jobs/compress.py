"""The compress job: a compact TAID version of every image under a prefix.

    list (or an S3 Inventory) -> sorted merge with the manifest index -> ActorPool of CompressWorkers
    (read, decode, TAD, encode, atomic write; staged: CPU workers + model actors) -> Parquet manifest parts -> run stats (written last)
    -> compaction of the manifest index

Planning is `pipeline.jobs.plan`, the work `pipeline.jobs.workers.CompressWorker`, rows `pipeline.manifest.rows`, the
manifest `pipeline.manifest.parts`. No Prefect here: `flows/compress_archive.py` wraps `run_compress`.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TypedDict

from pipeline.codec import Request
from pipeline.errors import DestinationFullError, ManifestWriteError, os_error_line, storage_refuses
from pipeline.jobs.common import new_run_id, s3_counts
from pipeline.jobs.params import PIPELINE_VERSION, CompressArchiveParams
from pipeline.jobs.prices import (
    DEFAULT_PRICES,
    Prices,
    billable_bytes,
    monthly_saving,
    months_to_pay_back,
    one_time_cost,
)
from pipeline.jobs.progress import NoProgress, Progress, Throttled
from pipeline.manifest import ArchiveRow, ArchiveRows, ManifestWriter, PreviousState, write_run_stats
from pipeline.storage import ObjectInfo, UnsafeKeyError, s3, safe_join

log = logging.getLogger(__name__)


class CompressResult(TypedDict, total=False):
    """The run stats (DEST/_runs/<run_id>.json) and what `run_compress` returns."""

    run_id: str
    source: str
    dest: str
    model_id: str | None
    scale: int | None
    small_format: str | None
    quality: int | None
    fidelity: str | None
    target_psnr: float | None
    target_score: float | None
    scores: dict  # SSIMULACRA2 of the ok rows verified against a score: worst / whole (min, mean), overshoot, encodes
    pipeline_version: str
    dry_run: bool
    to_process: int  # dry runs only
    plan: dict  # objects not processed, by reason (and "listed")
    dispatch: dict  # actor pool counters: restarts, batches, actor_nodes, gpus_per_worker
    manifest_parts: int
    rows: int
    by_status: dict
    bytes_in_ok: int
    bytes_out_ok: int
    ratio_ok: float | None
    bytes_saved_ok: int
    enhancement_bytes_ok: int
    images_with_layer: int
    stored_fraction_ok: float | None
    psnr_y_mean: float | None
    psnr_y_min: float | None
    # cost (RunStats, pipeline.jobs.prices; docs/costs.md)
    cpu_s: dict  # CPU-seconds by stage (CPU_STAGES) and "total", over every row; None: no row measured it
    cpu_s_per_mp: dict  # the same per megapixel decoded
    gpu_s: float  # GPU-seconds the run held (a GPU is paid while held, busy or not)
    held_core_s: float  # CPU core-seconds the run held (utilization.basis says whose); the one-time cost's CPU
    utilization: dict  # held vs busy, where the idle core-seconds went, busy cores over time (runtime/utilization.py)
    objects_written: int  # small files + layers of the ok rows
    objects_per_image: float | None
    run_objects: int  # manifest parts + this run stats file
    payback: dict  # storage class -> billable bytes, saving per month, one-time cost, months (None: never)
    prices: dict  # which price table: source file (None: built-in), as_of, region, currency
    seconds: float
    images_per_s: float
    megapixels_per_s: float
    finished_at: str
    s3: dict
    index: dict  # the manifest index compaction after the run


def decide(obj: ObjectInfo, prev: PreviousState | None, params: CompressArchiveParams,
           request: Request | None = None) -> str:
    """'process', or why not: 'unchanged' (ok row with the same ETag and size for this model),
    'failed_before' (incremental runs leave failures to retry_failed), 'skipped_before' (an
    unchanged object our policy refused: empty, not an image, too large...), 'not_failed'
    (retry_failed runs touch failed_* rows only: a skip is a decision, not an accident)."""
    if params.retry_failed:  # whatever the object's version now: its latest row failed
        return "process" if prev is not None and prev.status.startswith("failed") else "not_failed"
    same = (prev is not None and prev.etag == obj.etag and prev.size == obj.size
            and same_settings(prev, request or params.request()))
    if not params.incremental or not same:
        return "process"
    if prev.status == "ok":
        return "unchanged"
    return "failed_before" if prev.status.startswith("failed") else "skipped_before"


def same_settings(prev: PreviousState, request: Request) -> bool:
    """Was the latest row made with what this run asks for? The same preset, or the same explicit
    target (score or PSNR), by one of its pairs; for a fixed single layer, the same model and no
    fidelity. A preset matches by name: a row keeps what it was verified against (an archive made
    when `standard` was 36 dB Y-PSNR is not silently redone by a nightly run; `--no-incremental`
    re-encodes it). `pipeline.jobs.plan.same_settings_mask` is the vectorised twin: change both together."""
    asked = request.columns()
    same_target = asked["fidelity"] != "target" or (
        prev.target_psnr == asked["target_psnr"] and prev.target_score == asked["target_score"])
    return prev.fidelity == asked["fidelity"] and same_target and prev.model_id in (*request.models, None)


def plan_objects(params: CompressArchiveParams, counts: dict,
                 request: Request | None = None) -> tuple[Iterator[ObjectInfo], int | None]:
    """(the objects to process, streamed in one listing pass; an estimate of how many objects
    will be listed, None when unknown). The others are counted in `counts` by reason. Memory
    stays flat in the number of objects: see `pipeline.jobs.plan`."""
    from pipeline.jobs.plan import plan
    from pipeline.manifest import PLAN_COLUMNS, ManifestReader
    from pipeline.storage import InventoryListing, listing_tables, protocol_prefix

    fs, root = params.fs(params.source)
    base = protocol_prefix(fs) + root.rstrip("/") + "/"
    estimate = None
    if params.inventory:  # the day's S3 Inventory report instead of listing the bucket
        inventory = InventoryListing(params.inventory, params.source, fs=params.fs(params.inventory)[0])
        estimate = inventory.prepare()
        listing = inventory.tables(params.include, params.exclude)
    else:
        listing = listing_tables(fs, root, params.include, params.exclude, params.list_workers)
    states = None
    if params.incremental:
        dst_fs, dest_root = params.fs(params.dest)
        reader = ManifestReader(params.dest, fs=dst_fs, root=dest_root)
        estimate = estimate or reader.snapshot().keys or None
        states = reader.latest(PLAN_COLUMNS)
    return plan(listing, states, params, base, counts, request), estimate


def compact_if_needed(fs, root: str, always: bool = False) -> dict:
    """Fold run partitions into the manifest index when policy says so. A failure is logged and
    left to the next run: the run partitions are the source of truth, nothing is lost."""
    from pipeline.manifest import compact, needs_compaction, snapshot

    try:
        if not (always or needs_compaction(snapshot(fs, root), fs)):
            return {"compacted": False}
        result = compact(fs, root)
    except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; the run itself succeeded
        log.warning("manifest compaction failed (the next run retries): %s: %s", type(exc).__name__, exc)
        return {"compacted": False, "error": f"{type(exc).__name__}: {exc}"}
    return {k: (len(v) if k == "files" else v) for k, v in result.items() if k != "runs"}


def compact_manifest(params: CompressArchiveParams) -> dict:
    """After a run: fold its partition into the manifest index (policy `params.compact`)."""
    if params.compact == "never":
        return {"compacted": False}
    fs, root = params.fs(params.dest)
    return compact_if_needed(fs, root, always=params.compact == "always")


CPU_STAGES = ("decode", "tad", "tau", "search", "encode", "verify")  # the rows' cpu_<stage>_s columns


def gpu_seconds_held(dispatch: dict, params: CompressArchiveParams, seconds: float) -> float:
    """GPU-seconds a run held: each CUDA model actor for its life (staged), else each single-stage
    actor's GPU share for the run's `seconds`."""
    if dispatch.get("model_actors"):
        share = params.gpus_per_model_actor if params.gpus_per_model_actor is not None else 1.0
        return sum(a.get("alive_s", 0.0) * share for a in dispatch["model_actors"]
                   if str(a.get("device", "")).startswith("cuda"))
    return (dispatch.get("gpus_per_worker") or 0.0) * params.workers * seconds


class RunStats:
    """Counters for the summary and the run stats JSON, the cost report among them (billable bytes
    are summed per storage class as rows arrive: every object is billed as at least its minimum)."""

    def __init__(self, prices: Prices = DEFAULT_PRICES, prices_source: str | None = None) -> None:
        self.started = time.time()
        self.by_status: dict[str, int] = {}
        self.bytes_in = self.bytes_out = self.bytes_layer = self.pixels = 0
        self.psnr_sum, self.psnr_n, self.psnr_min, self.layers = 0.0, 0, None, 0
        self.prices, self.prices_source = prices, prices_source
        self.cpu: dict[str, float | None] = dict.fromkeys(CPU_STAGES)  # None until a row measures the stage
        self.decoded_pixels = self.objects = 0
        self.billable = {key: [0, 0] for key in prices.storage}  # class -> [source, stored]
        self.scores: list[tuple[float, float, float, int]] = []  # ok rows with a score target: worst, whole, target, encodes

    def add(self, row: ArchiveRow) -> None:
        self.by_status[row.status] = self.by_status.get(row.status, 0) + 1
        for stage in CPU_STAGES:  # every row: the compute of an image that failed is spent too
            spent = getattr(row, f"cpu_{stage}_s")
            if spent is not None:
                self.cpu[stage] = (self.cpu[stage] or 0.0) + spent
        self.decoded_pixels += (row.width or 0) * (row.height or 0)
        if row.status != "ok":
            return
        stored = [row.output_size or 0] + ([row.enhancement_size or 0] if row.enhancement_uri else [])
        self.objects += len(stored)
        for key, totals in self.billable.items():
            storage = self.prices.storage[key]
            totals[0] += billable_bytes(row.source_size or 0, storage)
            totals[1] += billable_bytes(stored, storage)
        self.bytes_in += row.source_size or 0
        self.bytes_out += (row.output_size or 0) + (row.enhancement_size or 0)
        self.bytes_layer += row.enhancement_size or 0
        self.layers += 1 if row.enhancement_size else 0
        self.pixels += (row.width or 0) * (row.height or 0)
        if row.score_worst is not None and row.target_score is not None:
            self.scores.append((row.score_worst, row.score_whole, row.target_score, row.encodes or 0))
        if row.psnr_y is not None:
            p = min(row.psnr_y, 99.0)  # an exact (lossless) image counts as 99 dB in the mean
            self.psnr_sum, self.psnr_n = self.psnr_sum + p, self.psnr_n + 1
            self.psnr_min = p if self.psnr_min is None else min(self.psnr_min, p)

    @property
    def rows(self) -> int:
        return sum(self.by_status.values())

    @property
    def busy_cpu_s(self) -> float:
        """The stage CPU-seconds of every row so far (the cost report's `cpu_s.total`, 0 when none measured)."""
        return sum(v for v in self.cpu.values() if v is not None)

    def cost(self, run_objects: int = 0, gpu_seconds: float = 0.0, held_core_s: float | None = None) -> dict:
        """CPU-seconds by stage, objects written and, per storage class, when the run pays for
        itself. `run_objects`: the run's own objects (manifest parts, stats file), PUTs too.
        `held_core_s`: the core-seconds the run held; the one-time cost charges them (a core is
        paid while held), and the busy CPU-seconds beside them (`*_busy`). None: busy only."""
        measured = [v for v in self.cpu.values() if v is not None]
        cpu = {**self.cpu, "total": sum(measured) if measured else None}
        busy = self.busy_cpu_s
        held = busy if held_core_s is None else held_core_s
        mp = self.decoded_pixels / 1e6
        ok = self.by_status.get("ok", 0)
        payback = {}
        for key, (source, stored) in self.billable.items() if ok else ():
            saving = monthly_saving(source, stored, self.prices, key)
            once = one_time_cost(self.objects + run_objects, held, self.prices, key, gpu_seconds)
            once_busy = one_time_cost(self.objects + run_objects, busy, self.prices, key, gpu_seconds)
            months, months_busy = months_to_pay_back(once, saving), months_to_pay_back(once_busy, saving)
            payback[key] = {"name": self.prices.storage[key].name or key, "billable_source_bytes": source,
                            "billable_stored_bytes": stored, "saving_per_month": saving, "one_time_cost": once,
                            "months": months if math.isfinite(months) else None,  # None: never
                            "one_time_cost_busy": once_busy,
                            "months_busy": months_busy if math.isfinite(months_busy) else None}
        return {
            "cpu_s": cpu, "cpu_s_per_mp": {k: (v / mp if v is not None and mp else None) for k, v in cpu.items()},
            "gpu_s": gpu_seconds, "held_core_s": held, "objects_written": self.objects,
            "objects_per_image": self.objects / ok if ok else None, "run_objects": run_objects, "payback": payback,
            "prices": {"source": self.prices_source, "as_of": self.prices.as_of, "region": self.prices.region,
                       "currency": self.prices.currency},
        }

    def score_stats(self) -> dict:
        """The ok rows verified against a score target: their worst-region and whole-image scores
        (min, mean), how far above the target the worst region landed (mean, p95: the bytes rate
        control left on the table) and the layer encodes per image (mean, p95)."""
        import numpy as np

        if not self.scores:
            return {}
        worst, whole, target, encodes = (np.asarray(c, dtype=float) for c in zip(*self.scores))
        over = worst - target
        return {"images": len(worst), "worst_min": float(worst.min()), "worst_mean": float(worst.mean()),
                "whole_min": float(whole.min()), "whole_mean": float(whole.mean()),
                "overshoot_mean": float(over.mean()), "overshoot_p95": float(np.percentile(over, 95)),
                "encodes_mean": float(encodes.mean()), "encodes_p95": float(np.percentile(encodes, 95))}

    def summary(self, run_objects: int = 0, gpu_seconds: float = 0.0, held_core_s: float | None = None) -> dict:
        elapsed = max(time.time() - self.started, 1e-9)
        return {
            **self.cost(run_objects, gpu_seconds, held_core_s), "scores": self.score_stats(),
            "rows": self.rows, "by_status": dict(sorted(self.by_status.items())), "bytes_in_ok": self.bytes_in,
            "bytes_out_ok": self.bytes_out, "ratio_ok": (self.bytes_in / self.bytes_out) if self.bytes_out else None,
            "bytes_saved_ok": self.bytes_in - self.bytes_out, "enhancement_bytes_ok": self.bytes_layer,
            "images_with_layer": self.layers,
            "stored_fraction_ok": (self.bytes_out / self.bytes_in) if self.bytes_in else None,
            "psnr_y_mean": (self.psnr_sum / self.psnr_n) if self.psnr_n else None, "psnr_y_min": self.psnr_min,
            "seconds": elapsed, "images_per_s": self.rows / elapsed, "megapixels_per_s": self.pixels / 1e6 / elapsed,
        }


def resolve_models(params: CompressArchiveParams) -> CompressArchiveParams:
    """Load and verify every pair the run may use now (a missing or modified model fails the run
    before any work) and make the defaults explicit for the actors and the run stats."""
    from models.zoo import load_pair
    from pipeline.codec import check_options, small_file_settings

    request = params.request()
    if request.fidelity is not None:
        for model_id in request.models:
            load_pair(model_id, registry=params.registry)
        explicit = params.target_psnr is not None or params.target_score is not None
        return params.model_copy(update={"fidelity": None if explicit else request.fidelity.name})
    pair = load_pair(params.single_model, registry=params.registry)
    fmt, quality = small_file_settings(pair, params.small_format, params.quality)
    params = params.model_copy(update={"model_id": params.single_model, "scale": params.scale or pair.scale,
                                       "small_format": fmt, "quality": quality})
    check_options(pair, params.request().options)  # e.g. x8 with taid-x4: a caller error, before any work
    return params


def run_compress(params: CompressArchiveParams, progress: Progress | None = None,
                 run_id: str | None = None, started: float | None = None) -> CompressResult:
    """One compress run: returns (and writes last, as DEST/_runs/<run_id>.json) its stats. A run
    that writes holds the destination's lease (pipeline.manifest.lease): while another run holds it, this
    one raises DestinationBusy (one line) before any work. `started`: when the command started (the
    CLI's process start), so the held time covers it; default: now."""
    from pipeline.manifest import Lease
    from pipeline.runtime import RunClock

    clock = RunClock(started or time.time())
    clock.mark("process")
    run_id = run_id or new_run_id()
    prices = params.price_table()  # a wrong price file says so in one line, before anything is touched
    params.check_storage()  # before the lease: bad credentials, a missing source or an unwritable dest, in one line
    if params.dry_run:
        return _run_compress(params, progress, run_id, prices, clock)
    dst_fs, dest_root = params.fs(params.dest)
    with Lease(dst_fs, dest_root, run_id):
        return _run_compress(params, progress, run_id, prices, clock)


def ray_running() -> bool:
    """Is this process connected to a Ray already (a caller's, a test's)? Imports no Ray."""
    import sys

    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def in_process(params, lookahead: list[ObjectInfo], more: bool, ray_up: bool | None = None) -> bool:
    """Run the plan in this process, without Ray? `params.in_process`; auto: only where no cluster
    is named or joined (`ray_up`: default, whether this process is connected to one), single stage,
    and the whole plan is small (docs/costs.md#small-runs)."""
    if params.in_process != "auto":
        return params.in_process == "always"
    from pipeline.settings import get_settings

    if params.ray_address or get_settings().ray_address or params.stages == "staged" or (
            ray_running() if ray_up is None else ray_up):
        return False
    return (not more and len(lookahead) <= params.in_process_max_items
            and sum(o.size or 0 for o in lookahead) <= params.in_process_max_bytes)


def _run_compress(params: CompressArchiveParams, progress: Progress | None, run_id: str, prices,
                  clock) -> CompressResult:
    from pipeline.jobs.plan import largest_first
    from pipeline.jobs.workers import CompressWorker
    from pipeline.runtime import run_utilization

    progress = Throttled(progress or NoProgress())
    dst_fs, dest_root = params.fs(params.dest)
    s3_before = dict(s3.STATS)
    if params.incremental and params.compact != "never":
        compact_if_needed(dst_fs, dest_root)  # e.g. runs that crashed before their compaction
    log.info("loading %s", ", ".join(params.request().models))
    params = resolve_models(params)
    clock.mark("models")
    request = params.request()  # the run's, once: the plan, the rows and the actors' pairs follow it
    counts: dict = {}  # the plan streams: one listing pass, decided as the work goes
    planned, estimate = plan_objects(params, counts, request)
    yielded = [0]

    def counted(objects):
        for obj in objects:
            yielded[0] += 1
            yield obj

    planned = counted(planned)
    log.info("run %s: planning over about %s listed objects", run_id, estimate or "an unknown number of")
    if params.dry_run:
        return {"run_id": run_id, "dry_run": True, "to_process": sum(1 for _ in planned), "plan": counts,
                "s3": s3_counts(s3_before)}

    stats = RunStats(prices, params.prices_source)
    # local: room kept back for the manifest, so a disk that fills up still takes the rows of what was written
    writer = ManifestWriter(dst_fs, dest_root, run_id, params.rows_per_part, reserve=True)
    full: list[str] = []  # why the destination refuses every write (full, read-only): nothing new is started
    rows = ArchiveRows(run_id, {"model_id": params.model_id, **request.columns()}, PIPELINE_VERSION)

    def done() -> tuple[int, int]:
        """(objects done, total): listed objects not to process count as done; the total is the
        estimate (inventory count, or keys in the index) until the listing outgrows it."""
        listed = counts.get("listed", 0)
        return listed - yielded[0] + stats.rows, max(estimate or 0, listed, 1)

    def on_row(row: ArchiveRow) -> None:
        writer.add(row, urgent=row.status == "failed_write")  # the destination is in trouble: save rows now
        stats.add(row)
        progress.update(*done())
        if row.status == "failed_write" and not full and storage_refuses(row.error_message):
            full.append(row.error_message.splitlines()[0])
            log.warning("the destination refuses writes (%s): no new work is started", full[0])

    def checked(objects):
        """Refuse keys that would escape DEST here, before any actor sees them; stop when the
        destination is full (the batches in flight finish and keep their rows)."""
        for obj in objects:
            if full:
                break
            try:
                safe_join(dest_root, obj.key)
            except UnsafeKeyError as exc:
                on_row(rows.skipped(obj, 0, "skipped_unsafe_key", str(exc)))
                continue
            yield obj.__dict__

    dispatch = {"actor_restarts": 0, "batches": 0}
    machine = False
    try:
        # plans until a window of objects to process is listed (or the end): it decides where they run,
        # and each window is handed out largest first
        window = max(params.largest_first, params.in_process_max_items + 1)
        lookahead = list(itertools.islice(planned, window))
        clock.mark("planning")
        if lookahead:  # else nothing new: no actors, just the (empty) run record
            local = in_process(params, lookahead, more=len(lookahead) == window)
            if params.largest_first:
                lookahead.sort(key=lambda o: -(o.size or 0))
            objects = itertools.chain(lookahead, largest_first(planned, params.largest_first))
            if local:
                dispatch = _dispatch(CompressWorker, params, run_id, f"taid-compress-{run_id}", checked(objects),
                                     on_row, rows.crash, request.models, True)
                machine = True
            else:
                machine, dispatch = _on_ray(CompressWorker, params, run_id, checked(objects), on_row, rows.crash,
                                            request.models, clock)
    except ManifestWriteError:
        pass  # no more work whose rows could not be kept; the one line is raised below
    finally:
        writer.close(raise_errors=False)  # rows of finished objects are kept, even if the run dies
        progress.close(done()[0])
    if writer.error:  # no run stats: the run is not complete, and the next one redoes what has no row
        raise ManifestWriteError(f"cannot write the manifest under {params.dest} ({writer.error}): {writer.unsaved} "
                                 f"rows not recorded, {writer.rows} recorded; the next run redoes only the objects "
                                 "without a row")
    if full:  # no run stats either: the run did not finish
        raise DestinationFullError(
            f"the destination {params.dest} stopped taking writes ({full[0]}): {stats.by_status.get('ok', 0)} images "
            f"written, {stats.by_status.get('failed_write', 0)} failed writes, all {writer.rows} rows recorded; the rest was "
            "not started: make room, then rerun (it redoes only the objects without a row; --retry-failed the failed writes)")
    timing = dispatch.pop("_timing", None)
    utilization = run_utilization(clock, timing, stats.busy_cpu_s, time.time(), machine, dispatch.get("model_actors"),
                                  params.gpus_per_model_actor if params.gpus_per_model_actor is not None else 1.0)
    result: CompressResult = {
        "run_id": run_id, "source": params.source, "dest": params.dest, "model_id": params.model_id,
        "scale": params.scale, "small_format": params.small_format, "quality": params.quality,
        **request.columns(),
        "pipeline_version": PIPELINE_VERSION, "plan": counts, "dispatch": dispatch,
        "manifest_parts": writer.parts,
        **stats.summary(run_objects=writer.parts + 1,  # + the run stats file written below
                        gpu_seconds=gpu_seconds_held(dispatch, params, time.time() - stats.started),
                        held_core_s=utilization["held_core_s"]),
        "utilization": utilization,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    result["s3"] = s3_counts(s3_before, dispatch)  # throttled answers, list requests: driver + workers
    try:
        write_run_stats(dst_fs, dest_root, run_id, result)  # written last: marks the run complete
    except OSError as exc:
        raise ManifestWriteError(f"cannot write the run record under {params.dest} ({os_error_line(exc) or exc}): its "
                                 f"{writer.rows} rows are written; the next run redoes only the objects without a row") from exc
    log.info("run %s: %d rows %s in %.1f s", run_id, result["rows"], result["by_status"], result["seconds"])
    result["index"] = compact_manifest(params)
    return result


def _dispatch(*args, **kwargs) -> dict:
    from pipeline.runtime import dispatch

    return dispatch(*args, **kwargs)


def _on_ray(worker_cls, params, run_id: str, items, on_row, crash_row, models: list[str], clock) -> tuple[bool, dict]:
    """(whether the run holds this machine, the dispatch counters). On a cluster this run connects
    to (or with `start_on_driver`), the driver works on the first objects in a thread while the
    actors start, and stops taking new ones once they are ready
    (`pipeline.runtime.actor_pool.DriverLane`): the first image starts within seconds, and the
    driver's core is held while it works. One thread, not one per core: the codec measures each stage's CPU for the whole process
    (`time.process_time`), so two working threads would count each other's CPU."""
    import threading

    from pipeline.runtime import DriverLane, Shared, ensure_ray

    lock = threading.Lock()

    def locked(row) -> None:
        with lock:
            on_row(row)

    shared = Shared(items)
    # not when this process is connected to a Ray already (a library caller's own, a test's), nor staged, nor
    # where custom resources say which nodes may run the work (the driver's node is not one of them)
    from pipeline.settings import get_settings

    wanted = params.start_on_driver
    if wanted is None:  # auto: where the actors start on a cluster's cores, not on the driver's own
        wanted = bool(params.ray_address or get_settings().ray_address)
    starts_local = (wanted and params.stages != "staged" and not ray_running()
                    and not params.actor_resources and not params.worker_resources)
    lanes = []
    if starts_local:  # one thread: the codec measures a stage's CPU per process (time.process_time)
        lanes = [DriverLane(worker_cls, (params.model_dump(), run_id, []), shared, locked).start()]

    def stop() -> None:
        for lane in lanes:
            lane.stop()

    try:
        machine = ensure_ray(params.ray_address)
        clock.mark("ray")
        dispatch = _dispatch(worker_cls, params, run_id, f"taid-compress-{run_id}", shared, locked, crash_row,
                             models, False, stop if lanes else None)
    finally:
        stop()
        for lane in lanes:
            lane.join()
    if any(lane.intervals for lane in lanes):
        timing = dispatch.setdefault("_timing", {"lanes": [], "intervals": [], "ready_at": []})
        mine = [rest for lane in lanes for _, *rest in lane.intervals]
        if machine:  # the machine's cores: the driver's batches on the pool's slots, in turn
            slots = max(len(timing["lanes"]), 1)
            timing["intervals"] = timing["intervals"] + [(k % slots, *rest) for k, rest in enumerate(mine)]
        else:  # a cluster: the driver's one core is held while it works, a lane of its own
            slot = len(timing["lanes"])
            timing["intervals"] = timing["intervals"] + [(slot, *rest) for rest in mine]
            timing["driver_lane"] = (1.0, min(r[0] for r in mine), max(r[1] for r in mine))
        dispatch["driver_items"] = sum(lane.items_done for lane in lanes)
    return machine, dispatch


def _db(v) -> str | None:
    return None if v is None else ("exact" if v >= 99 else f"{v:.2f} dB")


def summary_table(result: CompressResult) -> list[dict]:
    """The run in (metric, value) rows: the Prefect artifact, the demo's printout."""
    rows = [{"metric": "images processed", "value": result["rows"]}]
    if result.get("fidelity"):
        if result.get("target_score") is not None:
            asked = f"SSIMULACRA2 >= {result['target_score']:g} in every region"
        else:
            asked = f"Y-PSNR >= {_db(result['target_psnr'])}"
        rows.append({"metric": "fidelity", "value": f"{result['fidelity']} ({asked})"})
    scores = result.get("scores") or {}
    if scores:
        rows.append({"metric": "SSIMULACRA2 worst region (min / mean)",
                     "value": f"{scores['worst_min']:.1f} / {scores['worst_mean']:.1f}"})
        rows.append({"metric": "overshoot above target (mean / p95)",
                     "value": f"{scores['overshoot_mean']:.2f} / {scores['overshoot_p95']:.2f}"})
        rows.append({"metric": "layer encodes per image (mean)", "value": f"{scores['encodes_mean']:.1f}"})
    small = result.get("small_format")
    if small:
        rows.append({"metric": "small format", "value": small + (f" q{result['quality']}" if result.get("quality") else "")})
    rows += [{"metric": f"status {k}", "value": v} for k, v in result["by_status"].items()]
    rows += [{"metric": f"not processed: {k}", "value": v} for k, v in result["plan"].items() if k != "listed"]
    rows += [
        {"metric": "bytes in (ok)", "value": result["bytes_in_ok"]},
        {"metric": "bytes out (ok)", "value": result["bytes_out_ok"]},
        {"metric": "ratio in/out", "value": round(result["ratio_ok"], 3) if result["ratio_ok"] else None},
        {"metric": "bytes saved (ok)", "value": result["bytes_saved_ok"]},
        {"metric": "stored / source bytes (ok)",
         "value": round(result["stored_fraction_ok"], 4) if result["stored_fraction_ok"] is not None else None},
        {"metric": "images with an enhancement layer", "value": result["images_with_layer"]},
        {"metric": "Y-PSNR vs source: mean", "value": _db(result["psnr_y_mean"])},
        {"metric": "Y-PSNR vs source: minimum", "value": _db(result["psnr_y_min"])},
        {"metric": "images/s", "value": round(result["images_per_s"], 3)},
        {"metric": "megapixels/s", "value": round(result["megapixels_per_s"], 3)},
        {"metric": "actor restarts", "value": result["dispatch"]["actor_restarts"]},
        {"metric": "S3 throttled answers (retried)", "value": result.get("s3", {}).get("throttled", 0)},
    ]
    return rows + cost_table(result)


def _months(entry: dict) -> str:
    return "never (nothing saved)" if entry["months"] is None else f"{entry['months']:.2f}"


def cost_table(result: CompressResult) -> list[dict]:
    """The cost report's (metric, value) rows (docs/costs.md)."""
    rows = [{"metric": f"CPU-s per MP: {stage}", "value": "not measured" if v is None else round(v, 4)}
            for stage, v in result["cpu_s_per_mp"].items()]
    u = result.get("utilization")
    if u:
        rows += [{"metric": "core-s held", "value": f"{u['held_core_s']:.1f} ({u['cores']:g} cores, {u['basis']})"},
                 {"metric": "CPU-s busy", "value": round(u["busy_cpu_s"], 1)},
                 {"metric": "utilisation (busy / held)",
                  "value": None if u["utilization"] is None else f"{100 * u['utilization']:.1f} %"},
                 {"metric": "idle core-s by cause",
                  "value": ", ".join(f"{k} {v:.1f}" for k, v in u["idle_core_s"].items() if k != "total" and v >= 0.05)
                  or "none"}]
        if u.get("gpu"):
            g = u["gpu"]
            rows.append({"metric": "GPU utilisation (busy / held)",
                         "value": None if g["utilization"] is None else f"{100 * g['utilization']:.1f} %"})
    if result["gpu_s"]:
        rows.append({"metric": "GPU-s held", "value": round(result["gpu_s"], 1)})
    per_image = result["objects_per_image"]
    rows.append({"metric": "objects written per image", "value": None if per_image is None else round(per_image, 3)})
    rows += [{"metric": f"payback months: {e['name']}", "value": _months(e)} for e in result["payback"].values()]
    rows += [{"metric": f"payback months on busy CPU-s only: {e['name']}",
              "value": _months({"months": e.get("months_busy")})} for e in result["payback"].values()
             if "months_busy" in e]
    p = result["prices"]
    rows.append({"metric": "prices", "value": f"{p['source'] or 'built-in list prices'} ({p['currency']}, "
                 f"{p['region'] or 'no region'}, as of {p['as_of']})"})
    return rows
