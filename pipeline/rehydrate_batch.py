"""Batch rehydration pieces (pure of Prefect): parameters, selection from the manifest, and the
Ray actor that turns a manifest row into a full-resolution file. `flows/rehydrate.py` composes them.
The actor lives here, in an importable package, so Ray can load it whatever way Prefect loaded the
flow file."""

from __future__ import annotations

import fnmatch
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pydantic import BaseModel, Field

from pipeline.manifest import read_manifest
from pipeline.storage import UnsafeKeyError, atomic_write, filesystem, protocol_prefix, safe_join

REHYDRATE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("source_key", pa.string()), ("small_uri", pa.string()), ("small_sha256", pa.string()),
    ("output_uri", pa.string()), ("output_format", pa.string()), ("output_size", pa.int64()),
    ("output_sha256", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("model_id", pa.string()),
    ("model_sha256", pa.string()), ("status", pa.string()), ("error_message", pa.string()),
    ("attempts", pa.int32()), ("processed_at", pa.timestamp("us", tz="UTC")),
], metadata={"taid_rehydrate_manifest_schema": "1"})
SUFFIX = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "webp-lossy": ".webp", "tiff": ".tif"}


class RehydrateParams(BaseModel):
    archive: str = Field(description="the compress-archive destination (with _manifest/)")
    to: str = Field(description="URI to write full-resolution images (and their manifest) to")
    source_keys: list[str] = Field(default_factory=list, description="source keys to rehydrate")
    prefix: str | None = Field(None, description="every key under this prefix")
    glob: str | None = Field(None, description="every key matching this glob")
    run_id: str | None = Field(None, description="every ok row of this compress run")
    output_format: str | None = Field(None, description="png, jpeg, webp, tiff; default: the source's format")
    quality: int | None = Field(None, ge=1, le=100)
    skip_enhancement: bool = Field(False, description="preview: leave out enhancement layers (the small files' own "
                                   "fidelity, faster)")
    registry: str | None = None
    ray_address: str = ""
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    actor_resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per actor "
                                              "(e.g. {'taid_model': 1}: only nodes that have it run the model)")
    batch_size: int = Field(2, ge=1)
    max_attempts: int = Field(3, ge=1)
    dry_run: bool = False
    storage_options: dict = Field(default_factory=dict, repr=False)


def select_rows(params: RehydrateParams) -> list[dict]:
    """Latest ok row per selected key, through the shared manifest reader (index + newer runs;
    a run_id selection reads only that run's partition)."""
    from pipeline.manifest_index import ManifestReader, keep_latest_ok, run_rows

    reader = ManifestReader(params.archive, params.storage_options)
    if not reader.has_manifest():
        raise FileNotFoundError(f"{params.archive} has no manifest")
    filters = []
    if params.source_keys:
        filters.append(ds.field("source_key").isin(params.source_keys))
    if params.prefix is not None:
        filters.append(pc.starts_with(ds.field("source_key"), params.prefix))
    if not (filters or params.glob or params.run_id):  # never everything by accident: prefix="" asks for all
        raise ValueError("select something: source_keys, prefix, glob or run_id")
    expr = ds.field("status") == "ok"
    for f in filters:
        expr = expr & f
    if params.run_id:
        tables = [keep_latest_ok(run_rows(reader, params.run_id, expr))]
    else:
        tables = reader.latest(filter=expr, ok_only=True)
    rows = []
    for t in tables:
        for row in t.to_pylist():
            if not params.glob or fnmatch.fnmatch(row["source_key"], params.glob):
                rows.append(row)
    return rows


def default_format(row: dict) -> str:
    """What rehydration writes without an explicit format: PNG for fidelity archives (their verified
    pixels, exactly), else the source's format (JPEG stays JPEG...)."""
    if _present(row.get("fidelity")):
        return "png"
    return (row.get("source_format") or "png").lower()


def _present(v) -> bool:
    return isinstance(v, str) and bool(v)


def output_key(row: dict, output_format: str | None) -> str:
    if not output_format:
        key = row["source_key"]
        if _present(row.get("fidelity")) and not key.lower().endswith(".png"):
            return key + ".png"  # appended, never replaced: cat.jpg and cat.png stay two files
        return key
    stem = row["source_key"].rsplit(".", 1)[0] if "." in row["source_key"].rsplit("/", 1)[-1] else row["source_key"]
    return stem + SUFFIX.get(output_format.lower(), "." + output_format.lower())


class RehydrateWorker:
    """Ray actor: verified small file -> paired upscaler -> full-resolution file in `to`."""

    def __init__(self, params: dict, run_id: str):
        import torch

        self.params = RehydrateParams(**params)
        self.run_id = run_id
        torch.set_num_threads(max(1, int(round(self.params.cpus_per_worker))))
        self.fs, self.root = filesystem(self.params.to, self.params.storage_options)
        self.prefix = protocol_prefix(self.fs)

    def ready(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def process(self, rows: list[dict], attempt: int) -> list[dict]:
        return [self._one(r, attempt) for r in rows]

    def _one(self, row: dict, attempt: int) -> dict:
        import hashlib

        from pipeline.rehydrate import RehydrateRefused, rehydrate_row

        out = {"run_id": self.run_id, "source_key": row["source_key"], "small_uri": row["output_uri"],
               "small_sha256": row["output_sha256"], "model_id": row["model_id"], "model_sha256": row["model_sha256"],
               "width": row["width"], "height": row["height"], "attempts": attempt}
        try:
            path = safe_join(self.root, output_key(row, self.params.output_format))
            data = rehydrate_row(row, self.params.output_format, self.params.quality, self.params.registry,
                                 storage_options=self.params.storage_options,
                                 skip_enhancement=self.params.skip_enhancement)
            atomic_write(self.fs, path, data)
            if self.fs.info(path)["size"] != len(data):
                raise OSError("short write")
        except (RehydrateRefused, UnsafeKeyError) as exc:
            return done_row(out, status="refused", error_message=str(exc))
        except Exception as exc:
            return done_row(out, status="failed", error_message=f"{type(exc).__name__}: {exc}")
        fmt = self.params.output_format or default_format(row)
        return done_row(out, status="ok", output_uri=self.prefix + path, output_format=fmt, output_size=len(data),
                     output_sha256=hashlib.sha256(data).hexdigest())


def done_row(row: dict, **update) -> dict:
    row.update(update)
    row["processed_at"] = datetime.now(timezone.utc)
    return row


def already_done(params: RehydrateParams) -> set[tuple[str, str]]:
    """(source_key, small sha256) pairs an earlier run already rehydrated into `to`."""
    fs, root = filesystem(params.to, params.storage_options)
    table = read_manifest(fs, root, columns=["source_key", "small_sha256", "status"], schema=REHYDRATE_SCHEMA)
    return {(k, s) for k, s, st in zip(*(table.column(c).to_pylist() for c in ("source_key", "small_sha256", "status")))
            if st == "ok"}
