"""compress-archive end to end on the real S3 server with a local Ray, through the job layer
(`pipeline.jobs.run_compress`; the Prefect flow around it: tests/flows/test_compress_archive_cli.py)."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.jobs import run_compress
from pipeline.jobs.common import new_run_id
from pipeline.jobs.params import CompressArchiveParams

BROKEN = {
    "broken/empty.png": b"",
    "broken/noise.jpg": bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)),
    "broken/notes.txt": b"not an image at all\n",
}


def image_bytes(seed: int, size: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    # smooth colour ramps + noise: a cheap stand-in for a photo
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([(x * 255 // size), (y * 255 // size), ((x + y) * 127 // size)], axis=2)
    img = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt)
    return buf.getvalue()


def fill_bucket(fs, prefix: str, count: int, size: int = 48) -> dict[str, bytes]:
    objects = {}
    for i in range(count):
        fmt = "JPEG" if i % 3 == 0 else "PNG"
        key = f"{'a' if i % 2 else 'b/c'}/img-{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        objects[key] = image_bytes(i, size + (i % 5) * 2, fmt)
    good = dict(objects)
    png = image_bytes(99, size)
    objects["broken/truncated.png"] = png[: len(png) // 2]
    objects.update(BROKEN)
    for key, data in objects.items():
        fs.pipe(f"{prefix}/{key}", data)
    return good


def manifest(fs, dest: str):
    from pipeline.manifest.parts import read_manifest

    return read_manifest(fs, dest).to_pylist()  # file paths resolved to URIs


def run(s3_bucket: str, **kw) -> dict:
    params = CompressArchiveParams(source=f"s3://{s3_bucket}/src", dest=f"s3://{s3_bucket}/dest", model_id="taid-x4", **kw)
    return dict(run_compress(params, run_id=kw.pop("run_id", None)))


def test_bucket_run_incremental_change_and_retry(s3, bucket, ray_local):
    fs = s3.filesystem()
    good = fill_bucket(fs, f"{bucket}/src", 46)
    n = len(good) + 4

    first = run(bucket)
    assert first["rows"] == n
    assert first["by_status"] == {"ok": 46, "failed_truncated": 1, "skipped_empty": 1, "skipped_not_image": 2}
    rows = manifest(fs, f"{bucket}/dest")
    assert len(rows) == n and {r["source_key"] for r in rows} == set(good) | {"broken/truncated.png", *BROKEN}
    for r in rows:
        if r["status"] == "ok":
            small = Image.open(io.BytesIO(fs.cat(r["output_uri"])))
            assert small.size == (r["out_width"], r["out_height"]) and r["output_size"] == len(fs.cat(r["output_uri"]))
            assert r["model_id"] == "taid-x4" and len(r["model_sha256"]) == 64 and r["scale"] == 4
        else:
            assert r["error_message"] and r["output_uri"] is None
    assert fs.exists(f"{bucket}/dest/_runs/{first['run_id']}.json")
    some_output = next(r["output_uri"] for r in rows if r["status"] == "ok")
    stamp = fs.info(some_output)["LastModified"]

    second = run(bucket)
    assert second["rows"] == 0 and second["plan"] == {"listed": n, "unchanged": 46, "failed_before": 1, "skipped_before": 3}
    assert len(manifest(fs, f"{bucket}/dest")) == n  # no duplicate rows
    assert fs.info(some_output)["LastModified"] == stamp  # no rewrite of finished objects

    changed = "a/img-001.png"
    fs.pipe(f"{bucket}/src/{changed}", image_bytes(1234, 40))
    third = run(bucket)
    assert third["rows"] == 1
    latest = [r for r in manifest(fs, f"{bucket}/dest") if r["run_id"] == third["run_id"]]
    assert [(r["source_key"], r["status"], r["width"]) for r in latest] == [(changed, "ok", 40)]

    fs.pipe(f"{bucket}/src/broken/truncated.png", image_bytes(99, 48))  # repaired, same key
    fourth = run(bucket, retry_failed=True)
    assert fourth["rows"] == 1 and fourth["plan"]["not_failed"] == n - 1
    assert [(r["source_key"], r["status"]) for r in manifest(fs, f"{bucket}/dest") if r["run_id"] == fourth["run_id"]] == [
        ("broken/truncated.png", "ok")]

    dry = run(bucket, dry_run=True, incremental=False)
    assert dry["dry_run"] and dry["to_process"] == n
    assert len(manifest(fs, f"{bucket}/dest")) == n + 1 + 1


def test_killed_actor_mid_run_loses_nothing(s3, bucket, ray_local):
    import ray

    fs = s3.filesystem()
    good = fill_bucket(fs, f"{bucket}/src", 24, size=160)
    run_id = new_run_id()
    killed = []

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = fs.glob(f"{bucket}/dest/_manifest/run={run_id}/*.parquet")
            fs.invalidate_cache()
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["name"].startswith(f"taid-compress-{run_id}")]
            if names and len(done) >= 3:
                ray.kill(ray.get_actor(names[0], namespace=next(
                    a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == names[0])))
                killed.append(names[0])
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = run(bucket, run_id=run_id, workers=2, batch_size=1, rows_per_part=1)
    thread.join(timeout=5)
    assert killed, "the run ended before an actor could be killed"
    assert result["dispatch"]["actor_restarts"] >= 1
    rows = manifest(fs, f"{bucket}/dest")
    keys = [r["source_key"] for r in rows]
    assert sorted(keys) == sorted(set(keys)) == sorted(set(good) | {"broken/truncated.png", *BROKEN})
    for r in rows:
        if r["source_key"] in good:
            assert r["status"] == "ok"
            Image.open(io.BytesIO(fs.cat(r["output_uri"]))).load()
    assert max(r["attempts"] for r in rows) >= 2  # the killed actor's batch ran again


def test_path_escape_key_is_refused(s3, bucket, ray_local):
    import botocore.session
    import fsspec
    from fsspec.implementations.memory import MemoryFile

    # SeaweedFS itself refuses keys with '.' / '..' segments at upload time ...
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.key, aws_secret_access_key=s3.secret, region_name="us-east-1")
    with pytest.raises(Exception, match="InvalidRequest"):
        client.put_object(Bucket=bucket, Key="src/sub/../../../escape.png", Body=b"x")
    # ... but other stores (AWS S3 among them) keep such keys verbatim: list one from a store that
    # does (fsspec's in-memory filesystem) and check the run refuses it before anything is written.
    mem = fsspec.filesystem("memory")
    key = f"/{bucket}/sub/../../../escape.png"
    mem.store[key] = MemoryFile(mem, key, image_bytes(6, 40))
    try:
        result = run_compress(CompressArchiveParams(source=f"memory://{bucket}", dest=f"s3://{bucket}/dest", model_id="taid-x4"))
    finally:
        mem.store.pop(key, None)
    rows = manifest(s3.filesystem(), f"{bucket}/dest")
    assert [(r["source_key"], r["status"]) for r in rows] == [("sub/../../../escape.png", "skipped_unsafe_key")]
    assert "refusing key" in rows[0]["error_message"]
    assert result["by_status"] == {"skipped_unsafe_key": 1}
    assert [p for p in s3.filesystem().find(bucket) if "escape" in p] == []
