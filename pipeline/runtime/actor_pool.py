"""The one actor pool of compress and rehydrate jobs: stateful Ray actors that load a model once,
fed with a bounded window of batches, surviving actor crashes.

    pool = ActorPool(CompressWorker, (params, run_id), PoolOptions(workers=2, ...), crash_row=rows.crash)
    counters = pool.run(items, on_row)

Worker protocol (`PoolWorker` implements the plumbing; a worker only writes `handle`):
    ready(log_level) -> node id      called once after start: the actor is up, logs at that level
    process(batch, attempt) -> Reply one row per item, plus the log records the batch emitted

Guarantees: memory stays bounded (items are pulled lazily; at most workers * depth batches in
flight); a crashed actor is replaced; the batch it died on costs an attempt and is re-run one
item per call with nothing queued behind it, so a poison object that kills its actor every time
fails alone (`crash_row`) after `max_attempts` and nothing else is lost; actors are killed at the
end, also when the driver fails. Worker log records are re-emitted on the driver through the
same logger names, so they reach the CLI's stderr and Prefect's run logs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError, WorkerCrashedError

from pipeline.settings import LOGGERS

log = logging.getLogger(__name__)


def ensure_ray(address: str = "") -> bool:
    """Connect to `address`, else to the TAID_RAY_ADDRESS setting (set it in a Prefect worker's
    environment to send every flow run to a cluster), else start a fresh local Ray ("local" never
    joins a stale one). Worker output is not streamed to the driver: workers' log records come
    back with their rows instead (see `PoolWorker`), so they also reach Prefect's run logs.
    True when this call started a local Ray (the run then holds this machine)."""
    if not ray.is_initialized():
        from pipeline.settings import get_settings

        target = address or get_settings().ray_address or "local"
        if target == "local":
            log.info("starting Ray")
        else:
            log.info("connecting to Ray at %s", target)
        ray.init(address=target, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        return target == "local"
    return False


def gpus_per_actor(requested: float | None, workers: int) -> float:
    """GPUs each actor asks Ray for: `requested` if given, else automatic: a share of the cluster's
    GPUs (at most one per actor) when it has any, the CPU otherwise."""
    if requested is not None:
        return requested
    total = ray.cluster_resources().get("GPU", 0.0)
    return min(1.0, total / workers) if total > 0 else 0.0


def torch_device(gpus: float, cpus: float) -> str:
    """The device an actor computes on: the GPU Ray gave it when it reserved one (and CUDA is
    there), else the CPU with as many threads as CPUs it reserved."""
    import torch

    if gpus > 0 and torch.cuda.is_available():
        return "cuda"
    torch.set_num_threads(max(1, int(round(cpus))))
    return "cpu"


@dataclass
class Reply:
    """What one `process` call returns: the rows, the log records (level, logger, message) and the
    S3 counts (throttled answers...) of the batch, counted in the actor where they happened."""

    rows: list
    logs: list[tuple[int, str, str]] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)  # wall start / end of the batch, seconds waiting on storage, CPU-s


class _Collect(logging.Handler):
    def __init__(self, level: int):
        super().__init__(level)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.name, record.getMessage()))


class PoolWorker:
    """Base of an actor class run by `ActorPool`: subclasses implement `handle(item, attempt) -> row`."""

    log_level = logging.WARNING
    storage_s = 0.0  # wall seconds the batch being handled waited on storage (`on_storage`)

    @contextmanager
    def on_storage(self):
        """Time a read or write: the batch's reply says how long its held cores waited on storage."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.storage_s += time.perf_counter() - t

    def ready(self, log_level: int = logging.WARNING) -> str:
        """The id of the node this actor runs on (run stats list them); records at `log_level`
        and above emitted while handling a batch go back to the driver with its rows."""
        self.log_level = log_level
        for name in LOGGERS:  # ours at the driver's level; libraries stay at WARNING (the root's)
            logging.getLogger(name).setLevel(log_level)
        logging.captureWarnings(True)  # warnings.warn from libraries too
        return ray.get_runtime_context().get_node_id()

    def process(self, batch: list, attempt: int) -> Reply:
        from pipeline.storage import s3

        handler, root = _Collect(self.log_level), logging.getLogger()
        root.addHandler(handler)
        before = dict(s3.STATS)  # an actor runs one call at a time: the difference is this batch's
        start, cpu, self.storage_s = time.time(), time.process_time(), 0.0
        try:
            rows = [self.handle(item, attempt) for item in batch]
        finally:
            root.removeHandler(handler)
        timing = {"start": start, "end": time.time(), "storage_s": self.storage_s,
                  "process_cpu_s": time.process_time() - cpu}
        return Reply(rows, handler.records, s3.since(before), timing)

    def handle(self, item, attempt: int):
        raise NotImplementedError


