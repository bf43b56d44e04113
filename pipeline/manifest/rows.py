"""One definition of a manifest row per manifest kind; the Arrow schemas are derived from them.

    ArchiveRow   DEST/_manifest/       one row per source object per compress run
    RestoredRow  TO/_manifest/         one row per selected key per rehydrate run

Column names say which file they describe. In the archive manifest `source_*` is the original
object and `output_*` the small file it became (the name predates this module; renaming it would
break every query on existing archives), `enhancement_*` its layer. In the rehydrate manifest
`small_*` is the small file read and `restored_*` the full-resolution file written.

Rows are only made by the constructors of `ArchiveRows` / `RestoredRows` (one per kind: ok,
skipped, failed, crash), which also enforce the invariants readers rely on: only an `ok` row
names output files, every row says how many attempts it took and when it was made.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime, timezone
from typing import Annotated, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

I32 = Annotated[int | None, pa.int32()]  # an Arrow int32 column (plain ints are int64)
_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
          datetime: pa.timestamp("us", tz="UTC")}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ManifestRow(BaseModel):
    """Base of the row models: field order is column order; `arrow_schema()` derives the schema."""

    model_config = ConfigDict(extra="forbid")
    SCHEMA_KEY: ClassVar[str]
    SCHEMA_VERSION: ClassVar[str]

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        hints = typing.get_type_hints(cls, include_extras=True)
        return pa.schema([(name, _arrow_type(hints[name])) for name in cls.model_fields],
                         metadata={cls.SCHEMA_KEY: cls.SCHEMA_VERSION})


def _arrow_type(hint) -> pa.DataType:
    """The Arrow type of a field annotation: an explicit pa.DataType in Annotated[...] metadata,
    else the one of its (optional) Python type."""
    if typing.get_origin(hint) is Annotated:
        explicit = [m for m in hint.__metadata__ if isinstance(m, pa.DataType)]
        if explicit:
            return explicit[0]
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return _ARROW[hint]


class ArchiveRow(ManifestRow):
    """A row of the archive manifest (pipeline.manifest.parts). Versions: 2 added `small_quality`, 3 the
    fidelity and enhancement-layer columns, 4 `enhancement_level` and the CPU-seconds of each stage (`cpu_*_s`,
    the cost report), 5 the perceptual columns (`target_score`, `score_worst`, `score_whole`, `encodes`). Columns
    are only ever added: parts of every earlier version still read (their new columns null: a row without a
    `target_score` was verified against its `target_psnr`)."""

    SCHEMA_KEY: ClassVar[str] = "taid_manifest_schema"
    SCHEMA_VERSION: ClassVar[str] = "5"

    run_id: str
    source_key: str
    source_uri: str | None = None
    source_etag: str | None = None
    source_size: int | None = None
    source_sha256: str | None = None
    source_format: str | None = None
    source_mode: str | None = None
    bit_depth: I32 = None
    n_frames: I32 = None
    exif_orientation: I32 = None
    icc_present: bool | None = None
    width: I32 = None  # upright source size = the rehydrated size
    height: I32 = None
    status: str
    error_message: str | None = None
    output_uri: str | None = None  # the small file (only on ok rows), relative to the archive root (older: a URI)
    output_format: str | None = None
    small_quality: I32 = None
    output_size: int | None = None
    output_sha256: str | None = None
    out_width: I32 = None
    out_height: I32 = None
    scale: I32 = None
    model_id: str | None = None
    model_sha256: str | None = None
    roundtrip_psnr: float | None = None
    fidelity: str | None = None
    target_psnr: float | None = None  # the Y-PSNR floor the row was verified against (null for score targets)
    psnr_y: float | None = None
    psnr_rgb: float | None = None
    thumbnail_psnr: float | None = None
    target_score: float | None = None  # the SSIMULACRA2 floor of the worst region (since schema 5)
    score_worst: float | None = None  # verified SSIMULACRA2, worst 256-px region
    score_whole: float | None = None  # verified SSIMULACRA2, whole image
    encodes: I32 = None  # layer encodes of the rate control
    enhancement_uri: str | None = None  # the layer beside the small file (only on ok rows that have one), relative too
    enhancement_format: str | None = None
    enhancement_quality: I32 = None
    enhancement_size: int | None = None
    enhancement_sha256: str | None = None
    enhancement_level: I32 = None  # an AVIF layer's level, 0-63 (63 - libaom cq-level); enhancement_quality: older rows
    cpu_decode_s: float | None = None  # CPU-seconds of each stage of this image (pipeline.codec.options.CompressRecord)
    cpu_tad_s: float | None = None
    cpu_tau_s: float | None = None
    cpu_search_s: float | None = None
    cpu_encode_s: float | None = None
    cpu_verify_s: float | None = None
    notes: str | None = None
    attempts: I32 = None
    pipeline_version: str | None = None
    processed_at: datetime = Field(default_factory=_utcnow)


class RestoredRow(ManifestRow):
    """A row of a rehydrate run's manifest. Version 2 renamed `output_*` to `restored_*`."""

    SCHEMA_KEY: ClassVar[str] = "taid_rehydrate_manifest_schema"
    SCHEMA_VERSION: ClassVar[str] = "2"

    run_id: str
    source_key: str
    small_uri: str | None = None  # the small file read (the archive row's output_uri)
    small_sha256: str | None = None
    restored_uri: str | None = None  # the full-resolution file written (only on ok rows)
    restored_format: str | None = None
    restored_size: int | None = None
    restored_sha256: str | None = None
    preview: bool | None = None  # the enhancement layer was left out (preview)
    width: I32 = None
    height: I32 = None
    model_id: str | None = None
    model_sha256: str | None = None
    status: str  # ok, refused (the archive says no: unknown key, modified file...), failed
    error_message: str | None = None
    attempts: I32 = None
    processed_at: datetime = Field(default_factory=_utcnow)


