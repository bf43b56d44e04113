"""How much of the compute a run held did work: held core-seconds, busy CPU-seconds, their ratio, and
where the idle time went. Pure arithmetic over wall clocks (no Ray, no codec internals):

    clock = RunClock(started=command_start)          # marks phases as the run goes
    clock.mark("models"); clock.mark("planning"); ...
    report = utilization(clock, lanes, intervals, busy_cpu_s, end)

A *lane* is what the run holds: `cores` CPUs from `start` to `end` (a local machine: all its cores
for the whole command; a cluster: each actor's reserved CPUs for its life). An *interval* is one batch
on one lane: its wall start and end and the seconds it waited on storage. Busy CPU-seconds are the
rows' stage CPU-seconds (`cpu_s.total`), so the ratio is what the cost report's busy number covers.

The idle core-seconds (held - busy) are split by what the held cores were waiting for:
- `startup`: before the first batch could run: the process, loading/verifying models on the driver,
  starting Ray, starting the actors and loading their models;
- `planning`: listing and planning before the first object was handed out;
- `driver`: a lane with no batch while others still had work (waiting on the driver);
- `storage`: inside batches, reading sources and writing files;
- `tail`: a lane that had finished its last batch while another still worked;
- `finish`: after the last batch: the manifest, the run stats;
- `in_work`: the rest, inside batches (stages that use fewer threads than the cores they hold,
  overheads, contention with other processes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

PHASES = ("process", "models", "planning", "ray", "actors")  # before work, in order; `planning` is its own category


@dataclass
class RunClock:
    """Wall-clock marks of one run: `mark(phase)` closes the phase that ran since the previous mark."""

    started: float = field(default_factory=time.time)  # the command's start where known, else the run's
    windows: list[tuple[str, float, float]] = field(default_factory=list)  # (phase, start, end)
    last: float = 0.0

    def __post_init__(self) -> None:
        self.last = self.started

    def mark(self, phase: str, now: float | None = None) -> float:
        """Close `phase`: it ran from the previous mark until `now`."""
        now = time.time() if now is None else now
        self.windows.append((phase, self.last, max(now, self.last)))
        self.last = max(now, self.last)
        return now

    @property
    def marks(self) -> dict[str, float]:
        """Seconds per phase."""
        out: dict[str, float] = {}
        for phase, a, b in self.windows:
            out[phase] = out.get(phase, 0.0) + b - a
        return out

    def overlap(self, phase: str, start: float, end: float) -> float:
        return sum(max(min(b, end) - max(a, start), 0.0) for p, a, b in self.windows if p == phase)


@dataclass(frozen=True)
class Lane:
    cores: float
    start: float
    end: float


@dataclass(frozen=True)
class Interval:
    lane: int
    start: float
    end: float
    storage_s: float = 0.0


def _bins(intervals: list[Interval], busy_cpu_s: float, start: float, end: float, n: int = 120) -> dict:
    """Busy cores over time: each batch's share of the busy CPU-seconds spread over its wall time,
    in `n` bins from `start` (what the benchmark plots)."""
    span = max(end - start, 1e-9)
    width = span / n
    wall = sum(max(i.end - i.start, 0.0) for i in intervals) or 1.0
    scale = busy_cpu_s / wall  # busy cores per running batch, on average
    cores = [0.0] * n
    for i in intervals:
        a, b = max(i.start, start), min(i.end, end)
        k = int((a - start) // width)
        while a < b and k < n:
            edge = min(b, start + (k + 1) * width)
            cores[k] += (edge - a) * scale / width
            a, k = edge, k + 1
    return {"bin_s": width, "busy_cores": [round(c, 3) for c in cores]}


def utilization(clock: RunClock, lanes: list[Lane], intervals: list[Interval], busy_cpu_s: float, end: float,
                basis: str, bins: int = 120) -> dict:
    """The utilisation block of a run's stats (docs/costs.md#held-and-busy)."""
    held = sum(lane.cores * max(lane.end - lane.start, 0.0) for lane in lanes)
    cores = sum(lane.cores for lane in lanes)
    idle = {k: 0.0 for k in ("startup", "planning", "driver", "storage", "tail", "finish", "in_work")}
    work_end = max((i.end for i in intervals), default=end)
    by_lane: dict[int, list[Interval]] = {}
    for i in intervals:
        by_lane.setdefault(i.lane, []).append(i)
    first_start = min((i.start for i in intervals), default=end)
    in_batches = 0.0
    for n, lane in enumerate(lanes):
        own = sorted(by_lane.get(n, []), key=lambda i: i.start)
        first = own[0].start if own else work_end
        before = max(min(first, lane.end) - lane.start, 0.0)  # nothing ran on it yet
        if own:
            planning = min(clock.overlap("planning", lane.start, first), before)
            idle["planning"] += lane.cores * planning
            idle["startup"] += lane.cores * (before - planning)
            covered, cursor = 0.0, first
            for i in own:  # union of its batches (a lane runs one at a time; overlaps are clipped)
                a = max(i.start, cursor)
                covered += max(i.end - a, 0.0)
                cursor = max(cursor, i.end)
                idle["storage"] += lane.cores * min(i.storage_s, max(i.end - i.start, 0.0))
            last = max(i.end for i in own)
            in_batches += lane.cores * covered
            idle["driver"] += lane.cores * max(last - first - covered, 0.0)
            idle["tail"] += lane.cores * max(min(work_end, lane.end) - last, 0.0)
            idle["finish"] += lane.cores * max(lane.end - max(work_end, lane.start), 0.0)
        else:  # held, never used: start-up until the work ended (a lane with no batch), then finish
            idle["startup"] += lane.cores * max(min(work_end, lane.end) - lane.start, 0.0)
            idle["finish"] += lane.cores * max(lane.end - max(work_end, lane.start), 0.0)
    idle["in_work"] = max(in_batches - idle["storage"] - busy_cpu_s, 0.0)
    # actors that use more cores than they reserved (a 0.5-CPU actor runs one thread): the busy
    # CPU-s beyond the reserved time in batches; the categories then add up to total + this
    beyond = max(busy_cpu_s - (in_batches - idle["storage"]), 0.0)
    total_idle = max(held - busy_cpu_s, 0.0)
    return {
        "basis": basis, "cores": cores, "wall_s": max(end - clock.started, 0.0),
        "held_core_s": held, "busy_cpu_s": busy_cpu_s, "utilization": busy_cpu_s / held if held else None,
        "idle_core_s": {**{k: round(v, 3) for k, v in idle.items()}, "total": round(total_idle, 3)},
        "busy_beyond_reserved_cpu_s": round(beyond, 3),
        "phases_s": {k: round(v, 3) for k, v in clock.marks.items()},
        "first_batch_s": round(first_start - clock.started, 3) if intervals else None,
        "timeline": _bins(intervals, busy_cpu_s, clock.started, end, bins),
    }


