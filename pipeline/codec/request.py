"""What to make of one image, and the one entry that makes it.

    request = Request.of(fidelity="high")                  # or Request.of(model_id="taid-x4", small_format="png")
    pairs = {m: load_pair(m) for m in request.models}
    small, layer, record = encode(data, request, pairs)    # an Encoded, whichever the path

A request is either one fixed small file (`fidelity` None: `options` names the model, and the
format, quality and scale where they are not the model's) or the smallest files whose verified
rehydration reaches a fidelity (`fidelity`: a pipeline.codec.presets.Fidelity; `options` then
gives only the limits and policies: max_pixels, tile, frames, bit depth, rehydrate format, verify).
Build it once per run (CompressArchiveParams.request(), the CLI's compress-file) and hand it down.

This module is light (no torch): `encode` imports the codec when it runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.codec.options import CodecOptions, Encoded
from pipeline.codec.presets import Fidelity, requested_fidelity

# the options a fidelity picks per image: naming them too is refused (requested_fidelity's rule)
_PICKED_BY_FIDELITY = (("small_format", "--small-format"), ("quality", "--quality"), ("scale", "--scale"))


class Request(BaseModel):
    """One fixed small file (`fidelity` None) or a fidelity target, with the codec options."""

    model_config = ConfigDict(frozen=True)

    options: CodecOptions = Field(default_factory=CodecOptions)
    fidelity: Fidelity | None = Field(None, description="None: one fixed small file as `options` say")

    @model_validator(mode="after")
    def _one_kind(self) -> "Request":
        if self.fidelity is not None:
            fixed = [flag for name, flag in _PICKED_BY_FIDELITY if getattr(self.options, name) is not None]
            if fixed:
                raise ValueError("a fidelity target picks the small file's format, quality and scale per image: drop "
                                 f"{'/'.join(fixed)}, or drop the fidelity / target PSNR to write one fixed layer")
        return self

    @classmethod
    def of(cls, fidelity: str | None = None, target_psnr: float | None = None, model_id: str | None = None,
           small_format: str | None = None, quality: int | None = None, scale: int | None = None,
           effort: str | None = None, preview_long_side: int | None = None, *, target_score: float | None = None,
           **limits) -> "Request":
        """The request a command line or a job's parameters ask for (requested_fidelity's rule: a
        fidelity, a target, or neither with nothing fixed named, asks for a fidelity; an explicit
        model, format, quality or scale alone, for exactly that small file). `limits`: the other
        CodecOptions fields (max_pixels, tile, verify, ...); None values mean the default."""
        spec = requested_fidelity(fidelity, target_psnr, model_id, small_format, quality, scale, effort,
                                  preview_long_side, target_score=target_score)
        fields = {"model_id": model_id, "small_format": small_format, "quality": quality, "scale": scale, **limits}
        return cls(options=CodecOptions(**{k: v for k, v in fields.items() if v is not None}), fidelity=spec)

    @property
    def models(self) -> list[str]:
        """The model pairs `encode` needs, by id."""
        return list(self.fidelity.models) if self.fidelity is not None else [self.options.model_id]

    def columns(self) -> dict:
        """What the manifest records of the request: its `fidelity` (preset name, or "target"), and the
        target it is verified against: `target_score` (SSIMULACRA2, worst region) or `target_psnr`."""
        if self.fidelity is None:
            return {"fidelity": None, "target_psnr": None, "target_score": None}
        return {"fidelity": self.fidelity.name, "target_psnr": self.fidelity.target_psnr,
                "target_score": self.fidelity.target_score}


def encode(data: bytes, request: Request, pairs: Mapping[str, object]) -> Encoded:
    """One image file as the request asks: Encoded(small, layer, record). `pairs` maps each of
    `request.models` to its loaded pair (more is fine). A fixed request never has a layer. Bad
    input gives small=None and a record with a status; a missing pair or a scale the pair cannot
    reach is the caller's error (ValueError)."""
    missing = [m for m in request.models if m not in pairs]
    if missing:
        raise ValueError(f"encode needs the pairs {', '.join(missing)} (request.models)")
    if request.fidelity is not None:
        from pipeline.codec.fidelity import compress_to_target

        return compress_to_target(data, dict(pairs), request.fidelity, request.options)
    from pipeline.codec.image import compress_image

    return compress_image(data, pairs[request.options.model_id], request.options)
