"""Typed parameters of the archive server (Serve config `args`, `taid serve` flags) and of one image request."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.codec import RehydrateFormat
from pipeline.storage import StorageParams

# "original": the source file itself where the archive keeps it (a JPEG under --fidelity original), else exact pixels
OutputFormat = RehydrateFormat


class ServeParams(StorageParams):
    """One application = one archive. Validated by Serve when given as a config file's `args`.
    Storage (`endpoint_url`, `storage_options`, never credentials): StorageParams."""

    model_config = ConfigDict(extra="forbid")

    archive: str = Field(description="the compress-archive destination (local folder or s3://bucket/prefix)")
    token_env: str = Field("TAID_SERVE_TOKEN", description="environment variable holding the bearer token on each replica")
    token_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the token (what `taid serve --token` passes, so the token itself is stored nowhere)",
    )
    allow_anonymous: bool = Field(
        False, description="serve without a token; only `taid serve` on a loopback host sets it (private photos are never open by default)",
    )
    cache_bytes: int = Field(256 * 2**20, ge=0, description="byte budget of each replica's LRU cache of responses (0 = off)")
    row_ttl_s: float = Field(30.0, ge=0, description="how long a replica reuses a manifest row / listing before reading it again")
    cache_max_age_s: int = Field(3600, ge=0, description="Cache-Control max-age of thumbnails and images (revalidated by ETag)")
    max_pixels_out: int = Field(120_000_000, gt=0, description="largest image a request may ask for")
    rehydrate_concurrency: int = Field(1, ge=1, description="full-image rehydrations at once per replica (memory bound)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the replica was given a GPU")
    registry: str | None = Field(None, description="model registry URI for fine-tuned model ids")


class ImageQuery(BaseModel):
    """Query parameters of GET /image/{key}; a validation error is a 400."""

    model_config = ConfigDict(extra="forbid")

    format: OutputFormat | None = Field(None, description="default: the original's format")
    quality: int | None = Field(None, ge=1, le=100, description="for jpeg / webp-lossy")
    max_side: int | None = Field(None, ge=8, le=65536, description="downsize so the longer side is at most this")
    preview: bool = Field(False, description="fast preview: skip the enhancement layer where the archive has one")
