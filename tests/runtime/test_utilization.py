"""The utilisation arithmetic (pipeline/runtime/utilization.py) on a hand-computed run, and the pool's
batching by bytes and the plan's largest-first windows that keep held cores busy."""

from __future__ import annotations

import pytest

from pipeline.jobs.plan import largest_first
from pipeline.runtime.actor_pool import batches
from pipeline.runtime.utilization import Interval, Lane, RunClock, gpu_utilization, utilization
from pipeline.storage.keys import ObjectInfo


def _clock() -> RunClock:
    clock = RunClock(started=0.0)
    for phase, t in (("process", 1.0), ("models", 2.0), ("planning", 3.0), ("ray", 5.0)):
        clock.mark(phase, t)
    return clock


def test_idle_core_seconds_are_split_by_cause_and_add_up():
    # 2 lanes of 1 core held 0..20 s; lane 0 runs [6,12] and [12,18] (1 s of storage each), lane 1 [7,14]
    lanes = [Lane(1.0, 0.0, 20.0), Lane(1.0, 0.0, 20.0)]
    intervals = [Interval(0, 6.0, 12.0, 1.0), Interval(0, 12.0, 18.0, 1.0), Interval(1, 7.0, 14.0, 0.0)]
    u = utilization(_clock(), lanes, intervals, busy_cpu_s=15.0, end=20.0, basis="machine")
    assert (u["held_core_s"], u["busy_cpu_s"], u["cores"]) == (40.0, 15.0, 2.0)
    assert u["utilization"] == pytest.approx(15 / 40)
    idle = u["idle_core_s"]
    # before the first batch: 6 + 7 core-s, of which the planning phase [2,3] on each lane
    assert (idle["planning"], idle["startup"]) == (2.0, 11.0)
    assert idle["storage"] == 2.0
    assert idle["tail"] == 4.0  # lane 1 idle from 14 s while lane 0 worked until 18 s
    assert idle["finish"] == 4.0  # 18..20 s on both
    assert idle["driver"] == 0.0
    assert idle["in_work"] == 2.0  # 19 core-s in batches - 2 of storage - 15 busy
    assert sum(v for k, v in idle.items() if k != "total") == pytest.approx(idle["total"]) == 25.0
    assert u["first_batch_s"] == 6.0 and u["phases_s"]["ray"] == 2.0


def test_a_lane_waiting_between_batches_waits_on_the_driver():
    u = utilization(RunClock(started=0.0), [Lane(1.0, 0.0, 10.0)], [Interval(0, 0.0, 4.0), Interval(0, 6.0, 10.0)],
                    busy_cpu_s=8.0, end=10.0, basis="actors")
    assert u["idle_core_s"]["driver"] == 2.0 and u["idle_core_s"]["total"] == 2.0 and u["utilization"] == 0.8


def test_the_timeline_spreads_the_busy_cpu_seconds_over_the_batches():
    intervals = [Interval(0, 2.0, 6.0), Interval(1, 4.0, 8.0)]
    u = utilization(RunClock(started=0.0), [Lane(1.0, 0.0, 10.0)] * 2, intervals, 6.0, 10.0, "machine", bins=10)
    cores = u["timeline"]["busy_cores"]
    assert u["timeline"]["bin_s"] == 1.0 and len(cores) == 10
    assert sum(cores) * u["timeline"]["bin_s"] == pytest.approx(6.0)
    assert cores[0] == cores[1] == 0.0 and cores[4] == pytest.approx(2 * cores[2]) and cores[9] == 0.0


def test_gpus_busy_against_held():
    actors = [{"device": "cuda:0", "alive_s": 100.0, "busy_s": 60.0}, {"device": "cpu", "alive_s": 100.0, "busy_s": 1}]
    assert gpu_utilization(actors, 1.0) == {"held_gpu_s": 100.0, "busy_gpu_s": 60.0, "utilization": 0.6}
    assert gpu_utilization([actors[1]], 1.0) is None


def test_batches_end_at_a_byte_budget_and_a_large_item_goes_alone():
    items = [{"size": s} for s in (100, 100, 100, 5000, 100, 600, 600)]
    got = [[i["size"] for i in b] for b in batches(items, 3, max_bytes=1000)]
    assert got == [[100, 100, 100], [5000], [100, 600], [600]]
    assert [len(b) for b in batches(items, 2)] == [2, 2, 2, 1]  # by count only, as before


def test_each_window_is_handed_out_largest_first():
    objs = [ObjectInfo(key=f"k{i}", uri=f"u{i}", size=s, etag="e") for i, s in enumerate((1, 5, 3, 9, 2, 8))]
    assert [o.size for o in largest_first(iter(objs), 3)] == [5, 3, 1, 9, 8, 2]
    assert [o.size for o in largest_first(iter(objs), 0)] == [1, 5, 3, 9, 2, 8]


def test_a_cluster_run_holds_the_actors_and_the_driver_while_it_worked():
    from pipeline.runtime.utilization import run_utilization

    # two 1-CPU actors held 4..20 s; the driver worked 1..6 s on one image while they started
    timing = {"lanes": [(1.0, 4.0, 20.0), (1.0, 4.0, 20.0)], "ready_at": [6.0, 6.5],
              "intervals": [(0, 6.0, 20.0, 0.0), (1, 6.5, 18.0, 0.0), (2, 1.0, 6.0, 0.0)],
              "driver_lane": (1.0, 1.0, 6.0)}
    u = run_utilization(RunClock(started=0.0), timing, busy_cpu_s=30.0, end=20.0, machine=False)
    assert u["basis"] == "actors" and u["cores"] == 3.0
    assert u["held_core_s"] == 16 + 16 + 5  # the actors for their lives, the driver while it worked
    assert u["first_batch_s"] == 1.0  # the driver's image, before the actors were up
    assert u["idle_core_s"]["startup"] == 2.0 + 2.5 and u["idle_core_s"]["tail"] == 2.0