@dataclass(frozen=True)
class PoolOptions:
    workers: int
    cpus: float
    gpus: float | None  # None: automatic (gpus_per_actor)
    batch_size: int
    max_attempts: int
    name: str  # actors are named <name>-<slot>-<ns>, so operators can find a run's actors
    depth: int = 2  # batches queued per actor: it never waits for the driver
    resources: dict[str, float] | None = None  # custom Ray resources per actor, e.g. {"taid_model": 1}
    batch_bytes: int | None = None  # a batch also ends when its items' `size` reaches this many bytes


def item_size(item) -> int:
    """An item's bytes where it says (a listed object's `size`), else 0."""
    return int(item.get("size") or 0) if isinstance(item, dict) else 0


def batches(items: Iterable, size: int, max_bytes: int | None = None) -> Iterator[list]:
    """Batches of at most `size` items, and of about `max_bytes` at most: an item of that size or
    more goes alone (a batch's work follows its bytes, not its count)."""
    batch: list = []
    held = 0
    for item in items:
        weight = item_size(item) if max_bytes else 0
        if batch and max_bytes and held + weight > max_bytes:
            yield batch
            batch, held = [], 0
        batch.append(item)
        held += weight
        if len(batch) == size or (max_bytes and held >= max_bytes):
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


class Shared:
    """One iterator taken from by several threads (the driver's lane and the pool), under a lock."""

    def __init__(self, items: Iterable):
        self.items, self.lock, self.taken = iter(items), threading.Lock(), 0

    def __iter__(self):
        return self

    def __next__(self):
        with self.lock:
            item = next(self.items)
            self.taken += 1
            return item


@dataclass
class _Call:
    slot: int
    generation: int
    seq: int  # submission number: an actor runs its calls in this order
    batch: list
    attempt: int
    bytes: int = 0


