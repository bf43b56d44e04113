"""`make demo`: the main job on the embedded defaults, no servers.

    python -m flows.demo [--dest runs/demo-archive] [--model taid-x2]

Runs the `compress-archive` Prefect flow (the job layer inside it) over the bundled photos (tests/data/Set5 and Set14) into
`runs/demo-archive` with a local Ray and Prefect's ephemeral API, prints the run summary and
where the manifest is, runs it a second time (incremental: nothing to do), then rehydrates one
image from its small file and manifest row to show the round trip.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

from pipeline.runtime import set_local_env_defaults

ROOT = Path(__file__).resolve().parents[1]

# a local Ray bound to loopback, no token auth, no usage stats; Prefect quiet (INFRA-NOTES)
set_local_env_defaults(PREFECT_LOGGING_LEVEL="WARNING")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="compress-archive on the bundled images")
    ap.add_argument("--source", default=str(ROOT / "tests" / "data"))
    ap.add_argument("--dest", default=str(ROOT / "runs" / "demo-archive"))
    ap.add_argument("--fidelity", default=None, help="preset (default: standard, Y-PSNR >= 36 dB)")
    ap.add_argument("--model", default=None, help="with no --fidelity: one fixed single layer of this pair")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    import numpy as np
    import pyarrow.dataset as ds
    import ray
    from PIL import Image

    from flows.compress_archive import compress_archive, summary_table
    from pipeline.archive import find_row, rehydrate_row
    from pipeline.jobs import CompressArchiveParams

    source, dest = os.path.abspath(args.source), os.path.abspath(args.dest)  # Ray workers get absolute paths
    params = CompressArchiveParams(
        source=source, dest=dest, model_id=args.model, fidelity=args.fidelity, include=["Set5/*", "Set14/*"], workers=args.workers,
        show_progress=True,
    )
    ray.init(address="local", num_cpus=min(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    try:
        result = compress_archive(params)
        print(f"\ncompress-archive {source} -> {dest}  (run {result['run_id']})")
        table = summary_table(result)
        width = max(len(row["metric"]) for row in table)
        for row in table:
            print(f"  {row['metric']:<{width}} {row['value']}")
        again = compress_archive(params)
        print(f"second run (incremental): {again['rows']} processed, plan {again['plan']}")
    finally:
        ray.shutdown()

    manifest = ds.dataset(os.path.join(dest, "_manifest"), format="parquet", partitioning="hive")
    table = manifest.to_table(columns=["source_key", "status", "width", "height", "output_uri", "output_size"])
    print(f"\nmanifest: {dest}/_manifest/run=*/part-*.parquet ({table.num_rows} rows; "
          f"pyarrow.dataset.dataset({os.path.join(dest, '_manifest')!r}, format='parquet'))")
    print(f"run stats (written last): {dest}/_runs/{result['run_id']}.json")

    # the raw table holds file paths relative to the archive (it can be moved); the library resolves them
    row = find_row(dest, "Set5/butterfly.png")
    restored = Image.open(io.BytesIO(rehydrate_row(row))).convert("RGB")  # small file + its layer, verified
    original = Image.open(os.path.join(source, row["source_key"])).convert("RGB")
    out = Path(dest).parent / "demo-restored" / row["source_key"]
    out.parent.mkdir(parents=True, exist_ok=True)
    restored.save(out)
    mse = np.mean((np.asarray(restored, np.float64) - np.asarray(original, np.float64)) ** 2)
    psnr = 10 * np.log10(255**2 / mse) if mse else float("inf")
    layer = f" + layer {row['enhancement_size']} B" if row.get("enhancement_size") else ""
    print(f"rehydrated {row['source_key']}: {row['source_size']} B -> small {row['output_size']} B{layer} "
          f"({row['out_width']}x{row['out_height']}) -> {out} ({restored.width}x{restored.height}, RGB PSNR {psnr:.2f} dB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
