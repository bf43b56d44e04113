"""What fidelity a compress request asks for: the presets, the efforts, an explicit target, and the
one rule that tells a fidelity request from a fixed small file (`requested_fidelity`). Specs only:
the search that meets them is pipeline.codec.fidelity; this module stays light (no torch), so job
parameters and requests are built without loading the networks.

A fidelity is a floor in one measure (pipeline.codec.measure):
- `target_score`: SSIMULACRA2 of the image's worst region (256-px tiles), the measure of the presets
  since issue 29. Its scale: 90 = no difference in a flicker test at 1:1, 80 = none side by side at
  1:1, 70 high quality, 50 medium, 30 low. A mean over a whole photo hides a smeared face in a
  corner; the worst region does not.
- `target_psnr`: Y-PSNR in dB, the SR papers' measure (`--target-psnr`). It does not guarantee what
  a person sees: a soft, noisy phone photo keeps a small luma error while its texture and colour
  are gone (issue 29: 36 dB photos scored 18.6 on average).
- exact (`lossless`, `original`): target_psnr = inf.
Beside the perceptual floor a pixel-level guard, `rgb_psnr_floor` (RGB PSNR, dB), catches what a
perceptual score could be fooled by (a global colour or brightness shift the score discounts)."""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

from pydantic import BaseModel, Field, model_validator

EXACT = math.inf
# the highest explicit target: 8-bit rounding alone costs about 58.9 dB of Y-PSNR, so a finite
# target above this can only be met exactly; asking for exact is `lossless`, said so
MAX_TARGET_PSNR = 60.0
# SSIMULACRA2 is 100 only for identical images, so a floor of 100 asks for `lossless`
MAX_TARGET_SCORE = 100.0


class Base(BaseModel):
    """One base representation: a model pair (its scale) and small-file qualities."""

    model_id: str
    qualities: list[int] = Field(default_factory=list, description="qualities tried for the small file alone, ascending")
    layer_quality: int | None = Field(None, description="small-file quality under a layer; None = the model's default")


Effort = Literal["fast", "default", "best"]


class EffortSettings(NamedTuple):
    final_speed: int  # libaom speed of the stored layer (6 finest ... 9 fastest)
    search_speed: int  # libaom speed of the sampled search on large images
    residual_below: float  # images of at most this many pixels also try the residual of TAU(small) (TAD + TAU at
    # full size): TAU's CPU grows with the pixels, an object's two PUTs do not, so small images can afford it
    refine: bool  # the residual layer (one AVIF): after a full-size encode that overshoots, try coarser levels
    aim_above: float  # large images: the first pass aims this many levels (of ~0.55 dB) above the target, so
    # that it rarely needs finer bands (each a fraction of an encode) ...
    trim_above: float  # ... and where it lands more than this many levels above, bands are made coarser
    jxl_effort: int = 5  # libjxl effort of JPEG XL bands (score targets: pipeline.codec.rate); effort 7 costs twice
    # the CPU for bytes within 1.1 % at equal worst-region score, effort 4 stores 5-18 % more
    # (phone-photo crops: benchmarks/results/band_coders.md)


EFFORTS: dict[str, EffortSettings] = {
    "fast": EffortSettings(final_speed=9, search_speed=9, residual_below=0, refine=False, aim_above=0.0,
                           trim_above=0.8, jxl_effort=3),
    "default": EffortSettings(final_speed=7, search_speed=9, residual_below=1_000_000, refine=False, aim_above=0.0,
                              trim_above=0.5),
    "best": EffortSettings(final_speed=6, search_speed=9, residual_below=math.inf, refine=True, aim_above=0.0,
                           trim_above=0.0, jxl_effort=7),
}
DEFAULT_EFFORT = "default"  # benchmarks/results/economics.md: payback against bytes
PREVIEW_LONG_SIDE = 768  # a prediction-free layer's small file is only a preview: at most this long (px)


class Fidelity(BaseModel):
    name: str
    target_psnr: float | None = Field(None, gt=0, description="Y-PSNR floor in dB; inf = exact; None: a score target")
    target_score: float | None = Field(None, gt=0, lt=MAX_TARGET_SCORE,
                                       description="SSIMULACRA2 floor of the worst region; None: a PSNR target or exact")
    rgb_psnr_floor: float | None = Field(None, gt=0, description="pixel-level second guard beside a score target (dB)")
    bases: list[Base]
    layer_format: Literal["avif", "webp-lossless"] = "avif"
    effort: Effort = DEFAULT_EFFORT
    preview_long_side: int = Field(PREVIEW_LONG_SIDE, ge=16, description="long side of the small file when it is "
                                   "only the preview (the layer carries the fidelity)")
    original: bool = Field(False, description="rehydrate to the original file (byte for byte for JPEG sources)")

    @model_validator(mode="after")
    def _one_target(self) -> "Fidelity":
        if (self.target_psnr is None) == (self.target_score is None):
            raise ValueError("a fidelity has one target: a score (target_score) or a Y-PSNR (target_psnr; inf = exact)")
        return self

    @property
    def models(self) -> list[str]:
        return [b.model_id for b in self.bases]

    @property
    def exact(self) -> bool:
        return self.target_psnr is not None and math.isinf(self.target_psnr)

    @property
    def measure(self) -> str:
        """The measure the target is in (pipeline.codec.measure.MEASURES): exact counts as psnr-y (inf)."""
        return "ssimulacra2" if self.target_score is not None else "psnr-y"


