"""The two actor workers the `ActorPool` runs: one object -> one archive row (compress), one archive
row -> one restored file and its row (rehydrate). Each loads its models once, on the device it
reserved (`actor_pool.torch_device`), and never raises for one item: failures become rows.

They live in an importable package module so Ray can load them however the caller was loaded
(a Prefect flow file, the CLI, a test)."""

from __future__ import annotations

import logging

from pipeline.jobs.params import PIPELINE_VERSION, CompressArchiveParams
from pipeline.manifest import ArchiveRows, RestoredRows
from pipeline.runtime import PoolWorker, torch_device
from pipeline.storage import ObjectInfo, UnsafeKeyError, atomic_write, protocol_prefix, safe_join

log = logging.getLogger(__name__)


def write_checked(fs, path: str, blob: bytes) -> None:
    """Atomic write (S3: retried by the one policy in pipeline.storage.s3), then a size check of what landed."""
    atomic_write(fs, path, blob)
    written = fs.info(path)["size"]
    if written != len(blob):
        raise OSError(f"wrote {written} of {len(blob)} bytes")


def _strip(uri: str) -> str:
    return uri.split("://", 1)[1] if "://" in uri else uri


class ModelUser(PoolWorker):
    """A worker that runs the networks: on the device it reserved (single stage), or through a model
    actor (staged: `servers` given, the pairs stay on the CPU for their metadata)."""

    def __init__(self, params, servers: list):
        import os

        self.server = servers[os.getpid() % len(servers)] if servers else None
        # staged: the CPU, its threads for decode / encode only (the model actor has the GPU)
        self.device = torch_device(0 if servers else (params.gpus_per_worker or 0), params.cpus_per_worker)
        self.inference = params.inference

    def prepare(self, pair):
        """The loaded pair, set to run as the params say (pipeline.codec.inference) or through the model actor."""
        from pipeline.codec import configure
        from pipeline.runtime import bind

        if self.inference is not None:
            configure(pair, self.inference)
        return bind(pair, self.server) if self.server is not None else pair


class CompressWorker(ModelUser):
    """The run's request and every pair it needs, loaded once; `handle` turns one object into its row."""

    def __init__(self, params: dict, run_id: str, servers: list | None = None):
        from models.zoo import load_pair

        self.params = CompressArchiveParams(**params)
        super().__init__(self.params, servers or [])
        # the run's request, from the run's resolved params (the actor gets them as a dict): the same
        # Request the driver planned with
        self.request = self.params.request()
        self.rows = ArchiveRows(run_id, {"model_id": self.params.model_id, **self.request.columns()}, PIPELINE_VERSION)
        self.pairs = {m: self.prepare(load_pair(m, self.device, registry=self.params.registry))
                      for m in self.request.models}
        self.src_fs, _ = self.params.fs(self.params.source)
        self.dst_fs, self.dest_root = self.params.fs(self.params.dest)

    def _compress(self, data: bytes):
        """Encoded(small file, enhancement layer or None, record)."""
        from pipeline.codec import encode

        return encode(data, self.request, self.pairs)

    def handle(self, item: dict, attempt: int):
        from pipeline.codec import SUFFIX, layer_name

        obj = ObjectInfo(**item)
        try:
            with self.on_storage():
                data = self.src_fs.cat_file(_strip(obj.uri))
        except Exception as exc:
            return self.rows.failed(obj, attempt, "failed_read", exc)
        small, layer, record = self._compress(data)
        if small is None:
            return self.rows.from_codec(obj, attempt, record)
        try:
            rel = obj.key + SUFFIX[record.output_format]  # rows name files relative to the archive root
            out_path = safe_join(self.dest_root, rel)
        except UnsafeKeyError as exc:
            return self.rows.skipped(obj, attempt, "skipped_unsafe_key", str(exc), record)
        layer_path = layer_name(out_path) if layer is not None else None
        try:
            with self.on_storage():
                if layer is not None:  # the layer first: a small file that names a layer is never visible without it
                    write_checked(self.dst_fs, layer_path, layer)
                write_checked(self.dst_fs, out_path, small)
        except Exception as exc:
            return self.rows.failed(obj, attempt, "failed_write", exc, record)
        return self.rows.ok(obj, attempt, record, rel, layer_name(rel) if layer is not None else None)


class RehydrateWorker(ModelUser):
    """Verified small file (+ layer) -> the paired upscaler (on the device reserved, or the model
    actor) -> full-resolution file in `to`."""

    def __init__(self, params: dict, run_id: str, servers: list | None = None):
        from pipeline.jobs.params import RehydrateParams

        self.params = RehydrateParams(**params)
        super().__init__(self.params, servers or [])
        self.rows = RestoredRows(run_id)
        self.fs, self.root = self.params.fs(self.params.to)
        self.storage = self.params.fsspec_options()  # the archive's files: endpoint included
        self.prefix = protocol_prefix(self.fs)

    def handle(self, row: dict, attempt: int):
        from pipeline.archive import RehydrateRefused, default_format, rehydrate_row
        from pipeline.jobs.select import restored_path

        p = self.params
        try:
            path = restored_path(p, row, self.root)
            data = rehydrate_row(row, p.restored_format, p.quality, p.registry, storage_options=self.storage,
                                 preview=p.preview, device=self.device, prepare=self.prepare)
            with self.on_storage():
                write_checked(self.fs, path, data)
        except (RehydrateRefused, UnsafeKeyError) as exc:
            return self.rows.refused(row, attempt, exc)
        except Exception as exc:
            return self.rows.failed(row, attempt, exc)
        return self.rows.ok(row, attempt, self.prefix + path, p.restored_format or default_format(row), data,
                            p.preview)