class ActorPool:
    """`run(items, on_row)` processes `items` on `options.workers` actors of `worker_cls`, calling
    `on_row` once per item in completion order (a crash row for a poison item)."""

    def __init__(self, worker_cls: type, init_args: tuple, options: PoolOptions,
                 crash_row: Callable[[object, int, Exception], object]):
        self.actor_cls = ray.remote(worker_cls)
        self.init_args, self.options, self.crash_row = init_args, options, crash_row
        self.gpus = gpus_per_actor(options.gpus, options.workers)
        self.counters: dict = {"actor_restarts": 0, "batches": 0}
        self.intervals: list[tuple[int, float, float, float]] = []  # (slot, start, end, storage_s) per batch
        self.lanes: list[tuple[float, float, float]] = []  # (cpus, start, end) per actor slot
        self.ready_at: list[float] = []

    # -- actors -------------------------------------------------------------------------------
    def _start(self, slot: int):
        o = self.options
        return self.actor_cls.options(
            name=f"{o.name}-{slot}-{time.monotonic_ns()}", num_cpus=o.cpus, num_gpus=self.gpus,
            resources=o.resources or None, max_restarts=0, max_task_retries=0,  # restarts are ours
        ).remote(*self.init_args)

    def _replace(self, slot: int) -> None:
        self.counters["actor_restarts"] += 1
        ray.kill(self.actors[slot])
        self.actors[slot] = self._start(slot)
        self.generation[slot] += 1
        self.load[slot] = 0
        self.bytes[slot] = 0
        self.alone[slot] = False

    # -- rows -----------------------------------------------------------------------------------
    def _deliver(self, reply, slot: int = -1) -> None:
        self.counters["batches"] += 1
        rows, logs = (reply.rows, reply.logs) if isinstance(reply, Reply) else (reply, [])
        if isinstance(reply, Reply) and reply.timing:
            t = reply.timing
            self.intervals.append((slot, t["start"], t["end"], t.get("storage_s", 0.0)))
            self.counters["process_cpu_s"] = self.counters.get("process_cpu_s", 0.0) + t.get("process_cpu_s", 0.0)
        if isinstance(reply, Reply) and reply.counts:
            from pipeline.storage import s3

            s3.add_counts(self.counters.setdefault("s3", {}), reply.counts)
        for level, name, message in logs:  # the worker's records, under their own logger names
            logging.getLogger(name).log(level, "[worker] %s", message)
        for row in rows:
            self.on_row(row)

    def _submit(self, slot: int, batch: list, attempt: int) -> None:
        ref = self.actors[slot].process.remote(batch, attempt)
        weight = sum(item_size(item) for item in batch)
        self.in_flight[ref] = _Call(slot, self.generation[slot], self.submitted, batch, attempt, weight)
        self.submitted += 1
        self.load[slot] += 1
        self.bytes[slot] += weight

    def _room(self, slot: int) -> bool:
        """May `slot` take another batch? Up to `depth` queued, but nothing behind a heavy batch (at
        least `batch_bytes` queued): the next one then goes to whichever actor frees up first, so
        the run's last large items do not wait behind each other while another actor idles."""
        o = self.options
        if self.load[slot] == 0:
            return True
        return self.load[slot] < o.depth and not (o.batch_bytes and self.bytes[slot] >= o.batch_bytes)

    def _fill(self) -> None:
        """Queue work on every actor up to `depth` batches: retries first, alone on an idle actor
        (if it dies, the blame is certain: with two calls queued, a call that finished just before
        the crash can lose its reply and look failed), then batches re-run after a crash, then new."""
        for slot in sorted(range(len(self.actors)), key=lambda i: self.load[i]):
            if self.load[slot] == 0 and self.retry_alone:
                self._submit(slot, *self.retry_alone.pop(0))
                self.alone[slot] = True
                continue
            while self._room(slot) and not self.alone[slot] and (self.requeued or not self.exhausted):
                if self.requeued:
                    self._submit(slot, *self.requeued.pop(0))
                    continue
                batch = next(self.pending, None)
                if batch is None:
                    self.exhausted = True
                    break
                self._submit(slot, batch, 1)

    def _crashed(self, call: _Call, exc: Exception) -> None:
        """The actor is gone. Its other calls finished before it died or never ran: collect them.
        An actor runs its calls in submission order, so the oldest failed call is (almost always,
        see `_fill`) the one it died on: only that one uses up an attempt and is retried item by
        item, alone, so a poison object ends up failing by itself; the calls queued behind it are
        re-run as they were."""
        failed = [call]
        for ref in [r for r, c in self.in_flight.items() if c.slot == call.slot and c.generation == call.generation]:
            other = self.in_flight.pop(ref)
            try:
                self._deliver(ray.get(ref), other.slot)
            except (RayActorError, WorkerCrashedError):
                failed.append(other)
        if call.generation == self.generation[call.slot]:
            self._replace(call.slot)
        failed.sort(key=lambda c: c.seq)
        culprit = failed[0]
        log.warning("actor %s died on a batch of %d (attempt %d): %s", call.slot, len(culprit.batch),
                    culprit.attempt, type(exc).__name__)
        if culprit.attempt < self.options.max_attempts:
            self.retry_alone.extend(([item], culprit.attempt + 1) for item in culprit.batch)
        else:
            for item in culprit.batch:
                self.on_row(self.crash_row(item, culprit.attempt, exc))
        for c in failed[1:]:
            (self.retry_alone if c.attempt > 1 else self.requeued).append((c.batch, c.attempt))

    def run(self, items: Iterable, on_row: Callable[[object], None], ready: Callable[[], None] | None = None) -> dict:
        """`ready`: called once every actor is up (its models loaded), before the first batch is sent."""
        o = self.options
        self.on_row = on_row
        started = time.time()
        self.actors = [self._start(i) for i in range(o.workers)]
        self.generation, self.load, self.alone = [0] * o.workers, [0] * o.workers, [False] * o.workers
        self.bytes = [0] * o.workers
        self.in_flight: dict = {}
        self.requeued: list[tuple[list, int]] = []  # batches that were only queued behind a crash
        self.retry_alone: list[tuple[list, int]] = []  # retries: one item, alone on its actor
        self.submitted, self.exhausted = 0, False
        self.pending = batches(items, o.batch_size, o.batch_bytes)
        level = logging.getLogger("pipeline").getEffectiveLevel()
        try:
            waiting = {a.ready.remote(level): i for i, a in enumerate(self.actors)}
            nodes, self.ready_at = set(), [0.0] * o.workers
            while waiting:
                done, _ = ray.wait(list(waiting), num_returns=1)
                nodes.add(ray.get(done[0]))
                self.ready_at[waiting.pop(done[0])] = time.time()
            self.counters["actor_nodes"] = sorted(nodes)
            if ready is not None:
                ready()
            while True:
                self._fill()
                if not self.in_flight:
                    break
                ref = ray.wait(list(self.in_flight), num_returns=1)[0][0]
                call = self.in_flight.pop(ref)
                try:
                    reply = ray.get(ref)
                except (RayActorError, WorkerCrashedError) as exc:
                    self._crashed(call, exc)
                    continue
                if call.generation == self.generation[call.slot]:
                    self.load[call.slot] -= 1
                    self.bytes[call.slot] -= call.bytes
                    self.alone[call.slot] = False
                self._deliver(reply, call.slot)
        finally:
            for a in self.actors:
                ray.kill(a)
            ended = time.time()
            self.lanes = [(o.cpus, started, ended) for _ in range(o.workers)]
        return {**self.counters, "gpus_per_worker": self.gpus}


