"""The manifest index: compaction keeps every latest state (also across a crash), and the shared
reader (index + unfolded runs) answers like a full scan of the manifest."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.manifest import index as mi
from pipeline.manifest.parts import ManifestWriter, read_manifest
from pipeline.manifest.index import latest_states
from pipeline.storage.fs import filesystem
from pipeline.storage.keys import protocol_prefix
from tests import ROOT, archive_root

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STATUSES = ["ok", "ok", "ok", "failed_decode", "skipped_empty"]


def write_runs(root: str, runs: int, keys: int, per_run: int, seed: int = 0, first_run: int = 0, rows_per_part=700):
    """`runs` runs of `per_run` rows over a pool of `keys` keys (repeats across runs, mixed
    statuses, some equal timestamps), through the real ManifestWriter."""
    rng = random.Random(seed)
    fs, root = filesystem(root)
    for r in range(first_run, first_run + runs):
        w = ManifestWriter(fs, root, f"run{r:03d}", rows_per_part=rows_per_part)
        for k in rng.sample(range(keys), per_run):
            status = rng.choice(STATUSES)
            w.add({"run_id": f"run{r:03d}", "source_key": f"k/{k:06d}.jpg", "source_etag": f"e{r}-{k}",
                   "source_size": k, "status": status, "model_id": "taid-x2",
                   "output_uri": f"{protocol_prefix(fs)}{root}/k/{k:06d}.jpg.png" if status == "ok" else None,
                   "processed_at": T0 + timedelta(hours=r, seconds=rng.choice([0, 1])), "attempts": 1})
        w.close()


def brute_force(root: str) -> tuple[dict, dict]:
    """(latest row per key, latest ok row per key) from a full read of every run partition."""
    fs, root = filesystem(root)
    latest, latest_ok = {}, {}
    for row in read_manifest(fs, root).to_pylist():
        rank = (row["processed_at"], row["run_id"])
        k = row["source_key"]
        if k not in latest or rank > (latest[k]["processed_at"], latest[k]["run_id"]):
            latest[k] = row
        if row["status"] == "ok" and (k not in latest_ok or rank > (latest_ok[k]["processed_at"], latest_ok[k]["run_id"])):
            latest_ok[k] = row
    return latest, latest_ok


def reader_state(root: str, ok_only: bool = False) -> dict:
    reader = mi.ManifestReader(root)
    out = {}
    for t in reader.latest(ok_only=ok_only):
        for row in t.to_pylist():
            assert row["source_key"] not in out
            out[row["source_key"]] = row
    return out


def check_reader(root: str) -> None:
    latest, latest_ok = brute_force(root)
    assert reader_state(root) == latest
    assert reader_state(root, ok_only=True) == latest_ok
    reader = mi.ManifestReader(root)
    for k in random.Random(1).sample(sorted(latest), 40) + ["k/missing.jpg"]:
        assert reader.lookup(k) == latest_ok.get(k)
        assert reader.lookup(k, ok_only=False) == latest.get(k)
    states = latest_states(*filesystem(root))
    assert {k: (s.etag, s.status) for k, s in states.items()} == {
        k: (r["source_etag"], r["status"]) for k, r in latest.items()}


def test_compaction_keeps_every_latest_state_and_is_idempotent(tmp_path):
    root = str(tmp_path / "archive")
    write_runs(root, runs=4, keys=3000, per_run=1500)
    fs, _ = filesystem(root)
    rows_before = read_manifest(fs, root).num_rows
    check_reader(root)  # no index yet: every part is "unfolded"

    first = mi.compact(fs, root, file_rows=900, row_group=128)
    assert first["compacted"] and len(first["files"]) > 1 and first["folded_parts"] == 4 * 3
    assert read_manifest(fs, root).num_rows == rows_before  # run partitions untouched
    latest, latest_ok = brute_force(root)
    assert first["keys"] == len(latest)
    assert len(latest) <= first["rows"] <= len(latest) + len(latest_ok)
    snap = mi.snapshot(fs, root)
    assert snap.delta == [] and snap.version == first["version"]
    check_reader(root)

    again = mi.compact(fs, root, file_rows=900, row_group=128)
    assert not again["compacted"] and again["version"] == first["version"]

    write_runs(root, runs=2, keys=3500, per_run=800, seed=7, first_run=4)  # newer than the index
    assert len(mi.snapshot(fs, root).delta) == 4
    check_reader(root)  # index + delta
    second = mi.compact(fs, root, file_rows=900, row_group=128)
    assert second["compacted"] and second["previous"] == first["version"]
    check_reader(root)
    third = mi.compact(fs, root)  # nothing new, default sizes: no-op
    assert not third["compacted"]
    assert sorted(p.name for p in (tmp_path / "archive" / "_index").iterdir()) == sorted(
        ["CURRENT.json", f"v-{first['version']}", f"v-{second['version']}"])


def test_many_parts_are_merged_in_rounds(tmp_path, monkeypatch):
    monkeypatch.setattr(mi, "FAN_IN", 4)  # 30 parts: two rounds through temporary files
    root = str(tmp_path / "archive")
    write_runs(root, runs=3, keys=2000, per_run=1000, rows_per_part=100)
    fs, _ = filesystem(root)
    result = mi.compact(fs, root, file_rows=500, row_group=64)
    assert result["folded_parts"] == 30
    assert not any(p.name.startswith("tmp-") for p in (tmp_path / "archive" / "_index").iterdir())
    check_reader(root)


def test_a_crash_mid_compaction_loses_nothing(tmp_path):
    root = str(tmp_path / "archive")
    write_runs(root, runs=2, keys=20000, per_run=10000, rows_per_part=5000)
    fs, _ = filesystem(root)
    before = mi.compact(fs, root)
    write_runs(root, runs=3, keys=30000, per_run=15000, seed=3, first_run=2, rows_per_part=5000)
    latest, latest_ok = brute_force(root)
    rows = read_manifest(fs, root).num_rows

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.manifest.index", root, "--file-rows", "300",
                             "--row-group", "100"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    index = tmp_path / "archive" / "_index"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        new = [d for d in index.glob("v-*") if d.name != f"v-{before['version']}"]
        if new and any(new[0].glob("part-0000[3-9].parquet")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "compaction ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    pointer = json.loads((index / "CURRENT.json").read_text())
    assert pointer["version"] == before["version"]  # readers still see the old, whole index
    assert read_manifest(fs, root).num_rows == rows
    assert reader_state(root) == latest and reader_state(root, ok_only=True) == latest_ok
    after = mi.compact(fs, root)  # the next compaction finishes the job
    assert after["compacted"] and after["keys"] == len(latest)
    killed = [d.name for d in index.iterdir() if d.name.startswith("inflight-")]
    assert len(killed) == 1  # the killed compaction's marker: its folder is kept until the marker expires
    removed = mi.collect(fs, root, now=time.time() + mi.INFLIGHT_TTL_S + 1)
    assert removed["markers"] == killed and removed["index"] == [f"v-{killed[0][9:-5]}"]
    assert sorted(d.name for d in index.iterdir()) == sorted(
        ["CURRENT.json", f"v-{before['version']}", f"v-{after['version']}"])
    assert reader_state(root) == latest


@pytest.mark.parametrize("layout", ["local", pytest.param("s3", marks=pytest.mark.services)])
def test_reader_on_s3_and_local_finds_rows_of_runs_newer_than_the_index(layout, tmp_path, request):
    root = archive_root(layout, tmp_path, request)
    write_runs(root, runs=2, keys=500, per_run=300)
    fs, path = filesystem(root)
    mi.compact(fs, path, file_rows=200, row_group=50)
    write_runs(root, runs=1, keys=600, per_run=100, seed=5, first_run=2)  # not compacted
    check_reader(root)


def test_a_stream_that_breaks_mid_index_continues_from_the_run_partitions(tmp_path, caplog):
    root = str(tmp_path / "archive")
    write_runs(root, runs=2, keys=3000, per_run=1500)
    fs, _ = filesystem(root)
    result = mi.compact(fs, root, file_rows=900, row_group=128)
    second = tmp_path / "archive" / "_index" / result["files"][1]["path"]
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a data page in the middle of the second file: its checksum fails
    second.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="pipeline.manifest.index"):
        check_reader(root)  # streams (the first file, then the partitions after its last key) and lookups
    assert "reading the run partitions directly" in caplog.text
    assert "corrupt" in mi.compact(fs, root, repair=True)["rebuilt"]
    check_reader(root)


def test_a_reader_reads_each_unfolded_part_once_and_sees_new_ones(tmp_path, monkeypatch):
    """Lookups keep the unfolded parts they read (parts never change): a server's lookups cost no
    GET per part and request, a new run's parts are still seen, folded ones are let go."""
    root = str(tmp_path / "archive")
    write_runs(root, runs=2, keys=400, per_run=300, rows_per_part=100)
    fs, _ = filesystem(root)
    reads = []
    real = mi.read_table
    monkeypatch.setattr(mi, "read_table", lambda fs, path, *a, **k: reads.append(path) or real(fs, path, *a, **k))
    reader = mi.ManifestReader(root, fs=fs, root=root)
    latest, _ = brute_force(root)
    keys = sorted(latest)[:50]
    assert all(reader.lookup(k, ok_only=False)["run_id"] == latest[k]["run_id"] for k in keys)
    delta = mi.snapshot(fs, root).delta
    assert sorted(reads) == sorted(delta)  # 50 lookups, each part read once
    write_runs(root, runs=1, keys=400, per_run=300, seed=5, first_run=2, rows_per_part=100)
    latest, _ = brute_force(root)
    assert all(reader.lookup(k, ok_only=False)["run_id"] == latest[k]["run_id"] for k in keys)  # the new run's rows
    assert len(reads) == len(mi.snapshot(fs, root).delta)  # only the new parts were read
    mi.compact(fs, root)
    assert reader.lookup(keys[0], ok_only=False)["run_id"] == latest[keys[0]]["run_id"] and not reader._parts
