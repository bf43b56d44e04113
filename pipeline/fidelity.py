"""Fidelity you choose: per-image rate control to a target Y-PSNR, guaranteed by verification.

    spec = resolve_fidelity("standard")                      # or resolve_fidelity(None, target_psnr=38)
    small, layer, record = compress_to_target(data, pairs, spec, CodecOptions())

Per image, the codec tries the representations the spec allows and keeps the one with the fewest
stored bytes (small file + enhancement layer) whose rehydration reaches the target:
1. for each base (a model pair, hence a scale): the small file alone, at the lowest of the base's
   small-file qualities whose prediction TAU(small) reaches the target;
2. else that base's small file at its layer quality plus an enhancement layer (pipeline.enhancement):
   AVIF of the residual at the lowest quality that reaches the target, found by interpolation
   search; where no AVIF quality does, a lossless layer (exact: WebP lossless of the source
   itself, which does not depend on the prediction, so it stays exact on any device);
3. the chosen files are written with their final metadata, then decoded again exactly as
   rehydration does (small file -> TAU -> layer -> the output file rehydration writes: PNG unless
   `rehydrate_format` says otherwise, since a JPEG of the restored pixels would add its own loss),
   and the fidelity measured on that. A record is `ok` only when that verified fidelity reaches
   the target.

Fidelity is Y-PSNR (BT.601 luma in [16, 235], as the SR papers and `models.metrics`) against the
decoded source (EXIF orientation applied, grey kept grey), taken as the lower of the whole image and
the image with `scale` border pixels shaved, so either convention sees at least the target.

Presets (PRESETS, `--fidelity NAME`):
- preview   30 dB: the small file alone where it can (x2 base, quality searched); thumbnail-grade.
- standard  36 dB (the default): x4 base + AVIF layer; a faithful copy at about AVIF's bytes.
- high      40 dB: same representation, finer layer.
- lossless  exact: a thumbnail-grade x4 small file + lossless layer; every pixel of the decoded
            source comes back, whatever device or precision rehydrates it.
The base models and qualities were chosen on held-out training photos (docs/fidelity.md).
"""

from __future__ import annotations

import io
import math
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from models.metrics import psnr, rgb_to_y
from pipeline import codec, enhancement, tiling
from pipeline.inference import CROSS_DEVICE_MAX_PSNR_DROP_DB

EXACT = math.inf
# the highest explicit target: 8-bit rounding alone costs about 58.9 dB of Y-PSNR, so a finite
# target above this can only be met exactly; asking for exact is `lossless`, said so
MAX_TARGET_PSNR = 60.0
LOSSLESS_OUTPUTS = ("png", "tiff")  # rehydrated formats that hold the restored pixels exactly
TOLERANCE_DB = 0.0  # the target is a floor: no slack
# The search aims this far above a finite target, so that rehydrating on another device or precision
# (which moves TAU's output by a level or two: pipeline.inference.CROSS_DEVICE_MAX_PSNR_DROP_DB) still
# reaches the target; the compressing path's verification checks the target itself.
DEVICE_MARGIN_DB = CROSS_DEVICE_MAX_PSNR_DROP_DB


class Base(BaseModel):
    """One base representation: a model pair (its scale) and small-file qualities."""

    model_id: str
    qualities: list[int] = Field(default_factory=list, description="qualities tried for the small file alone, ascending")
    layer_quality: int | None = Field(None, description="small-file quality under a layer; None = the model's default")


class Fidelity(BaseModel):
    name: str
    target_psnr: float = Field(gt=0, description="Y-PSNR floor in dB; inf = exact")
    bases: list[Base]
    layer_codec: Literal["avif", "webp-lossless"] = "avif"

    @property
    def models(self) -> list[str]:
        return [b.model_id for b in self.bases]


_LAYERED = [Base(model_id="taid-x4-webp", layer_quality=50)]
PRESETS: dict[str, Fidelity] = {
    "preview": Fidelity(name="preview", target_psnr=30.0, bases=[
        Base(model_id="taid-x2-webp", qualities=[30, 45, 60, 75, 90], layer_quality=60),
        Base(model_id="taid-x4-webp", layer_quality=50)]),
    "standard": Fidelity(name="standard", target_psnr=36.0, bases=_LAYERED),
    "high": Fidelity(name="high", target_psnr=40.0, bases=_LAYERED),
    "lossless": Fidelity(name="lossless", target_psnr=EXACT, bases=_LAYERED, layer_codec="webp-lossless"),
}
DEFAULT_FIDELITY = "standard"


