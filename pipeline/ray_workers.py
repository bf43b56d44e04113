"""Ray side of compress-archive: stateful actors that load the model once, and a dispatcher that
streams work to them with a bounded window and survives actor crashes.

Memory stays bounded however large the bucket: the listing is a generator, at most
`workers * depth` (default 2) batches are in flight, each actor holds one batch's bytes at a time, and rows go
straight to the manifest writer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone

import ray
from ray.exceptions import RayActorError, WorkerCrashedError

from pipeline.config import PIPELINE_VERSION, CompressArchiveParams
from pipeline.storage import ObjectInfo, UnsafeKeyError, atomic_write, protocol_prefix, safe_join


def ensure_ray(address: str = "") -> None:
    """Connect to `address`, else to TAID_RAY_ADDRESS (set it in a worker's environment to send
    every flow run to a cluster), else start a fresh local Ray ("local" never joins a stale one)."""
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("TAID_RAY_ADDRESS") or "local", include_dashboard=False,
                 log_to_driver=False)


RETRIES = 3  # transient storage errors, per read / write


def _with_retries(fn, what: str):
    delay = 0.2
    for attempt in range(RETRIES):
        try:
            return fn()
        except (FileNotFoundError, PermissionError):
            raise  # not transient
        except Exception:
            if attempt == RETRIES - 1:
                raise
            time.sleep(delay)
            delay *= 4


class CompressWorker:
    """One model, loaded once; `process` turns a batch of objects into manifest rows."""

    def __init__(self, params: dict, run_id: str):
        import torch

        from models.zoo import load_pair

        self.params = CompressArchiveParams(**params)
        self.run_id = run_id
        use_gpu = (self.params.gpus_per_worker or 0) > 0 and torch.cuda.is_available()
        if not use_gpu:
            torch.set_num_threads(max(1, int(round(self.params.cpus_per_worker))))
        device = "cuda" if use_gpu else "cpu"
        self.fidelity = self.params.fidelity_spec()
        if self.fidelity is not None:  # every pair the fidelity may pick, loaded once
            self.pairs = {m: load_pair(m, device, registry=self.params.registry) for m in self.fidelity.models}
            self.options = self.params.codec_options(2)
        else:
            self.pair = load_pair(self.params.single_model, device, registry=self.params.registry)
            self.options = self.params.codec_options(self.pair.scale)
        self.src_fs, _ = self.params.fs(self.params.source)
        self.dst_fs, self.dest_root = self.params.fs(self.params.dest)
        self.dest_prefix = protocol_prefix(self.dst_fs)

    def ready(self) -> str:
        """The id of the node this actor runs on (the run stats list them)."""
        return ray.get_runtime_context().get_node_id()

    def process(self, items: list[dict], attempt: int) -> list[dict]:
        return [self._one(ObjectInfo(**item), attempt) for item in items]

    def _compress(self, data: bytes):
        """(small file, enhancement layer or None, record)."""
        from pipeline.codec import compress_image
        from pipeline.fidelity import compress_to_target

        if self.fidelity is not None:
            return compress_to_target(data, self.pairs, self.fidelity, self.options)
        small, record = compress_image(data, self.pair, self.options)
        return small, None, record

    def _one(self, obj: ObjectInfo, attempt: int) -> dict:
        from pipeline.enhancement import layer_name
        from pipeline.small_file import SUFFIX

        row = {
            "run_id": self.run_id, "source_key": obj.key, "source_uri": obj.uri, "source_etag": obj.etag,
            "source_size": obj.size, "pipeline_version": PIPELINE_VERSION, "attempts": attempt,
            **self.params.fidelity_columns(),
        }
        try:
            data = _with_retries(lambda: self.src_fs.cat_file(_strip(obj.uri)), "read")
        except Exception as exc:
            return _finish(row, status="failed_read", error_message=f"{type(exc).__name__}: {exc}")
        small, layer, record = self._compress(data)
        row.update(record.model_dump(include=_RECORD_FIELDS))
        if small is None:
            return _finish(row)
        try:
            out_path = safe_join(self.dest_root, obj.key + SUFFIX[record.output_format])
        except UnsafeKeyError as exc:
            return _finish(row, status="skipped_unsafe_key", error_message=str(exc))
        try:
            # the layer first: a small file that names a layer is never visible without it
            files = ([(layer_name(out_path), layer)] if layer is not None else []) + [(out_path, small)]
            for path, blob in files:
                self._write(path, blob)
        except Exception as exc:
            return _finish(row, status="failed_write", error_message=f"{type(exc).__name__}: {exc}")
        return _finish(row, output_uri=self.dest_prefix + out_path,
                       enhancement_uri=self.dest_prefix + layer_name(out_path) if layer is not None else None)

    def _write(self, path: str, blob: bytes) -> None:
        _with_retries(lambda: atomic_write(self.dst_fs, path, blob), "write")
        written = self.dst_fs.info(path)["size"]
        if written != len(blob):
            raise OSError(f"wrote {written} of {len(blob)} bytes")


_RECORD_FIELDS = {
    "source_sha256", "source_format", "source_mode", "bit_depth", "n_frames", "exif_orientation", "icc_present",
    "width", "height", "status", "error_message", "output_format", "small_quality", "output_size", "output_sha256",
    "out_width", "out_height", "scale", "model_id", "model_sha256", "roundtrip_psnr", "notes",
    "fidelity", "target_psnr", "psnr_y", "psnr_rgb", "thumbnail_psnr", "enhancement_format", "enhancement_quality",
    "enhancement_size", "enhancement_sha256",
}


def _strip(uri: str) -> str:
    return uri.split("://", 1)[1] if "://" in uri else uri


def _finish(row: dict, **update) -> dict:
    row.update(update)
    if row.get("status") != "ok":
        row["output_uri"] = row["enhancement_uri"] = None
    row["processed_at"] = datetime.now(timezone.utc)
    return row


def _batches(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def compress_crash_row(params: CompressArchiveParams, run_id: str):
    """The row of an object whose batch crashed its actor on every attempt."""

    def row(item: dict, attempt: int, exc: Exception) -> dict:
        return _finish({
            "run_id": run_id, "source_key": item["key"], "source_uri": item["uri"], "source_etag": item["etag"],
            "source_size": item["size"], "attempts": attempt, "pipeline_version": PIPELINE_VERSION,
            "model_id": params.model_id, **params.fidelity_columns(),
        }, status="failed_worker_crash", error_message=f"{type(exc).__name__} on {attempt} attempts")

    return row


def gpus_per_actor(requested: float | None, workers: int) -> float:
    """GPUs each actor asks Ray for: `requested` if given, else automatic: a share of the cluster's
    GPUs (at most one per actor) when it has any, the CPU otherwise."""
    if requested is not None:
        return requested
    total = ray.cluster_resources().get("GPU", 0.0)
    return min(1.0, total / workers) if total > 0 else 0.0


def run_compress_pool(
    params: CompressArchiveParams, run_id: str, objects: Iterable[ObjectInfo], on_row: Callable[[dict], None]
) -> dict:
    gpus = gpus_per_actor(params.gpus_per_worker, params.workers)
    params = params.model_copy(update={"gpus_per_worker": gpus})
    counters = run_actor_pool(
        CompressWorker, (params.model_dump(), run_id), (o.__dict__ for o in objects), on_row,
        workers=params.workers, cpus=params.cpus_per_worker, gpus=gpus,
        batch_size=params.batch_size, max_attempts=params.max_attempts, name=f"taid-compress-{run_id}",
        crash_row=compress_crash_row(params, run_id), resources=params.actor_resources,
    )
    return {**counters, "gpus_per_worker": gpus}


def run_actor_pool(
    worker_cls: type,
    init_args: tuple,
    items: Iterable[dict],
    on_row: Callable[[dict], None],
    *,
    workers: int,
    cpus: float,
    gpus: float | None,
    batch_size: int,
    max_attempts: int,
    name: str,
    crash_row: Callable[[dict, int, Exception], dict],
    depth: int = 2,
    resources: dict[str, float] | None = None,
) -> dict:
    """Process `items` on `workers` actors of `worker_cls` (whose `process(batch, attempt)` returns
    one row per item); calls on_row for every row, in completion order.

    Each actor has up to `depth` batches queued (so it never waits for the driver), which bounds
    what is in flight to workers * depth batches; `items` is consumed lazily. A crashed actor is
    replaced once; the batch it died on costs an attempt and is re-run one item per call with
    nothing queued behind it, the batches queued behind it are re-run unchanged, so a poison object
    that kills its actor every time fails alone, as `crash_row`, after `max_attempts`, and nothing
    else is lost. Actors are
    killed at the end, also when the driver fails. `resources`: custom Ray resources each actor
    asks for (e.g. {"taid_model": 1}: only nodes started with that resource run the model).
    The counters list the ids of the nodes the actors ran on (`actor_nodes`)."""
    actor_cls = ray.remote(worker_cls)
    gpus = gpus_per_actor(gpus, workers)

    def start(i: int):
        # named, so operators (and the crash test) can find a run's actors; restarts are ours
        return actor_cls.options(
            name=f"{name}-{i}-{time.monotonic_ns()}", num_cpus=cpus, num_gpus=gpus, resources=resources or None,
            max_restarts=0, max_task_retries=0,
        ).remote(*init_args)

    actors = [start(i) for i in range(workers)]
    generation = [0] * workers  # bumped on each restart
    load = [0] * workers  # batches queued on the current actor of each slot
    in_flight: dict = {}  # ref -> (slot, generation, submission number, batch, attempt)
    requeued: list[tuple[list[dict], int]] = []  # batches that were only queued behind a crash
    retry_alone: list[tuple[list[dict], int]] = []  # retries: one item, alone on its actor
    alone = [False] * workers  # the slot runs a retry: nothing else is queued behind it
    counters = {"actor_restarts": 0, "batches": 0}
    submitted = 0

    def deliver(rows: list[dict]) -> None:
        counters["batches"] += 1
        for row in rows:
            on_row(row)

    def submit(slot: int, batch: list[dict], attempt: int) -> None:
        nonlocal submitted
        ref = actors[slot].process.remote(batch, attempt)
        in_flight[ref] = (slot, generation[slot], submitted, batch, attempt)
        submitted += 1
        load[slot] += 1

    try:
        counters["actor_nodes"] = sorted(set(ray.get([a.ready.remote() for a in actors])))
        pending = _batches(items, batch_size)
        exhausted = False
        while True:
            for slot in sorted(range(workers), key=lambda i: load[i]):
                if load[slot] == 0 and retry_alone:
                    # A retry runs with nothing queued behind it, so if its actor dies the blame is
                    # certain (a call that finished just before a crash can lose its reply and look
                    # failed: with two calls queued, the wrong one may be blamed)
                    submit(slot, *retry_alone.pop(0))
                    alone[slot] = True
                    continue
                while load[slot] < depth and not alone[slot] and (requeued or not exhausted):
                    if requeued:
                        submit(slot, *requeued.pop(0))
                        continue
                    batch = next(pending, None)
                    if batch is None:
                        exhausted = True
                        break
                    submit(slot, batch, 1)
            if not in_flight:
                break
            ref = ray.wait(list(in_flight), num_returns=1)[0][0]
            slot, gen, seq, batch, attempt = in_flight.pop(ref)
            try:
                rows = ray.get(ref)
            except (RayActorError, WorkerCrashedError) as exc:
                # The actor is gone. Its other calls finished before it died or never ran: collect
                # them now. An actor runs its calls in submission order, so the oldest failed call is
                # (almost always, see above) the one it died on: only that one uses up an attempt and
                # is retried item by item, alone, so a poison object ends up failing by itself; the
                # calls queued behind it are re-run as they were.
                failed = [(seq, batch, attempt)]
                for other in [r for r, v in in_flight.items() if v[0] == slot and v[1] == gen]:
                    _, _, o_seq, o_batch, o_attempt = in_flight.pop(other)
                    try:
                        deliver(ray.get(other))
                    except (RayActorError, WorkerCrashedError):
                        failed.append((o_seq, o_batch, o_attempt))
                if gen == generation[slot]:
                    counters["actor_restarts"] += 1
                    ray.kill(actors[slot])
                    actors[slot] = start(slot)
                    generation[slot] += 1
                    load[slot] = 0
                    alone[slot] = False
                failed.sort(key=lambda f: f[0])
                _, culprit, tries = failed[0]
                if tries < max_attempts:
                    retry_alone.extend(([item], tries + 1) for item in culprit)
                else:
                    for item in culprit:
                        on_row(crash_row(item, tries, exc))
                for _, b, t in failed[1:]:
                    (retry_alone if t > 1 else requeued).append((b, t))
                continue
            if gen == generation[slot]:
                load[slot] -= 1
                alone[slot] = False
            deliver(rows)
    finally:
        for a in actors:
            ray.kill(a)
    return counters
