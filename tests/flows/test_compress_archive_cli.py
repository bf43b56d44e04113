"""`taid compress-archive` (the command-line twin of the flow) on local folders."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.dataset as ds
from PIL import Image

from flows.cli import main


def _png(seed: int, size: int = 64) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_cli_filters_limits_and_resumes(tmp_path, ray_local, prefect_harness, capsys):
    src, dest = tmp_path / "src", tmp_path / "dest"
    for rel in ["a/1.png", "a/2.png", "b/3.png", "b/skip-me.png"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(_png(len(rel) + ord(rel[-5])))
    (src / "notes.txt").write_text("not selected by --include")

    args = ["compress-archive", str(src), str(dest), "--model", "taid-x4", "--include", "*.png",
            "--exclude", "*/skip-*", "--workers", "1", "--batch-size", "2"]
    assert main(args + ["--max-images", "2"]) == 0
    out, err = capsys.readouterr()
    first = json.loads(out)
    assert first["by_status"] == {"ok": 2} and first["plan"]["over_max_images"] == 1
    assert "compress-archive" in err and "img" in err  # the progress bar, on stderr

    assert main(args) == 0  # the rest: only the object left over by --max-images
    second = json.loads(capsys.readouterr()[0])
    assert second["by_status"] == {"ok": 1} and second["plan"]["unchanged"] == 2

    rows = ds.dataset(str(dest / "_manifest"), format="parquet", partitioning="hive").to_table().to_pylist()
    assert sorted(r["source_key"] for r in rows) == ["a/1.png", "a/2.png", "b/3.png"]
    for r in rows:  # files named relative to the archive root
        small = Image.open(dest / r["output_uri"])
        assert small.size == (16, 16) and r["output_uri"].startswith(r["source_key"] + ".")
    assert len(list((dest / "_runs").glob("*.json"))) == 2

    # Prefect artifacts of the last run: the summary table and the progress bar at 100 %
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        def latest(key):
            return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                         sort=ArtifactSort.CREATED_DESC, limit=1)[0]

        table = latest("compress-archive-summary").data
        progress = latest("compress-archive-progress").data
    table = json.loads(table) if isinstance(table, str) else table
    metrics = {r["metric"]: r["value"] for r in table}
    assert metrics["images processed"] == 1 and metrics["status ok"] == 1 and metrics["not processed: unchanged"] == 2
    assert {"bytes in (ok)", "bytes out (ok)", "ratio in/out", "images/s", "megapixels/s"} <= set(metrics)
    assert float(progress) == 100.0

    # with a Prefect API configured (the harness) the CLI ran the flow: the job layer's log records
    # are in the flow run's logs too
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send the queued run logs now
    with get_client(sync_client=True) as client:
        messages = [log.message for log in client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC)]
    assert any("pipeline.jobs.compress: run" in m and "rows" in m for m in messages), messages[:20]

    assert main(args + ["--quality", "500"]) == 2  # a bad option is a usage error, not a traceback
    assert "quality" in capsys.readouterr()[1]