def resolve_fidelity(name: str | None = None, target_psnr: float | None = None, model_id: str | None = None) -> Fidelity:
    """The spec for a preset name or an explicit target (not both); `model_id` makes that pair the
    only base (its small file alone where it reaches the target, else with a layer)."""
    if name is not None and target_psnr is not None:
        raise ValueError("give a fidelity preset or a target PSNR, not both")
    if target_psnr is not None:
        if not target_psnr > 0:
            raise ValueError("target PSNR must be positive (dB)")
        if target_psnr > MAX_TARGET_PSNR:  # refused, not silently made exact at several times the bytes
            raise ValueError(f"target PSNR {target_psnr:g} dB is above what any lossy layer reaches ({MAX_TARGET_PSNR:g} "
                             "dB, about the rounding noise of 8-bit pixels): ask for --fidelity lossless for an exact copy")
        like = PRESETS["preview" if target_psnr <= PRESETS["preview"].target_psnr else DEFAULT_FIDELITY]
        spec = like.model_copy(update={"name": "target", "target_psnr": float(target_psnr)})
    else:
        name = name or DEFAULT_FIDELITY
        if name not in PRESETS:
            raise ValueError(f"unknown fidelity {name!r} (choose from {', '.join(PRESETS)}, or give a target PSNR)")
        spec = PRESETS[name]
    if model_id:
        spec = spec.model_copy(update={"bases": [Base(model_id=model_id, qualities=[30, 45, 60, 75, 90])]})
    return spec


def requested_fidelity(fidelity: str | None = None, target_psnr: float | None = None, model_id: str | None = None,
                       small_format: str | None = None, quality: int | None = None,
                       scale: int | None = None) -> Fidelity | None:
    """What a compress request asks for: the fidelity it guarantees, or None for one fixed small file
    (an explicit model, small format, quality or scale without a fidelity or target asks for exactly
    that). A fidelity picks format, quality and scale per image, so naming them too is refused. The
    one rule for the CLI's compress-file and CompressArchiveParams."""
    fixed = [name for name, v in (("--small-format", small_format), ("--quality", quality), ("--scale", scale))
             if v is not None]
    if fidelity is None and target_psnr is None and (model_id is not None or fixed):
        return None
    if fixed:
        raise ValueError("a fidelity target picks the small file's format, quality and scale per image: drop "
                         f"{'/'.join(fixed)}, or drop the fidelity / target PSNR to write one fixed layer")
    return resolve_fidelity(fidelity, target_psnr, model_id)


def fidelity_psnr(out: np.ndarray, ref: np.ndarray, scale: int) -> float:
    """The lower of whole-image and `scale`-shaved Y-PSNR (H x W x 3 uint8 each)."""
    yo, yr = rgb_to_y(out), rgb_to_y(ref)
    shaved = psnr(yo, yr, scale) if min(out.shape[:2]) > 2 * scale else math.inf
    return min(psnr(yo, yr), shaved)


class _Candidate(NamedTuple):
    total: int  # bytes stored: small file + layer
    base: Base
    small_quality: int | None
    layer_codec: str | None = None
    layer_quality: int | None = None


def _channel(arr: np.ndarray, grey: bool) -> np.ndarray:
    return arr[..., 0] if grey else arr


def compress_to_target(data: bytes, pairs: dict, spec: Fidelity, options: codec.CodecOptions | None = None):
    """(small file, enhancement layer or None, record) for one image file. `pairs` maps each of the
    spec's model ids to its loaded pair. Bad input gives (None, None, record with a status), as
    codec.compress_image does; an image whose verified fidelity misses the target is `failed_fidelity`."""
    options = options or codec.CodecOptions()
    rec = codec.CompressRecord(source_size=len(data), source_sha256=codec._sha256(data), fidelity=spec.name,
                               target_psnr=spec.target_psnr)
    files, rec = codec.decoded_then(data, options, rec, lambda dec, rec: _search(dec, pairs, spec, options, rec))
    small, layer = files or (None, None)
    return small, layer, rec