class LocalPool:
    """The same workers in this process, one after another: for runs too small to pay for starting
    Ray (docs/costs.md#small-runs). Rows, counters and timings as `ActorPool.run` gives them; a
    worker's log records reach the driver's handlers directly; a crash of the process is the run's."""

    def __init__(self, worker_cls: type, init_args: tuple, options: PoolOptions,
                 crash_row: Callable[[object, int, Exception], object]):
        self.worker_cls, self.init_args, self.options, self.crash_row = worker_cls, init_args, options, crash_row
        self.counters: dict = {"actor_restarts": 0, "batches": 0, "actor_nodes": ["driver"], "in_process": True}
        self.intervals: list[tuple[int, float, float, float]] = []
        self.lanes: list[tuple[float, float, float]] = []
        self.ready_at: list[float] = []

    def run(self, items: Iterable, on_row: Callable[[object], None], ready: Callable[[], None] | None = None) -> dict:
        started = time.time()
        worker = self.worker_cls(*self.init_args)
        self.ready_at = [time.time()]
        if ready is not None:
            ready()
        try:
            for batch in batches(items, self.options.batch_size, self.options.batch_bytes):
                reply = worker.process(batch, 1)
                t = reply.timing
                self.intervals.append((0, t["start"], t["end"], t.get("storage_s", 0.0)))
                self.counters["batches"] += 1
                self.counters["process_cpu_s"] = self.counters.get("process_cpu_s", 0.0) + t["process_cpu_s"]
                for row in reply.rows:
                    on_row(row)
        finally:
            self.lanes = [(self.options.cpus, started, time.time())]
        return {**self.counters, "gpus_per_worker": 0.0}


class DriverLane:
    """A worker in a thread of the driver that takes items one at a time from a `Shared` stream
    while Ray and the actors start, and stops after its current item once `stop()` is called (the
    actors are ready): a local run's cores work from the first seconds instead of waiting for
    Ray's start-up. `on_row` must be safe to call from two threads (the job's is, under a lock)."""

    def __init__(self, worker_cls: type, init_args: tuple, items: Shared, on_row: Callable[[object], None]):
        self.worker_cls, self.init_args, self.items, self.on_row = worker_cls, init_args, items, on_row
        self.intervals: list[tuple[int, float, float, float]] = []
        self.process_cpu_s, self.items_done = 0.0, 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="taid-driver-lane", daemon=True)

    def start(self) -> "DriverLane":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> None:
        self._stop.set()
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            worker = None
            while not self._stop.is_set():
                if worker is None:
                    worker = self.worker_cls(*self.init_args)
                    if self._stop.is_set():
                        return
                try:
                    item = next(self.items)
                except StopIteration:
                    return
                reply = worker.process([item], 1)
                t = reply.timing
                self.intervals.append((len(self.intervals), t["start"], t["end"], t.get("storage_s", 0.0)))
                self.process_cpu_s += t["process_cpu_s"]
                self.items_done += 1
                for row in reply.rows:
                    self.on_row(row)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the driver by join()
            self.error = exc
