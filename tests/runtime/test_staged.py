"""Staged runs on a real local Ray without a GPU: CPU workers send their tiles to a model actor
(pipeline/runtime/model_server.py). The archive is byte-identical to a single-stage run's, tiles from
different images share forward calls, and a model actor killed mid-run is restarted without
losing or failing an object."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import ray
from PIL import Image

from pipeline.jobs.params import CompressArchiveParams
from pipeline.jobs import run_compress, run_rehydrate
from pipeline.manifest.parts import read_manifest
from pipeline.runtime.model_server import ModelServer
from pipeline.jobs.params import RehydrateParams
from pipeline.storage.fs import filesystem


def photos(folder, n: int = 6, size: int = 96) -> None:
    """Same-size photo-like images: their tiles can share a batch."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size]
    for i in range(n):
        rng = np.random.default_rng(i)
        base = np.stack([x * 2 + i * 9, y * 2, (x + y) + i * 5], axis=2) % 256
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        (folder / f"p{i}.png").write_bytes(buf.getvalue())


def rows_of(dest: str) -> dict[str, dict]:
    fs, root = filesystem(dest)
    return {r["source_key"]: r for r in read_manifest(fs, root).to_pylist()}


def test_staged_archive_equals_single_stage_and_batches_tiles(tmp_path, ray_local):
    photos(tmp_path / "src")
    single = run_compress(CompressArchiveParams(source=str(tmp_path / "src"), dest=str(tmp_path / "single"),
                                                model_id="taid-x2", stages="single"))
    staged = run_compress(CompressArchiveParams(source=str(tmp_path / "src"), dest=str(tmp_path / "staged"),
                                                model_id="taid-x2", stages="staged", workers=2, batch_size=3))
    assert single["by_status"] == staged["by_status"] == {"ok": 6}
    assert (single["dispatch"]["stages"], staged["dispatch"]["stages"]) == ("single", "staged")
    a, b = rows_of(str(tmp_path / "single")), rows_of(str(tmp_path / "staged"))
    assert {k: r["output_sha256"] for k, r in a.items()} == {k: r["output_sha256"] for k, r in b.items()}
    [report] = staged["dispatch"]["model_actors"]
    assert report["tiles"] == 6 and report["device"] == "cpu"
    assert report["forwards"] <= report["tiles"]  # (batching is timing-dependent; exactness is not)

    back = run_rehydrate(RehydrateParams(archive=str(tmp_path / "staged"), to=str(tmp_path / "back"), prefix="",
                                         stages="staged"))
    ref = run_rehydrate(RehydrateParams(archive=str(tmp_path / "staged"), to=str(tmp_path / "ref"), prefix="",
                                        stages="single"))
    assert back["by_status"] == ref["by_status"] == {"ok": 6} and back["dispatch"]["stages"] == "staged"
    for p in (tmp_path / "ref").glob("*.png"):
        assert (tmp_path / "back" / p.name).read_bytes() == p.read_bytes()


def test_model_server_batches_same_size_tiles_from_concurrent_requests(ray_local):
    """Requests that arrive while a forward runs are grouped by shape: one call for many tiles,
    each answer equal to its tile run alone."""
    server = ray.remote(ModelServer).options(max_concurrency=64).remote(["taid-x2"], None, 0.0, 1.0, 8)
    from models.zoo import load_pair

    sha = load_pair("taid-x2").weights_sha256
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (1, 3, 64, 64), dtype=np.uint8) for _ in range(12)]
    alone = [ray.get(server.run.remote("taid-x2", sha, False, t)) for t in tiles[:2]]
    before = ray.get(server.report.remote())["forwards"]
    outs = ray.get([server.run.remote("taid-x2", sha, False, t) for t in tiles])
    report = ray.get(server.report.remote())
    assert all(o.shape == (1, 3, 32, 32) for o in outs)
    assert np.array_equal(outs[0], alone[0]) and np.array_equal(outs[1], alone[1])
    assert report["forwards"] - before < len(tiles)  # at least two requests shared a forward call
    ray.kill(server)


def test_killed_model_actor_is_restarted_and_nothing_is_lost(tmp_path, ray_local):
    photos(tmp_path / "src", n=8, size=256)
    killed = []

    def kill_once():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for name in ray.util.list_named_actors():
                if name.startswith("taid-compress-") and "-model-" in name:
                    try:
                        actor = ray.get_actor(name)
                        if ray.get(actor.report.remote())["requests"] >= 2:  # mid-run
                            ray.kill(actor, no_restart=False)
                            killed.append(name)
                    except Exception:  # noqa: BLE001 - not up yet, or already gone
                        pass
            time.sleep(0.2)

    killer = threading.Thread(target=kill_once)
    killer.start()
    result = run_compress(CompressArchiveParams(source=str(tmp_path / "src"), dest=str(tmp_path / "dest"),
                                                model_id="taid-x2", stages="staged", workers=2, batch_size=1))
    killer.join()
    assert killed, "the model actor was never killed: the test did not test anything"
    assert result["by_status"] == {"ok": 8}
    assert all(r["attempts"] == 1 for r in rows_of(str(tmp_path / "dest")).values())  # retried inside, not re-run
