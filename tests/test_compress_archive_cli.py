"""`taid compress-archive` (the command-line twin of the flow) on local folders."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.dataset as ds
from PIL import Image

from pipeline.cli import main


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
    for r in rows:
        small = Image.open(r["output_uri"])
        assert small.size == (16, 16) and r["output_uri"].startswith(str(dest))
    assert len(list((dest / "_runs").glob("*.json"))) == 2

    assert main(args + ["--quality", "500"]) == 2  # a bad option is a usage error, not a traceback
    assert "quality" in capsys.readouterr()[1]
