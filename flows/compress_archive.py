"""Prefect flow `compress-archive`: a compact TAID version of every image under a prefix.

    list (or an S3 Inventory) -> sorted merge with the manifest index -> Ray actors
    (decode, TAD downscale, encode, atomic write) -> Parquet manifest parts -> run stats (last)
    -> compaction of the manifest index

The flow is thin: planning is `plan_objects`, the work is `pipeline.ray_workers`, the manifest
is `pipeline.manifest`. Run it from Python, from `taid compress-archive`, or as a deployment.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from pipeline.codec import check_options, small_file_settings
from pipeline.config import PIPELINE_VERSION, CompressArchiveParams
from pipeline.manifest import ManifestWriter, PreviousState, write_run_stats
from pipeline import s3
from pipeline.storage import ObjectInfo, UnsafeKeyError, safe_join


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def decide(obj: ObjectInfo, prev: PreviousState | None, params: CompressArchiveParams) -> str:
    """'process', or why not: 'unchanged' (ok row with the same ETag and size for this model),
    'failed_before' (incremental runs leave failures to retry_failed), 'skipped_before' (an
    unchanged object our policy refused: empty, not an image, too large...), 'not_failed'
    (retry_failed runs touch failed_* rows only: a skip is a decision, not an accident)."""
    if params.retry_failed:  # whatever the object's version now: its latest row failed
        return "process" if prev is not None and prev.status.startswith("failed") else "not_failed"
    same = prev is not None and prev.etag == obj.etag and prev.size == obj.size and same_settings(prev, params)
    if not params.incremental or not same:
        return "process"
    if prev.status == "ok":
        return "unchanged"
    return "failed_before" if prev.status.startswith("failed") else "skipped_before"


def same_settings(prev: PreviousState, params: CompressArchiveParams) -> bool:
    """Was the latest row made with what this run asks for? The same fidelity (preset or target)
    by one of its pairs, or, for a fixed single layer, the same model and no fidelity."""
    spec = params.fidelity_spec()
    if spec is None:
        return prev.fidelity is None and prev.model_id in (params.single_model, None)
    return prev.fidelity == spec.name and prev.target_psnr == spec.target_psnr and prev.model_id in (*spec.models, None)


def plan_objects(params: CompressArchiveParams, counts: dict) -> tuple[Iterator[ObjectInfo], int | None]:
    """(the objects to process, streamed in one listing pass; an estimate of how many objects
    will be listed, None when unknown). The others are counted in `counts` by reason. Memory
    stays flat in the number of objects: see `pipeline.plan`."""
    from pipeline.inventory import InventoryListing
    from pipeline.listing import listing_tables
    from pipeline.manifest_index import PLAN_COLUMNS, ManifestReader
    from pipeline.plan import plan
    from pipeline.storage import protocol_prefix

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
    return plan(listing, states, params, base, counts), estimate


def check_storage(params: CompressArchiveParams) -> None:
    """Missing credentials, an unreachable endpoint or a missing bucket: a StorageConfigError
    whose message is one line saying what to set (the failed flow run's message)."""
    for uri in filter(None, (params.source, params.dest, params.inventory)):
        fs, path = params.fs(uri)
        s3.check_access(fs, path)


def s3_counts(before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in s3.STATS.items() if v - before.get(k, 0)}


def compact_if_needed(fs, root: str, logger, always: bool = False) -> dict:
    """Fold run partitions into the manifest index when policy says so. A failure is logged and
    left to the next run: the run partitions are the source of truth, nothing is lost."""
    from pipeline.manifest_index import compact, needs_compaction, snapshot
    from pipeline.s3 import arrow_filesystem

    try:
        if not (always or needs_compaction(snapshot(fs, root), arrow_filesystem(fs))):
            return {"compacted": False}
        result = compact(fs, root)
    except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; the run itself succeeded
        logger.warning("manifest compaction failed (the next run retries): %s: %s", type(exc).__name__, exc)
        return {"compacted": False, "error": f"{type(exc).__name__}: {exc}"}
    return {k: (len(v) if k == "files" else v) for k, v in result.items() if k != "runs"}


@task(name="compact-manifest")
def compact_manifest(params: CompressArchiveParams) -> dict:
    """After a run: fold its partition into the manifest index (policy `params.compact`)."""
    if params.compact == "never":
        return {"compacted": False}
    fs, root = params.fs(params.dest)
    return compact_if_needed(fs, root, get_run_logger(), always=params.compact == "always")


class RunStats:
    """Counters for the summary artifact and the run stats JSON."""

    def __init__(self) -> None:
        self.started = time.time()
        self.by_status: dict[str, int] = {}
        self.bytes_in = self.bytes_out = self.bytes_layer = self.pixels = 0
        self.psnr_sum, self.psnr_n, self.psnr_min, self.layers = 0.0, 0, None, 0

    def add(self, row: dict) -> None:
        self.by_status[row["status"]] = self.by_status.get(row["status"], 0) + 1
        if row["status"] == "ok":
            self.bytes_in += row.get("source_size") or 0
            self.bytes_out += (row.get("output_size") or 0) + (row.get("enhancement_size") or 0)
            self.bytes_layer += row.get("enhancement_size") or 0
            self.layers += 1 if row.get("enhancement_size") else 0
            self.pixels += (row.get("width") or 0) * (row.get("height") or 0)
            p = row.get("psnr_y")
            if p is not None:
                p = min(p, 99.0)  # an exact (lossless) image counts as 99 dB in the mean
                self.psnr_sum, self.psnr_n = self.psnr_sum + p, self.psnr_n + 1
                self.psnr_min = p if self.psnr_min is None else min(self.psnr_min, p)

    @property
    def rows(self) -> int:
        return sum(self.by_status.values())

    def summary(self) -> dict:
        elapsed = max(time.time() - self.started, 1e-9)
        return {
            "rows": self.rows, "by_status": dict(sorted(self.by_status.items())), "bytes_in_ok": self.bytes_in,
            "bytes_out_ok": self.bytes_out, "ratio_ok": (self.bytes_in / self.bytes_out) if self.bytes_out else None,
            "bytes_saved_ok": self.bytes_in - self.bytes_out, "enhancement_bytes_ok": self.bytes_layer,
            "images_with_layer": self.layers,
            "stored_fraction_ok": (self.bytes_out / self.bytes_in) if self.bytes_in else None,
            "psnr_y_mean": (self.psnr_sum / self.psnr_n) if self.psnr_n else None, "psnr_y_min": self.psnr_min,
            "seconds": elapsed, "images_per_s": self.rows / elapsed, "megapixels_per_s": self.pixels / 1e6 / elapsed,
        }


@task(name="compress-objects")
def compress_objects(params: CompressArchiveParams, run_id: str) -> dict:
    from pipeline.ray_workers import ensure_ray, run_compress_pool

    logger = get_run_logger()
    dst_fs, dest_root = params.fs(params.dest)
    check_storage(params)  # one line saying what to set, before any work
    s3_before = dict(s3.STATS)
    if params.incremental and params.compact != "never":
        compact_if_needed(dst_fs, dest_root, logger)  # e.g. runs that crashed before their compaction
    from models.zoo import load_pair

    spec = params.fidelity_spec()
    if spec is not None:  # resolve and verify every pair of the fidelity now: a bad model fails before any work
        for model_id in spec.models:
            load_pair(model_id, registry=params.registry)
        # made explicit for the actors and the run stats (the default preset becomes its name)
        params = params.model_copy(update={"fidelity": None if params.target_psnr else spec.name})
    else:
        # resolve and verify the model here: a missing or modified model fails the run before any work
        pair = load_pair(params.single_model, registry=params.registry)
        # the model's defaults, made explicit for the actors (same model, same answer) and the run stats
        fmt, quality = small_file_settings(pair, params.small_format, params.quality)
        params = params.model_copy(update={"model_id": params.single_model, "scale": params.scale or pair.scale,
                                           "small_format": fmt, "quality": quality})
        check_options(pair, params.codec_options(pair.scale))  # e.g. x8 with taid-x4: a caller error, before any work
    counts: dict = {}  # the plan streams: one listing pass, decided as the work goes
    planned, estimate = plan_objects(params, counts)
    yielded = [0]

    def counted(objects):
        for obj in objects:
            yielded[0] += 1
            yield obj

    planned = counted(planned)
    logger.info("run %s: planning over about %s listed objects", run_id, estimate if estimate else "an unknown number of")
    if params.dry_run:
        return {"run_id": run_id, "dry_run": True, "to_process": sum(1 for _ in planned), "plan": counts}

    stats = RunStats()
    writer = ManifestWriter(dst_fs, dest_root, run_id, params.rows_per_part)
    progress_id = create_progress_artifact(0.0, key="compress-archive-progress", description=f"run {run_id}")
    bar = None
    if params.show_progress:
        from tqdm import tqdm

        bar = tqdm(total=estimate, desc="compress-archive", unit="img")
    last_update = [0.0]

    def progress() -> tuple[int, int]:
        """(objects done, total): listed objects not to process count as done; the total is the
        estimate (inventory count, or keys in the index) until the listing outgrows it."""
        listed = counts.get("listed", 0)
        return listed - yielded[0] + stats.rows, max(estimate or 0, listed, 1)

    def on_row(row: dict) -> None:
        writer.add(row)
        stats.add(row)
        now = time.monotonic()
        if now - last_update[0] > 2:
            done, total = progress()
            update_progress_artifact(progress_id, min(100.0, 100.0 * done / total))
            if bar is not None:
                bar.total, bar.n = total, done
                bar.refresh()
            last_update[0] = now

    def checked(objects):
        """Refuse keys that would escape DEST here, before any actor sees them."""
        for obj in objects:
            try:
                safe_join(dest_root, obj.key)
            except UnsafeKeyError as exc:
                on_row({"run_id": run_id, "source_key": obj.key, "source_uri": obj.uri, "source_etag": obj.etag,
                        "source_size": obj.size, "status": "skipped_unsafe_key", "error_message": str(exc),
                        "model_id": params.model_id, "pipeline_version": PIPELINE_VERSION, **params.fidelity_columns(),
                        "processed_at": datetime.now(timezone.utc), "attempts": 0})
                continue
            yield obj

    try:
        first = next(planned, None)  # plans until the first object to process, or the end
        if first is not None:
            ensure_ray(params.ray_address)
            dispatch = run_compress_pool(params, run_id, checked(itertools.chain([first], planned)), on_row)
        else:  # nothing new: no actors, just the (empty) run record
            dispatch = {"actor_restarts": 0, "batches": 0}
    finally:
        writer.close()  # rows of finished objects are never lost, even if the run dies
        if bar is not None:
            done, _ = progress()
            bar.total, bar.n = done, done
            bar.close()
    update_progress_artifact(progress_id, 100.0)
    result = {
        "run_id": run_id, "source": params.source, "dest": params.dest, "model_id": params.model_id,
        "scale": params.scale, "small_format": params.small_format, "quality": params.quality,
        **params.fidelity_columns(),
        "pipeline_version": PIPELINE_VERSION, "plan": counts, "dispatch": dispatch,
        "manifest_parts": writer.parts, **stats.summary(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    result["s3"] = s3_counts(s3_before)  # throttled answers, retries, list requests (this driver)
    write_run_stats(dst_fs, dest_root, run_id, result)  # written last: marks the run complete
    return result


def _db(v) -> str | None:
    return None if v is None else ("exact" if v >= 99 else f"{v:.2f} dB")


def summary_table(result: dict) -> list[dict]:
    rows = [{"metric": "images processed", "value": result["rows"]}]
    if result.get("fidelity"):
        rows.append({"metric": "fidelity", "value": f"{result['fidelity']} (Y-PSNR >= {_db(result['target_psnr'])})"})
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
    ]
    return rows


@flow(name="compress-archive")
def compress_archive(params: CompressArchiveParams, run_id: str | None = None) -> dict:
    run_id = run_id or new_run_id()
    result = compress_objects(params, run_id)
    if not result.get("dry_run"):
        result["index"] = compact_manifest(params)
        create_table_artifact(summary_table(result), key="compress-archive-summary", description=f"run {run_id}")
    return result