class _Base:
    """One base of one image: TAD once, small files and predictions per quality, cached."""

    def __init__(self, dec, pair, base: Base, options: codec.CodecOptions, rec: codec.CompressRecord):
        self.dec, self.pair, self.base = dec, pair, base
        fmt, default_q = codec.small_file_settings(pair)
        self.options = options.model_copy(update={"model_id": pair.model_id, "scale": pair.scale, "small_format": fmt,
                                                  "quality": default_q})
        self.rec = rec.model_copy(update={"scale": pair.scale, "model_id": pair.model_id, "model_sha256": pair.weights_sha256})
        self.img, tiles = codec._downscale(dec, pair, pair.scale, options.tile)
        self.rec = self.rec.model_copy(update={"tiles": tiles, "status": "ok"})
        self.lossy = fmt in codec.small_file.LOSSY_FORMATS
        self._cache: dict = {}

    def small(self, quality: int | None, **meta) -> tuple[bytes, codec.CompressRecord]:
        opts = self.options.model_copy(update={"quality": quality if self.lossy else None})
        return codec._encode_small(self.img, self.dec, opts, self.rec.model_copy(update=meta))

    def prediction(self, quality: int | None) -> tuple[int, np.ndarray]:
        """(small-file bytes, TAU(decoded small file)) at that quality."""
        if quality not in self._cache:
            small, rec = self.small(quality)
            pred = codec.predict(small, rec, self.pair, self.options.tile)
            self._cache[quality] = (len(small), pred, _small_pixels(small))
        size, pred, _ = self._cache[quality]
        return size, pred.color

    def verified_prediction(self, small: bytes, quality: int | None) -> codec.Prediction:
        """TAU of the small file as written: the cached one when the written file decodes to exactly
        the pixels it was computed from (it differs only in its metadata), else computed again."""
        cached = self._cache.get(quality)
        im, meta, icc, exif, _ = codec.small_file.read_small(small)
        if cached is not None and np.array_equal(np.asarray(im), cached[2]):
            return cached[1]._replace(meta=meta, icc=icc, exif=exif)
        return codec.predict(small, None, self.pair, self.options.tile)


def _small_pixels(small: bytes) -> np.ndarray:
    return np.asarray(codec.small_file.read_small(small)[0])


def _lowest_quality(measure, target: float, start: int = 60):
    """(quality, result) of the lowest quality in 0..100 whose measure(q)[1] reaches `target`, by
    interpolation search (fidelity rises with quality); None when even 100 does not."""
    tried: dict[int, tuple] = {}
    lo, hi = -1, 101  # lo: known to miss (or none yet), hi: known to reach (or none yet)
    q = start
    while True:
        tried[q] = measure(q)
        if tried[q][1] >= target:
            hi = q
        else:
            lo = q
        if hi - lo <= 1:
            break
        below = [(k, v[1]) for k, v in sorted(tried.items()) if k <= lo]
        above = [(k, v[1]) for k, v in sorted(tried.items()) if k >= hi]
        if below and above and above[0][1] > below[-1][1]:
            (k0, p0), (k1, p1) = below[-1], above[0]
            guess = round(k0 + (target - p0) * (k1 - k0) / (p1 - p0))
        elif below:  # everything so far misses: climb
            guess = below[-1][0] + 15
        else:
            guess = above[0][0] - 15
        q = min(max(guess, lo + 1), hi - 1)
    return (hi, tried[hi]) if hi <= 100 else None


SAMPLE_ABOVE_PIXELS = 1_500_000  # larger images: the layer's quality is searched on a sample of tiles first
SAMPLE_TILE = 256  # a multiple of AV1's 64-pixel superblocks: tiles do not share blocks in the mosaic
SAMPLE_FRACTION = 0.2