ARCHIVE_SCHEMA = ArchiveRow.arrow_schema()
RESTORED_SCHEMA = RestoredRow.arrow_schema()
# the codec's record fields that are manifest columns (pipeline.codec.options.CompressRecord has more)
CODEC_COLUMNS = frozenset(ArchiveRow.model_fields) - {
    "run_id", "source_key", "source_uri", "source_etag", "output_uri", "enhancement_uri", "attempts",
    "pipeline_version", "processed_at"}


def present(v) -> bool:
    """A string column with a value (Parquet nulls read as None, pandas' as NaN)."""
    return isinstance(v, str) and bool(v)


def _error(exc: BaseException | str) -> str:
    return exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"


class ArchiveRows:
    """The row constructors of one compress run: every row carries the run's id, what it asked for
    (model, fidelity, target) and the pipeline version. `obj` is a pipeline.storage.keys.ObjectInfo or
    its dict."""

    def __init__(self, run_id: str, asked: dict, pipeline_version: str):
        self.base = {"run_id": run_id, "pipeline_version": pipeline_version, **asked}

    def _row(self, obj, attempts: int, record=None, **fields) -> ArchiveRow:
        o = obj if isinstance(obj, dict) else obj.__dict__
        ident = {"source_key": o["key"], "source_uri": o["uri"], "source_etag": o["etag"], "source_size": o["size"]}
        codec = record.model_dump(include=CODEC_COLUMNS, exclude_none=True) if record is not None else {}
        return ArchiveRow(**{**self.base, **codec, **ident, "attempts": attempts, **fields})

    def ok(self, obj, attempts: int, record, small_uri: str, layer_uri: str | None) -> ArchiveRow:
        """The small file (and its layer) are written and verified."""
        return self._row(obj, attempts, record, status="ok", output_uri=small_uri, enhancement_uri=layer_uri)

    def skipped(self, obj, attempts: int, status: str, error: BaseException | str, record=None) -> ArchiveRow:
        """Our policy refused the object (empty, not an image, unsafe key...): a decision, not retried."""
        assert status.startswith("skipped_"), status
        return self._row(obj, attempts, record, status=status, error_message=_error(error))

    def failed(self, obj, attempts: int, status: str, error: BaseException | str, record=None) -> ArchiveRow:
        """Something went wrong (read, decode, write, fidelity): retry_failed runs it again."""
        assert status.startswith("failed_"), status
        return self._row(obj, attempts, record, status=status, error_message=_error(error))

    def from_codec(self, obj, attempts: int, record) -> ArchiveRow:
        """The codec's own skip or failure (pipeline.codec.image never raises for bad input)."""
        kind = self.skipped if record.status.startswith("skipped_") else self.failed
        return kind(obj, attempts, record.status, record.error_message or record.status, record)

    def crash(self, obj, attempts: int, exc: BaseException) -> ArchiveRow:
        """The object's batch killed its actor on every attempt (a poison object)."""
        return self.failed(obj, attempts, "failed_worker_crash", f"{type(exc).__name__} on {attempts} attempts")


class RestoredRows:
    """The row constructors of one rehydrate run; `row` is the archive row being rehydrated."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def _row(self, row: dict, attempts: int, **fields) -> RestoredRow:
        return RestoredRow(run_id=self.run_id, source_key=row["source_key"], small_uri=row.get("output_uri"),
                           small_sha256=row.get("output_sha256"), model_id=row.get("model_id"),
                           model_sha256=row.get("model_sha256"), width=row.get("width"), height=row.get("height"),
                           attempts=attempts, **fields)

    def ok(self, row: dict, attempts: int, uri: str, fmt: str, data: bytes, preview: bool) -> RestoredRow:
        import hashlib

        return self._row(row, attempts, status="ok", restored_uri=uri, restored_format=fmt, restored_size=len(data),
                         restored_sha256=hashlib.sha256(data).hexdigest(), preview=preview)

    def refused(self, row: dict, attempts: int, error: BaseException | str) -> RestoredRow:
        """The archive says no (modified small file, unknown model, unsafe key): retrying cannot help."""
        return self._row(row, attempts, status="refused", error_message=str(error))

    def failed(self, row: dict, attempts: int, error: BaseException | str) -> RestoredRow:
        return self._row(row, attempts, status="failed", error_message=_error(error))

    def crash(self, row: dict, attempts: int, exc: BaseException) -> RestoredRow:
        return self.failed(row, attempts, f"worker crashed: {type(exc).__name__}")
