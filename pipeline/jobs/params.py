"""Typed parameters of the archive jobs (Prefect validates flow parameters against these)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from pipeline.codec import DEFAULT_MAX_PIXELS, DEFAULT_MODEL, Effort, RehydrateFormat, SmallFormat, canonical
from pipeline.runtime import RayParams
from pipeline.storage import StorageParams

PIPELINE_VERSION = "0.2.0"


class CompressArchiveParams(RayParams, StorageParams):
    """A compress-archive run: what to compress and how (Ray: RayParams; storage: StorageParams)."""

    source: str = Field(description="URI of the images: a local folder or s3://bucket/prefix")
    dest: str = Field(description="URI where small files, _manifest/ and _runs/ are written")
    fidelity: str | None = Field(
        None, description="fidelity preset: preview, standard, high, lossless or original (pipeline.codec.fidelity); the default "
        "(standard) unless a target PSNR, or an explicit model / small format / quality without one, is given")
    target_score: float | None = Field(
        None, description="explicit SSIMULACRA2 floor of every image's worst region, in (0, 100), instead of a preset")
    target_psnr: float | None = Field(None, gt=0, description="explicit Y-PSNR floor in dB instead of a preset: the SR "
                                      "papers' measure, which does not guarantee what a person sees (docs/fidelity.md)")
    effort: Effort | None = Field(
        None, description="how hard a fidelity search works for bytes (pipeline.codec.fidelity.EFFORTS); default: default")
    preview_long_side: int | None = Field(
        None, ge=16, description="long side (px) of the small file where a layer carries the fidelity; default 768")
    model_id: str | None = Field(
        None, description="with a fidelity: the only base pair; without: write exactly this pair's single small "
        "file (no target). Default: the preset's pairs, or taid-x2 for a single layer")
    scale: int | None = Field(None, description="2..128 (a power of the model's scale); default: the model's")
    small_format: SmallFormat | None = Field(
        None, description="small-file format; default: the model's (a codec-aware pair's own lossy format, else png)"
    )
    quality: int | None = Field(
        None, ge=1, le=100, description="for webp-lossy / jpeg small files; default: the model's (else 90)"
    )
    incremental: bool = Field(True, description="skip objects whose ETag+size match an earlier ok row for this model")
    retry_failed: bool = Field(False, description="re-run only the objects whose latest row failed")
    include: list[str] = Field(default_factory=list, description="glob patterns on keys (all when empty)")
    exclude: list[str] = Field(default_factory=list)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="decompression-bomb limit per image")
    max_images: int | None = Field(None, gt=0, description="process at most this many objects")
    dry_run: bool = False
    verify: bool = Field(False, description="rehydrate each image once and record roundtrip_psnr")
    rows_per_part: int = Field(5000, ge=1, description="manifest rows per Parquet part file")
    show_progress: bool = Field(False, description="a progress bar on stderr (the CLI turns it on)")
    # scale (issue 14): listing source and manifest index
    inventory: str | None = Field(
        None, description="URI of an S3 Inventory manifest.json (CSV or Parquet) to use instead of listing the source"
    )
    list_workers: int = Field(8, ge=1, description="S3 sub-prefixes listed in parallel")
    compact: Literal["auto", "always", "never"] = Field(
        "auto", description="fold the run partitions into the manifest index after the run (auto: when worth it)"
    )
    prices: str | None = Field(
        None, description="price table of the cost report: a JSON or TOML file (local path or URI) over the built-in "
        "list prices (docs/costs.md); default: the TAID_PRICES setting, else the built-in table"
    )

    @field_validator("source", "dest")
    @classmethod
    def _absolute_local(cls, v: str) -> str:
        """Local folders become absolute: Ray actors need not share the caller's working directory."""
        import os

        return v if "://" in v else os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _modes(self) -> "CompressArchiveParams":
        if self.retry_failed and not self.incremental:
            raise ValueError("retry_failed needs the earlier manifests: keep incremental on")
        # refused: more than one of a preset, a target score and a target PSNR, or a fidelity together
        # with a fixed format / quality / scale
        self.request()
        return self

    def request(self):
        """What this run makes of each image (pipeline.codec.request.Request): the fidelity it guarantees,
        or a fixed single layer where an explicit model, small format, quality or scale is named without
        a fidelity. Build it once per run and hand it down (plan, workers): its `models` are the pairs to
        load, its `columns()` the manifest's `fidelity`, `target_psnr` and `target_score`."""
        from pipeline.codec import Request

        return Request.of(self.fidelity, self.target_psnr, self.model_id, self.small_format, self.quality,
                          self.scale, self.effort, self.preview_long_side, target_score=self.target_score,
                          max_pixels=self.max_pixels, verify=self.verify)

    @property
    def single_model(self) -> str:
        """The model of a fixed single-layer run."""
        return self.model_id or DEFAULT_MODEL

    def price_table(self):
        """The prices of this run's cost report (pipeline.jobs.prices.Prices): this run's `prices` file, else
        the TAID_PRICES setting's, over the built-in table. A file that is missing or wrong raises
        PriceTableError, whose message says which file and what is wrong."""
        from pipeline.jobs.prices import load_prices

        return load_prices(self.prices_source, self.storage_options, self.endpoint_url)

    @property
    def prices_source(self) -> str | None:
        """The price file this run uses (None: the built-in table)."""
        from pipeline.settings import get_settings

        return self.prices or get_settings().prices

    def check_storage(self) -> None:
        """Before any work: missing credentials, an unreachable endpoint, a missing bucket, a missing
        source, an unwritable destination (a probe write; not for dry runs, which write nothing):
        a StorageConfigError whose message is one line saying what to fix (StorageParams.check)."""
        self.check(self.source, source=not self.inventory)  # an inventory lists the source instead
        if self.inventory:
            self.check(self.inventory)
        self.check(self.dest, write=not self.dry_run)


class RehydrateParams(RayParams, StorageParams):
    """A batch rehydrate run: which keys of an archive, written where (Ray: RayParams; storage: StorageParams)."""

    archive: str = Field(description="the compress-archive destination (with _manifest/)")
    to: str = Field(description="URI to write full-resolution images (and their manifest) to")
    source_keys: list[str] = Field(default_factory=list, description="source keys to rehydrate")
    prefix: str | None = Field(None, description="every key under this prefix")
    glob: str | None = Field(None, description="every key matching this glob")
    run_id: str | None = Field(None, description="every ok row of this compress run")
    # earlier names are still read: output_format and skip_enhancement (before 0.3; docs/architecture.md#glossary)
    restored_format: RehydrateFormat | None = Field(
        None, validation_alias=AliasChoices("restored_format", "output_format"),
        description="png, jpeg, webp, webp-lossy, tiff or original; default: the source's format")
    quality: int | None = Field(None, ge=1, le=100)
    preview: bool = Field(False, validation_alias=AliasChoices("preview", "skip_enhancement"),
                          description="preview: leave out enhancement layers (the small files' own "
                                   "fidelity, faster)")
    dry_run: bool = False

    @field_validator("restored_format", mode="before")
    @classmethod
    def _canonical_format(cls, v):
        return canonical(v) if isinstance(v, str) else v  # jpg -> jpeg, TIF -> tiff, as the codec spells them

    def check_storage(self) -> None:
        """Before any work: the archive's storage usable (credentials, endpoint, bucket) and `to`
        writable (a probe write; not for dry runs): a StorageConfigError in one line (StorageParams.check)."""
        self.check(self.archive)
        self.check(self.to, write=not self.dry_run)