def _mosaic(arr: np.ndarray) -> np.ndarray:
    """About SAMPLE_FRACTION of the image's full tiles, spread evenly over it, packed into one image."""
    t = SAMPLE_TILE
    grid = [(y, x) for y in range(0, arr.shape[0] - t + 1, t) for x in range(0, arr.shape[1] - t + 1, t)]
    k = max(1, round(len(grid) * SAMPLE_FRACTION))
    picked = [grid[round(i * (len(grid) - 1) / max(k - 1, 1))] for i in range(k)]
    cols = math.ceil(math.sqrt(k))
    rows = [[arr[y:y + t, x:x + t] for y, x in picked[r * cols:(r + 1) * cols]] for r in range(math.ceil(k / cols))]
    rows[-1] += [np.zeros_like(rows[0][0])] * (cols - len(rows[-1]))
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)


def _settle(measure, target: float, q: int):
    """(layer, quality) at full size from a sampled estimate `q`: up (doubling steps, then bisection)
    until the target is reached, or down a step or two while there is room; None if 100 misses."""
    tried: dict[int, tuple[bytes, float]] = {}

    def at(k: int) -> tuple[bytes, float]:
        if k not in tried:
            tried[k] = measure(k)
        return tried[k]

    if at(q)[1] >= target:
        for _ in range(2):  # the estimate may be a little high
            if q == 0 or at(q)[1] - target < 0.25 or at(q - 1)[1] < target:
                break
            q -= 1
        return at(q)[0], q
    lo, step = q, 1
    while True:
        hi = min(100, lo + step)
        if at(hi)[1] >= target:
            break
        if hi == 100:
            return None
        lo, step = hi, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if at(mid)[1] >= target else (mid, hi)
    return at(hi)[0], hi


def _layer_search(ref: np.ndarray, pred: np.ndarray, grey: bool, target: float, scale: int, codec_name: str):
    """(layer bytes, codec, quality) of the cheapest layer reaching `target`: an AVIF of the
    residual, or of the image itself where that is smaller (TAU predicts screenshots and text
    badly); a lossless layer when the target is exact or no AVIF quality reaches it.

    Large images are searched on a mosaic of sampled tiles (a fifth of the pixels), then settled
    at full size from that estimate (usually one or two full-size encodes instead of six to ten)."""
    src, prd = _channel(ref, grey), _channel(pred, grey)

    def measurer(kind: str, s: np.ndarray, p: np.ndarray, whole: bool):
        def measure(q: int) -> tuple[bytes, float]:
            layer = enhancement.encode_layer(s, p, kind, q)
            out = enhancement.apply_layer(p, layer)
            if not whole:  # a mosaic: plain Y-PSNR (its borders are not the image's)
                return layer, psnr(rgb_to_y(_rgb(out)), rgb_to_y(_rgb(s)))
            return layer, fidelity_psnr(_rgb(out), ref, scale)
        return measure

    if codec_name == "avif" and math.isfinite(target):
        sampled = src.shape[0] * src.shape[1] > SAMPLE_ABOVE_PIXELS
        s, p = (_mosaic(src), _mosaic(prd)) if sampled else (src, prd)
        found = []
        residual = _lowest_quality(measurer("avif", s, p, not sampled), target)
        if residual:
            found.append((residual[1][0], "avif", residual[0]))
        # the image itself, searched from the residual's quality (usually two or three encodes)
        full = _lowest_quality(measurer("avif-full", s, p, not sampled), target, residual[0] if residual else 80)
        if full:
            found.append((full[1][0], "avif-full", full[0]))
        for layer, kind, q in sorted(found, key=lambda f: len(f[0])):
            if not sampled:
                return layer, kind, q
            settled = _settle(measurer(kind, src, prd, True), target, q)
            if settled:
                return settled[0], kind, settled[1]
    # exact: the source itself, losslessly; not the residual, whose exactness would depend on TAU
    # computing the same bits on every device (pipeline/enhancement.py, docs/gpu.md)
    return enhancement.encode_layer(src, prd, "webp-lossless-full"), "webp-lossless-full", None


def _rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


THUMBNAIL_FLOOR_DB = 33.0  # a preview-only small file stays a faithful thumbnail (>= 32 dB vs bicubic, with margin)


def _cheapest_thumbnail(b: "_Base", ref: np.ndarray, quality: int, size: int) -> tuple[int, int]:
    for q in (10, 20, 30, 40):
        if q >= quality:
            break
        small, _ = b.small(q)
        if thumbnail_psnr(small, ref, b.pair.scale) >= THUMBNAIL_FLOOR_DB:
            return q, len(small)
    return quality, size