_LAYERED = [Base(model_id="taid-x4-webp", layer_quality=50)]
# Floors chosen on the scale's published meaning and measured on real phone photos
# (benchmarks/results/perceptual.md). The RGB-PSNR guards sit below what those scores reach on the
# hardest natural texture we have (Set14 baboon's fur: score 82 at 27.9 dB, 87 at 29.0; phone photos
# reach 37+ dB at 80), so they bite only where the perceptual score is fooled.
PRESETS: dict[str, Fidelity] = {
    "preview": Fidelity(name="preview", target_score=60.0, rgb_psnr_floor=20.0, bases=[
        Base(model_id="taid-x2-webp", qualities=[30, 45, 60, 75, 90], layer_quality=60),
        Base(model_id="taid-x4-webp", layer_quality=50)]),
    "standard": Fidelity(name="standard", target_score=80.0, rgb_psnr_floor=24.0, bases=_LAYERED),
    "high": Fidelity(name="high", target_score=90.0, rgb_psnr_floor=27.0, bases=_LAYERED),
    "lossless": Fidelity(name="lossless", target_psnr=EXACT, bases=_LAYERED, layer_format="webp-lossless"),
    "original": Fidelity(name="original", target_psnr=EXACT, bases=_LAYERED, layer_format="webp-lossless",
                         original=True),
}
DEFAULT_FIDELITY = "standard"


def resolve_fidelity(name: str | None = None, target_psnr: float | None = None, model_id: str | None = None,
                     effort: str | None = None, preview_long_side: int | None = None, *,
                     target_score: float | None = None) -> Fidelity:
    """The spec for a preset name or one explicit target (a score or a PSNR, one of the three);
    `model_id` makes that pair the only base (its small file alone where it reaches the target,
    else with a layer)."""
    if effort is not None and effort not in EFFORTS:
        raise ValueError(f"unknown effort {effort!r} (choose from {', '.join(EFFORTS)})")
    given = [flag for flag, v in (("a fidelity preset", name), ("--target-score", target_score),
                                  ("--target-psnr", target_psnr)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give one of a fidelity preset, --target-score or --target-psnr, not {' and '.join(given)}")
    if target_score is not None:
        if not 0 < target_score <= MAX_TARGET_SCORE:
            raise ValueError(f"target score {target_score:g} is outside SSIMULACRA2's scale: give a score in (0, 100)")
        if target_score >= MAX_TARGET_SCORE:  # only identical images score 100
            raise ValueError("target score 100 means identical pixels: ask for --fidelity lossless for an exact copy")
        like = PRESETS["preview" if target_score <= PRESETS["preview"].target_score else DEFAULT_FIDELITY]
        spec = like.model_copy(update={"name": "target", "target_score": float(target_score)})
    elif target_psnr is not None:
        if not target_psnr > 0:
            raise ValueError("target PSNR must be positive (dB)")
        if target_psnr > MAX_TARGET_PSNR:  # refused, not silently made exact at several times the bytes
            raise ValueError(f"target PSNR {target_psnr:g} dB is above what any lossy layer reaches ({MAX_TARGET_PSNR:g} "
                             "dB, about the rounding noise of 8-bit pixels): ask for --fidelity lossless for an exact copy")
        like = PRESETS["preview" if target_psnr <= 30.0 else DEFAULT_FIDELITY]
        spec = like.model_copy(update={"name": "target", "target_psnr": float(target_psnr), "target_score": None,
                                       "rgb_psnr_floor": None})
    else:
        name = name or DEFAULT_FIDELITY
        if name not in PRESETS:
            raise ValueError(f"unknown fidelity {name!r} (choose from {', '.join(PRESETS)}, or give a target score)")
        spec = PRESETS[name]
    if model_id:
        from models.zoo import colour_only

        if colour_only(model_id):  # its grey small file has no lossy quality to search nor a layer to add
            raise ValueError(f"{model_id} writes one fixed grey small file: drop the fidelity / target")
        spec = spec.model_copy(update={"bases": [Base(model_id=model_id, qualities=[30, 45, 60, 75, 90])]})
    if effort is not None:
        spec = spec.model_copy(update={"effort": effort})
    if preview_long_side is not None:
        spec = Fidelity(**{**spec.model_dump(), "preview_long_side": preview_long_side})  # validated
    return spec


def requested_fidelity(fidelity: str | None = None, target_psnr: float | None = None, model_id: str | None = None,
                       small_format: str | None = None, quality: int | None = None,
                       scale: int | None = None, effort: str | None = None,
                       preview_long_side: int | None = None, *, target_score: float | None = None) -> Fidelity | None:
    """What a compress request asks for: the fidelity it guarantees, or None for one fixed small file
    (an explicit model, small format, quality or scale without a fidelity or target asks for exactly
    that). A fidelity picks format, quality and scale per image, so naming them too is refused. The
    one rule for the CLI's compress-file and CompressArchiveParams."""
    fixed = [name for name, v in (("--small-format", small_format), ("--quality", quality), ("--scale", scale))
             if v is not None]
    if fidelity is None and target_psnr is None and target_score is None and (model_id is not None or fixed):
        return None
    if fixed:
        raise ValueError("a fidelity target picks the small file's format, quality and scale per image: drop "
                         f"{'/'.join(fixed)}, or drop the fidelity / target PSNR to write one fixed layer")
    return resolve_fidelity(fidelity, target_psnr, model_id, effort, preview_long_side, target_score=target_score)