def gpu_utilization(model_actors: list[dict], share: float) -> dict | None:
    """Staged runs: the GPU-seconds the model actors held against those they computed."""
    cuda = [a for a in model_actors if str(a.get("device", "")).startswith("cuda")]
    if not cuda:
        return None
    held = sum(a.get("alive_s", 0.0) * share for a in cuda)
    busy = sum(a.get("busy_s", 0.0) * share for a in cuda)
    return {"held_gpu_s": held, "busy_gpu_s": busy, "utilization": busy / held if held else None}


def process_started() -> float:
    """When this process started (the command's start, for the CLI): Linux's /proc, else now."""
    import os

    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def run_utilization(clock: RunClock, timing: dict | None, busy_cpu_s: float, end: float, machine: bool,
                    model_actors: list[dict] | None = None, gpu_share: float = 1.0) -> dict:
    """The run's utilisation from the pool's `_timing` (pipeline.runtime.stages.dispatch). `machine`:
    the run holds this whole machine (a local Ray it started, or in-process): every core for the
    whole command, shared by the pool's slots; else it holds the actors' reserved CPUs for their
    lives (a cluster). No pool (nothing to do): the driver's one core."""
    import os

    intervals = [Interval(*i) for i in (timing or {}).get("intervals", [])]
    pool_lanes = (timing or {}).get("lanes", [])
    ready = (timing or {}).get("ready_at", [])
    if ready:
        clock.mark("actors", max(ready))
    if intervals:
        clock.mark("work", max(i.end for i in intervals))
    clock.mark("finish", end)
    if not pool_lanes:
        lanes, basis = [Lane(1.0, clock.started, end)], "driver"
    elif machine:
        cores = float(os.cpu_count() or 1)
        lanes = [Lane(cores / len(pool_lanes), clock.started, end) for _ in pool_lanes]
        basis = "machine"
    else:
        lanes, basis = [Lane(*lane) for lane in pool_lanes], "actors"
        if (timing or {}).get("driver_lane"):  # the driver worked while the actors started: its core, meanwhile
            lanes.append(Lane(*timing["driver_lane"]))
    out = utilization(clock, lanes, intervals, busy_cpu_s, end, basis)
    gpu = gpu_utilization(model_actors or [], gpu_share)
    if gpu:
        out["gpu"] = gpu
    return out