def _search(dec, pairs: dict, spec: Fidelity, options: codec.CodecOptions, rec: codec.CompressRecord):
    ref = codec.reference_rgb(dec)
    grey = bool(dec.info["is_gray"])
    target = spec.target_psnr + DEVICE_MARGIN_DB  # inf stays inf (exact)
    best: tuple[_Candidate, _Base, bytes | None] | None = None
    for base in spec.bases:
        b = _Base(dec, pairs[base.model_id], base, options, rec)
        found = None
        for q in (base.qualities if b.lossy else [None]):
            size, pred = b.prediction(q)
            if fidelity_psnr(pred, ref, b.pair.scale) >= target:
                found = (_Candidate(total=size, base=base, small_quality=q), None)
                break
        if found is None:
            q = base.layer_quality if base.layer_quality is not None else b.options.quality
            size, pred = b.prediction(q)
        if found is None and fidelity_psnr(pred, ref, b.pair.scale) >= target:  # smooth images: no layer needed
            found = (_Candidate(total=size, base=base, small_quality=q), None)
        if found is None:
            layer, lcodec, lq = _layer_search(ref, pred, grey, target, b.pair.scale, spec.layer_codec)
            if lcodec in enhancement.PREDICTION_FREE and b.lossy:  # the small file is then only the preview: the cheapest faithful one
                q, size = _cheapest_thumbnail(b, ref, q, size)
            found = (_Candidate(total=size + len(layer), base=base, small_quality=q, layer_codec=lcodec, layer_quality=lq), layer)
        if best is None or found[0].total < best[0].total:
            best = (found[0], b, found[1])
    return _finalize(best, ref, spec.target_psnr, dec, options)


def thumbnail_psnr(small: bytes, ref: np.ndarray, scale: int) -> float:
    """Y-PSNR of the decoded small file against Pillow's bicubic downscale of the (padded) source:
    is the preview still a faithful thumbnail?"""
    thumb = Image.open(io.BytesIO(small)).convert("RGB")
    padded = tiling.pad_to_multiple(ref, scale)
    bicubic = Image.fromarray(padded).resize(thumb.size, Image.BICUBIC)
    return psnr(rgb_to_y(np.asarray(thumb)), rgb_to_y(np.asarray(bicubic)))


def _finalize(best, ref: np.ndarray, target: float, dec, options: codec.CodecOptions):
    cand, b, layer = best
    scale = b.pair.scale
    # rehydrate to a lossless format unless told otherwise: a JPEG of the restored pixels would add
    # its own loss on top of the fidelity just verified
    fmt, q = (options.rehydrate_format, options.rehydrate_quality) if options.rehydrate_format else ("png", None)
    meta = {"rehydrate_format": fmt, "rehydrate_quality": q,
            "enhancement_sha256": codec._sha256(layer) if layer is not None else None}
    small, rec = b.small(cand.small_quality, **meta)
    # verify: decode exactly what is written, as rehydration does (TAU is reused when the written small
    # file decodes to the very pixels it was run on), to the output it writes
    pred = b.verified_prediction(small, cand.small_quality)
    img = codec._to_pil(codec.enhance(pred, layer), pred.alpha, pred.is_gray, pred.has_alpha)
    if fmt not in LOSSLESS_OUTPUTS:
        img = codec.decode_output(codec.encode_restored(img, pred.meta, pred.icc, pred.exif))
    out = np.asarray(img.convert("RGB"))
    achieved = fidelity_psnr(out, ref, scale)
    rec = rec.model_copy(update={
        "psnr_y": achieved, "psnr_rgb": psnr(out, ref), "thumbnail_psnr": thumbnail_psnr(small, ref, scale),
        "enhancement_format": cand.layer_codec, "enhancement_quality": cand.layer_quality,
        "enhancement_size": len(layer) if layer is not None else None,
        "enhancement_sha256": meta["enhancement_sha256"],
    })
    if achieved < target - TOLERANCE_DB:
        return None, rec.model_copy(update={
            "status": "failed_fidelity",
            "error_message": f"verified rehydration reaches {achieved:.2f} dB Y-PSNR, below the target {target:.2f} dB"})
    return (small, layer), rec
