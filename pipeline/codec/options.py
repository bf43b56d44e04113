"""What a compress request asks and what it yields: the codec options, the per-image record, the
`Encoded` result, the limits. Light on purpose (no torch): job parameters and the server import it."""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, Field, field_validator

from pipeline.codec.formats import OutputFormat, SmallFormat

CODEC_VERSION = "3"  # 2: AVIF layers by level (cq-level), jxl-jpeg layers, previews by size; 3: score targets,
# jxl-bands and eye-tuned avif-bands layers, source layers


DEFAULT_MAX_PIXELS = 120_000_000
DEFAULT_TILE = 1024  # tile side in full-resolution pixels (pipeline.codec.tiling)
DEFAULT_MODEL = "taid-x2"  # of a fixed small file when none is named


class RehydrateError(ValueError):
    """The small file cannot be rehydrated with this pair (wrong model, not a TAID file, ...)."""


class CodecOptions(BaseModel):
    model_id: str = DEFAULT_MODEL
    scale: int | None = Field(None, description="power of the model's scale: 2..128 for taid-x2, 4/16/64 for taid-x4; "
                              "None = the model's own")
    small_format: SmallFormat | None = Field(
        None, description="None = the model's: its codec block's format for a codec-aware pair, else png"
    )
    quality: int | None = Field(
        None, ge=1, le=100, description="for webp-lossy and jpeg small files; None = the model's (else 90)"
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="decompression-bomb limit, checked from the header")
    tile: int = Field(DEFAULT_TILE, ge=64, description="tile side in full-resolution pixels")
    multi_frame: Literal["skip", "first"] = "skip"
    high_bit_depth: Literal["skip", "to8bit"] = "skip"
    rehydrate_format: OutputFormat | None = Field(
        None, description="default output format for rehydration; None = the source's (image_io.default_output)"
    )
    rehydrate_quality: int | None = Field(None, ge=1, le=100)
    verify: bool = Field(False, description="rehydrate once and store roundtrip_psnr (RGB, 8-bit, no shave)")

    @field_validator("scale")
    @classmethod
    def _power_of_two(cls, v: int | None) -> int | None:
        if v is None:
            return v
        if v < 1 or v > 128 or v & (v - 1):
            raise ValueError("scale must be a power of two in 2..128 (1 for a colour-only pair: taid-gray)")
        return v


class CompressRecord(BaseModel):
    """The per-image manifest fields the codec knows (DESIGN.md), plus the policies applied."""

    source_size: int = 0
    source_sha256: str = ""
    source_format: str | None = None
    source_mode: str | None = None
    bit_depth: int | None = None
    n_frames: int | None = None
    exif_orientation: int | None = None
    icc_present: bool = False
    width: int | None = None  # upright (EXIF-applied) size = the rehydrated size
    height: int | None = None
    status: str = "ok"
    error_message: str | None = None
    output_format: str | None = None
    small_quality: int | None = None  # quality of a lossy small file (webp-lossy, jpeg); None when lossless
    output_size: int | None = None
    output_sha256: str | None = None
    out_width: int | None = None
    out_height: int | None = None
    scale: int | None = None
    model_id: str | None = None
    model_sha256: str | None = None
    roundtrip_psnr: float | None = None
    # policies
    exif_present: bool = False
    has_alpha: bool = False
    alpha_stored: bool = False
    is_gray: bool = False
    processed_bit_depth: int | None = None
    color_conversion: str | None = None
    icc_carried: bool = False
    frames_policy: str | None = None
    rehydrate_format: str | None = None
    rehydrate_quality: int | None = None
    tiles: int | None = None
    notes: str | None = None
    # fidelity (pipeline.codec.fidelity): what was asked, what the verified rehydration reached, the layer
    fidelity: str | None = None  # preset name, or "target" for an explicit --target-score / --target-psnr
    target_psnr: float | None = None  # the Y-PSNR floor verified against (PSNR targets, and rows made before issue 29)
    target_score: float | None = None  # the SSIMULACRA2 floor of the worst region verified against (score targets)
    score_worst: float | None = None  # verified SSIMULACRA2 of the worst 256-px region (pipeline.codec.measure)
    score_whole: float | None = None  # verified SSIMULACRA2 of the whole image
    psnr_y: float | None = None  # the lower of whole-image and border-shaved Y-PSNR against the decoded source
    psnr_rgb: float | None = None
    encodes: int | None = None  # layer encodes the rate control made for this image (score targets)
    thumbnail_psnr: float | None = None  # small image vs Pillow's bicubic downscale, Y
    enhancement_format: str | None = None
    enhancement_quality: int | None = None  # an eye-tuned AVIF / JPEG XL band layer: its finest band's quality
    enhancement_size: int | None = None
    enhancement_sha256: str | None = None
    enhancement_level: int | None = None  # an AVIF layer's level (pipeline.codec.layer: 63 - libaom cq-level)
    # cost (pipeline.jobs.prices, the run's cost report): CPU-seconds of this process for each stage of this
    # image (time.process_time() deltas); None where the stage did not run or was not measured
    cpu_decode_s: float | None = None
    cpu_tad_s: float | None = None
    cpu_tau_s: float | None = None
    cpu_search_s: float | None = None
    cpu_encode_s: float | None = None
    cpu_verify_s: float | None = None
    codec_version: str = CODEC_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Encoded(NamedTuple):
    """What the codec made of one image, by either path (a fixed small file or a fidelity target):
    the small file, its enhancement layer (None without one; always None for a fixed small file)
    and the record. Bad input gives small=None and a record whose status says why."""

    small: bytes | None
    layer: bytes | None
    record: CompressRecord
