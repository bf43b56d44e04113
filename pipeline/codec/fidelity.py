"""Fidelity you choose: per-image rate control to a target Y-PSNR, guaranteed by verification.

    spec = resolve_fidelity("standard")                      # or resolve_fidelity(None, target_psnr=38)
    small, layer, record = compress_to_target(data, pairs, spec, CodecOptions())   # an Encoded

Per image, the codec tries the representations the spec allows and keeps the one with the fewest
stored bytes (small file + enhancement layer) whose rehydration reaches the target:
1. for each base (a model pair, hence a scale): the small file alone, at the lowest of the base's
   small-file qualities whose prediction TAU(small) reaches the target;
2. else that base's small file at its layer quality plus an enhancement layer (pipeline.codec.layer):
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

Effort (`--effort fast|default|best`, EFFORTS): how hard the search works for the bytes. `fast` and
`default` run no TAU while compressing when a layer is needed: the layer is AVIF of the image itself
(prediction-free), its AV1 level estimated on a sample of tiles at libaom's fastest speed and settled
by one full-size encode at the effort's final speed (a second only when the first misses); the
small file is then only the preview, made by TAD from a box-reduced copy when the image is large
(`preview_long_side`). `best` also searches the residual of TAU(small) at full size, at speed 6,
and tries one level coarser when the first encode overshoots. Bytes against CPU seconds per effort:
benchmarks/results/economics.md, which chose the default.

Presets (PRESETS, `--fidelity NAME`):
- preview   30 dB: the small file alone where it can (x2 base, quality searched); thumbnail-grade.
- standard  36 dB (the default): x4 base + AVIF layer; a faithful copy at about AVIF's bytes.
- high      40 dB: same representation, finer layer.
- lossless  exact: a thumbnail-grade x4 small file + lossless layer; every pixel of the decoded
            source comes back, whatever device or precision rehydrates it. A JPEG source is kept as
            JPEG XL recompression of its own bytes (about 0.85x of the JPEG), other sources as WebP
            lossless of their pixels.
- original  as lossless, and rehydration writes the original file: a JPEG comes back byte for byte
            (sha256-checked against the manifest), any other source as its exact pixels.
The base models and qualities were chosen on held-out training photos (docs/fidelity.md). The specs
(Fidelity, PRESETS, EFFORTS, resolve_fidelity, requested_fidelity) live in the light pipeline.codec.presets.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
from PIL import Image

from models.metrics import psnr, rgb_to_y
from pipeline.codec import formats, rate, tiling
from pipeline.codec import image as codec
from pipeline.codec import layer as enhancement
from pipeline.codec.inference import CROSS_DEVICE_MAX_PSNR_DROP_DB

# the specs (presets, efforts, targets) live in the light pipeline.codec.presets; named here too for the callers
from pipeline.codec.presets import (  # noqa: F401
    DEFAULT_EFFORT,
    DEFAULT_FIDELITY,
    EFFORTS,
    EXACT,
    MAX_TARGET_PSNR,
    PRESETS,
    PREVIEW_LONG_SIDE,
    Base,
    Effort,
    EffortSettings,
    Fidelity,
    requested_fidelity,
    resolve_fidelity,
)

LOSSLESS_OUTPUTS = formats.LOSSLESS_OUTPUTS  # rehydrated formats that hold the restored pixels exactly
TOLERANCE_DB = 0.0  # the target is a floor: no slack
# The search aims this far above a finite target, so that rehydrating on another device or precision
# (which moves TAU's output by a level or two: pipeline.codec.inference.CROSS_DEVICE_MAX_PSNR_DROP_DB) still
# reaches the target; the compressing path's verification checks the target itself.
DEVICE_MARGIN_DB = CROSS_DEVICE_MAX_PSNR_DROP_DB

PREVIEW_TAD_PIXELS = 2_000_000  # a preview's TAD runs on at most this many (box-reduced) pixels (PREVIEW_LONG_SIDE)


def fidelity_psnr(out: np.ndarray, ref, scale: int) -> float:
    """The lower of whole-image and `scale`-shaved Y-PSNR (H x W x 3 uint8 each; `ref` may be a
    Reference, whose luma is computed once)."""
    from pipeline.codec.measure import y_psnr_floor

    yr = ref.y if isinstance(ref, Reference) else rgb_to_y(ref)
    return y_psnr_floor(rgb_to_y(out), yr, scale)


class Reference:
    """The decoded source an image is measured against, its luma computed once (a 12 MP image's
    luma costs about as much as a fast AVIF encode of a sample)."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb
        self.y = rgb_to_y(rgb)
        self.shape = rgb.shape
        self._bicubic: dict = {}

    def bicubic(self, size: tuple[int, int], scale: int) -> np.ndarray:
        """Pillow's bicubic downscale of the (padded) source to `size`, Y: a thumbnail's reference."""
        if size not in self._bicubic:
            padded = tiling.pad_to_multiple(self.rgb, scale)
            self._bicubic[size] = rgb_to_y(np.asarray(Image.fromarray(padded).resize(size, Image.BICUBIC)))
        return self._bicubic[size]


class Stages:
    """CPU seconds of one image by stage (the record's cpu_*_s columns): `with stages("tad"): ...`."""

    NAMES = ("tad", "tau", "search", "encode", "verify")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.NAMES, 0.0)

    @contextmanager
    def __call__(self, stage: str):
        t = time.process_time()
        try:
            yield
        finally:
            self.seconds[stage] += time.process_time() - t

    def move(self, seconds: float, src: str, dst: str) -> None:
        self.seconds[src] -= seconds
        self.seconds[dst] += seconds

    def columns(self) -> dict:
        return {f"cpu_{k}_s": round(v, 4) for k, v in self.seconds.items()}


class _Candidate(NamedTuple):
    total: int  # bytes stored: small file + layer
    base: Base
    small_quality: int | None
    layer_format: str | None = None
    layer_level: int | None = None
    layer_quality: int | None = None  # an eye-tuned AVIF or JPEG XL band layer: its finest band's quality
    measured: tuple | None = None  # (Score, decoded pixels) a perceptual search measured, for verification
    encodes: int = 0  # layer encodes the search made
    note: str | None = None


def _channel(arr: np.ndarray, grey: bool) -> np.ndarray:
    return arr[..., 0] if grey else arr


def compress_to_target(data: bytes, pairs: dict, spec: Fidelity, options: codec.CodecOptions | None = None
                       ) -> codec.Encoded:
    """Encoded(small file, enhancement layer or None, record) for one image file. `pairs` maps each of
    the spec's model ids to its loaded pair. Bad input gives Encoded(None, None, record with a status),
    as codec.compress_image does; an image whose verified fidelity misses the target is `failed_fidelity`.
    `options` gives the limits and policies (max_pixels, tile, frames, bit depth, rehydrate format);
    the spec picks model, format, quality and scale per image."""
    options = options or codec.CodecOptions()
    rec = codec.CompressRecord(source_size=len(data), source_sha256=codec._sha256(data), fidelity=spec.name,
                               target_psnr=spec.target_psnr, target_score=spec.target_score)
    files, rec = codec.decoded_then(data, options, rec,
                                    lambda dec, rec: _search(dec, pairs, spec, options, rec, data))
    small, layer = files or (None, None)
    return codec.Encoded(small, layer, rec)


def _preview_scale(pair, width: int, height: int, long_side: int) -> int:
    """The smallest power of the pair's scale that brings the long side to at most `long_side` and
    TAD's (box-reduced) input to at most PREVIEW_TAD_PIXELS: TAD at full size costs about as much
    CPU as the layer's own encode, for a thumbnail nobody looks at in full."""
    s = pair.scale
    while s * pair.scale <= 128 and (-(-max(width, height) // s) > long_side
                                     or width * height / (s // pair.scale) ** 2 > PREVIEW_TAD_PIXELS):
        s *= pair.scale
    return s


def _reduced(dec, factor: int, scale: int):
    """`dec` padded to a multiple of `scale` and box-reduced by `factor` (a preview's input: TAD
    then runs on 1/factor^2 of the pixels)."""
    if factor == 1:
        return dec
    rgb = np.asarray(Image.fromarray(tiling.pad_to_multiple(dec.rgb, scale)).reduce(factor))
    alpha = None
    if dec.alpha is not None:
        alpha = np.asarray(Image.fromarray(tiling.pad_to_multiple(dec.alpha, scale)).reduce(factor))
    return dataclasses.replace(dec, rgb=rgb, alpha=alpha)


class _Base:
    """One base of one image: TAD once, small files and predictions per quality, cached.
    `preview_only`: the small file is only a preview (a prediction-free layer carries the
    fidelity), so TAD runs on a box-reduced copy where the image is larger than a preview."""

    def __init__(self, dec, pair, base: Base, options: codec.CodecOptions, rec: codec.CompressRecord,
                 stages: Stages | None = None, preview_long_side: int | None = None):
        self.dec, self.pair, self.base = dec, pair, base
        self.stages = stages or Stages()
        scale = pair.scale
        if preview_long_side is not None:
            scale = _preview_scale(pair, dec.rgb.shape[1], dec.rgb.shape[0], preview_long_side)
        fmt, default_q = codec.small_file_settings(pair)
        self.options = options.model_copy(update={"model_id": pair.model_id, "scale": scale, "small_format": fmt,
                                                  "quality": default_q})
        self.rec = rec.model_copy(update={"scale": scale, "model_id": pair.model_id, "model_sha256": pair.weights_sha256})
        with self.stages("tad"):
            self.img, tiles = codec._downscale(_reduced(dec, scale // pair.scale, scale), pair, pair.scale,
                                               options.tile)
        self.rec = self.rec.model_copy(update={"tiles": tiles, "status": "ok"})
        self.lossy = fmt in codec.small_file.LOSSY_FORMATS
        self.note: str | None = None  # for the record (e.g. why a JPEG is kept as pixels)
        self._cache: dict = {}

    def small(self, quality: int | None, **meta) -> tuple[bytes, codec.CompressRecord]:
        opts = self.options.model_copy(update={"quality": quality if self.lossy else None})
        return codec._encode_small(self.img, self.dec, opts, self.rec.model_copy(update=meta))

    def prediction(self, quality: int | None) -> tuple[int, np.ndarray]:
        """(small-file bytes, TAU(decoded small file)) at that quality."""
        if quality not in self._cache:
            small, rec = self.small(quality)
            with self.stages("tau"):
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
        with self.stages("tau"):
            return codec.predict(small, None, self.pair, self.options.tile)


def _small_pixels(small: bytes) -> np.ndarray:
    return np.asarray(codec.small_file.read_small(small)[0])


def _lowest_quality(measure, target: float, start: int = 60, top: int = 100):
    """(quality, result) of the lowest quality in 0..top whose measure(q)[1] reaches `target`, by
    interpolation search (fidelity rises with quality); None when even `top` does not."""
    tried: dict[int, tuple] = {}
    lo, hi = -1, top + 1  # lo: known to miss (or none yet), hi: known to reach (or none yet)
    q = min(start, top)
    step = max(2, top * 15 // 100)
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
            guess = below[-1][0] + step
        else:
            guess = above[0][0] - step
        q = min(max(guess, lo + 1), hi - 1)
    return (hi, tried[hi]) if hi <= top else None


SAMPLE_ABOVE_PIXELS = rate.SAMPLE_ABOVE_PIXELS  # larger images: the layer's level is searched on a sample of tiles first
SAMPLE_TILE = 256  # a multiple of AV1's 64-pixel superblocks: tiles do not share blocks in the mosaic
SAMPLE_FRACTION = 0.2
# Y-PSNR of a full-size encode at the final speed minus that of the sample mosaic at the search speed,
# at one level, per final speed: the sampled search aims this much below the target. Medians measured
# on training photos by `python benchmarks/economics.py --calibrate` (benchmarks/results/economics_calibration.json)
SAMPLE_OFFSET_DB = {6: 0.95, 7: 0.60, 8: 0.27, 9: -0.03}


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


def _settle(measure, target: float, q: int, top: int = 100, refine: bool = True):
    """(layer, quality) at full size from a sampled estimate `q`: up (doubling steps, then bisection)
    until the target is reached, or (`refine`) down a step or two while there is room; None if `top` misses."""
    tried: dict[int, tuple[bytes, float]] = {}

    def at(k: int) -> tuple[bytes, float]:
        if k not in tried:
            tried[k] = measure(k)
        return tried[k]

    if at(q)[1] >= target:
        for _ in range(2 if refine else 0):  # the estimate may be a little high
            if q == 0 or at(q)[1] - target < 0.25 or at(q - 1)[1] < target:
                break
            q -= 1
        return at(q)[0], q
    lo, step = q, 1
    while True:
        hi = min(top, lo + step)
        if at(hi)[1] >= target:
            break
        if hi == top:
            return None
        lo, step = hi, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if at(mid)[1] >= target else (mid, hi)
    return at(hi)[0], hi


def _measurer(kind: str, s: np.ndarray, p: np.ndarray | None, ref: Reference | None, scale: int, speed: int,
              grey: bool):
    """measure(level) -> (layer, Y-PSNR) of a layer of `kind` over `s` (the image or a mosaic of it).
    `ref` given: fidelity_psnr of the restored image against the whole source (what verification
    measures); None: plain Y-PSNR against `s` (a mosaic, whose borders are not the image's)."""
    stand_in = enhancement.no_prediction(s.shape)
    sy = None if ref is not None else rgb_to_y(_rgb(s))

    def measure(level: int) -> tuple[bytes, float]:
        layer = enhancement.encode_layer(s, p, kind, level, speed)
        out = _rgb(enhancement.apply_layer(p if p is not None else stand_in, layer))
        if ref is None:
            return layer, psnr(rgb_to_y(out), sy)
        return layer, fidelity_psnr(out, ref, scale)
    return measure


def _slope(points: dict[int, float]) -> float | None:
    """dB per level from a search's measured points: from the lowest level tried to the highest."""
    if len(points) < 2:
        return None
    (k0, p0), (k1, p1) = min(points.items()), max(points.items())
    return (p1 - p0) / (k1 - k0) if k1 > k0 and p1 > p0 else None


MIN_BAND_ROWS, MAX_BANDS = rate.MIN_BAND_ROWS, rate.MAX_BANDS  # the bands of a layer (rate.band_rows), both paths
DEFAULT_SLOPE_DB = 0.55  # dB per AVIF level when the search measured none (about 5 % bytes)


def _full_layer(ref: Reference, grey: bool, target: float, scale: int, effort: EffortSettings, stages: Stages):
    """(layer, codec, level) of AVIF of the image itself at the coarsest level(s) that reach
    `target`; None when no level does. Small images: one AVIF, level searched at the final speed.
    Large images: the level is estimated on a mosaic of tiles at the search speed, aimed
    SAMPLE_OFFSET_DB below the target, then the image is encoded in bands (`_Bands`) whose levels
    are settled one band at a time, so it lands within a fraction of a level of the target."""
    src = _channel(ref.rgb, grey)
    top = enhancement.AVIF_LEVELS
    if src.shape[0] * src.shape[1] <= SAMPLE_ABOVE_PIXELS or src.shape[0] < 2 * MIN_BAND_ROWS:
        measured = _measurer("avif-full", src, None, ref, scale, effort.final_speed, grey)
        with stages("search"):
            found = _lowest_quality(measured, target, start=36, top=top)
        if found is None:
            return None
        level, (layer, _) = found
        return layer, "avif-full", level
    with stages("search"):
        points: dict[int, float] = {}
        sampled = _measurer("avif-full", _mosaic(src), None, None, scale, effort.search_speed, grey)

        def on_sample(level: int):
            layer, p = sampled(level)
            points[level] = p
            return layer, p
        aim = target - SAMPLE_OFFSET_DB.get(effort.final_speed, 0.0) + effort.aim_above * DEFAULT_SLOPE_DB
        estimate = _lowest_quality(on_sample, aim, start=36, top=top)
    with stages("encode"):
        bands = _Bands(src, ref, scale, effort.final_speed, grey)
        settled = bands.settle(estimate[0] if estimate else top, target, _slope(points) or DEFAULT_SLOPE_DB,
                               trim_above=effort.trim_above)
    if not settled:
        return None
    return bands.layer(), "avif-bands", min(bands.levels)


class _Bands:
    """The avif-bands layer of one image under construction: per horizontal band its level, AVIF
    bytes and squared luma error (over the whole image and over the `scale`-shaved part), so the
    image's fidelity_psnr is known exactly from the sums without decoding the whole again."""

    def __init__(self, src: np.ndarray, ref: Reference, scale: int, speed: int, grey: bool):
        self.src, self.ref, self.scale, self.speed, self.grey = src, ref, scale, speed, grey
        h, w = src.shape[:2]
        self.rows = rate.band_rows(h)
        self.levels = [0] * len(self.rows)
        self.data: list[bytes] = [b""] * len(self.rows)
        self.sse = [(0.0, 0.0)] * len(self.rows)
        shaved_ok = min(h, w) > 2 * scale
        self.n_whole = h * w
        self.n_shaved = (h - 2 * scale) * (w - 2 * scale) if shaved_ok else 0

    def encode(self, i: int, level: int) -> None:
        a, b = self.rows[i]
        data = enhancement.encode_avif(self.src[a:b], level, self.speed)
        out = enhancement.decode_avif(data, self.grey)
        err = (rgb_to_y(_rgb(out)) - self.ref.y[a:b]) ** 2
        s = self.scale
        shaved = err[max(0, s - a):max(0, min(b, self.ref.shape[0] - s) - a), s:err.shape[1] - s]
        self.levels[i], self.data[i] = level, data
        self.sse[i] = (float(err.sum()), float(shaved.sum()) if self.n_shaved else 0.0)

    def psnr(self, sse: list[tuple[float, float]] | None = None) -> float:
        """fidelity_psnr of the bands as they stand (or with `sse` instead)."""
        sse = sse or self.sse
        whole = sum(e[0] for e in sse) / self.n_whole
        values = [whole] + ([sum(e[1] for e in sse) / self.n_shaved] if self.n_shaved else [])
        mse = max(values)
        return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)

    def _all(self, level: int) -> None:
        for i in range(len(self.rows)):
            self.encode(i, max(0, min(enhancement.AVIF_LEVELS, level)))

    def settle(self, level: int, target: float, slope: float, trim_above: float) -> bool:
        """Every band at `level`, then whole levels while far off, then one band at a time: finer
        where the error per byte is largest until the target is reached; then, where the bands
        stand more than `trim_above` levels above the target, coarser where the error per byte is
        smallest while the target still holds. False when the finest level misses."""
        top = enhancement.AVIF_LEVELS
        self._all(level)
        over = self.psnr() - target
        if over > 1.5 * slope:  # the estimate was far too fine: a whole level or more down, then back up
            self._all(level - int(over // slope))
        while (gap := target - self.psnr()) > 0:
            if all(lv >= top for lv in self.levels):
                return False
            if gap > 0.75 * slope:
                self._all(min(self.levels) + max(1, int(gap // slope)))
                continue
            i = max((j for j in range(len(self.rows)) if self.levels[j] < top),
                    key=lambda j: self.sse[j][0] / len(self.data[j]))
            self.encode(i, self.levels[i] + 1)
        if self.psnr() - target > trim_above * slope:
            gain = 10 ** (slope / 10)  # a level coarser multiplies a band's squared error about this much
            for i in sorted(range(len(self.rows)), key=lambda j: self.sse[j][0] / len(self.data[j])):
                if self.levels[i] == 0:
                    continue
                trial = list(self.sse)
                trial[i] = (self.sse[i][0] * gain, self.sse[i][1] * gain)
                if self.psnr(trial) < target + 0.02:
                    continue
                kept = (self.levels[i], self.data[i], self.sse[i])
                self.encode(i, self.levels[i] - 1)
                if self.psnr() < target:
                    self.levels[i], self.data[i], self.sse[i] = kept
        return True

    def layer(self) -> bytes:
        return enhancement.pack_bands([(b - a, d) for (a, b), d in zip(self.rows, self.data)])


def _residual_search(ref: Reference, pred: np.ndarray, grey: bool, target: float, scale: int,
                     effort: EffortSettings, stages: Stages):
    """(layer, level) of the AVIF of the residual prediction -> source at the coarsest level that
    reaches `target` (searched on a mosaic for large images, then settled); None if none does."""
    src, prd = _channel(ref.rgb, grey), _channel(pred, grey)
    top = enhancement.AVIF_LEVELS
    whole = _measurer("avif", src, prd, ref, scale, effort.final_speed, grey)
    with stages("search"):
        if src.shape[0] * src.shape[1] <= SAMPLE_ABOVE_PIXELS:
            found = _lowest_quality(whole, target, start=36, top=top)
            return (found[1][0], found[0]) if found else None
        sampled = _measurer("avif", _mosaic(src), _mosaic(prd), None, scale, effort.final_speed, grey)
        estimate = _lowest_quality(sampled, target, start=36, top=top)
        return _settle(whole, target, estimate[0] if estimate else top, top, refine=effort.refine)


def _exact_layer(src: np.ndarray, data: bytes, dec, options: codec.CodecOptions | None = None
                 ) -> tuple[bytes, str, str | None]:
    """(layer, codec, note): a JPEG source's own bytes recompressed by JPEG XL where libjxl can (and
    gives them back byte for byte), else WebP lossless of the decoded pixels, or the source file's
    own bytes where those are smaller (a HEIC, AVIF or lossy WebP source: its pixels cost far more
    losslessly than the file that already holds them), with the reason."""
    note = None
    if dec.info.get("source_format") == "JPEG":
        try:
            return enhancement.encode_jpeg_layer(data), "jxl-jpeg", None
        except ValueError as exc:
            note = f"exact pixels instead of the original JPEG: {exc}"
    pixels = enhancement.encode_layer(src, None, "webp-lossless-full")
    if dec.alpha is None and note is None:
        options = options or codec.CodecOptions()
        own = enhancement.encode_source_layer(data, options.multi_frame, options.high_bit_depth)
        if len(own) < len(pixels):
            return own, "source", "kept the source file's own bytes: smaller than its pixels losslessly"
    return pixels, "webp-lossless-full", note


def _rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


THUMBNAIL_FLOOR_DB = 33.0  # a preview-only small file stays a faithful thumbnail (>= 32 dB vs bicubic, with margin)


def _cheapest_thumbnail(b: "_Base", ref: Reference, quality: int | None, size: int | None) -> tuple[int | None, int]:
    """The lowest small-file quality that is still a faithful thumbnail (else `quality`)."""
    if not b.lossy:
        return None, len(b.small(None)[0])
    for q in (10, 20, 30, 40):
        if quality is not None and q >= quality:
            break
        small, _ = b.small(q)
        if thumbnail_psnr(small, ref, b.options.scale) >= THUMBNAIL_FLOOR_DB:
            return q, len(small)
    if size is None:
        quality = quality if quality is not None else b.options.quality
        size = len(b.small(quality)[0])
    return quality, size


class _Context(NamedTuple):
    """What every candidate of one image is searched with."""

    dec: object
    data: bytes
    ref: Reference
    grey: bool
    options: codec.CodecOptions
    rec: codec.CompressRecord
    stages: Stages
    effort: EffortSettings


def _search(dec, pairs: dict, spec: Fidelity, options: codec.CodecOptions, rec: codec.CompressRecord, data: bytes):
    stages = Stages()
    with stages("verify"):  # the reference's luma, used by every measurement and the verification
        ref = Reference(codec.reference_rgb(dec))
    ctx = _Context(dec, data, ref, bool(dec.info["is_gray"]), options, rec, stages, EFFORTS[spec.effort])
    if spec.target_score is not None:
        return _perceptual_search(ctx, pairs, spec)
    if spec.exact and spec.original and dec.info.get("source_format") != "JPEG":
        return _finalize(_source_kept(ctx, pairs[spec.bases[0].model_id], spec.bases[0], spec, "original"),
                         ref, spec, dec, options, stages)
    target = spec.target_psnr + DEVICE_MARGIN_DB  # TAU's prediction differs a little across devices; inf stays inf
    # the residual of TAU(small) is tried where the effort affords TAU at full size for this image, or
    # where TAU runs anyway (an alpha channel comes from the small file); a layer that is the image
    # itself needs no TAU, to compress or to rehydrate
    pixels = ref.shape[0] * ref.shape[1]
    residual = math.isfinite(target) and (pixels <= ctx.effort.residual_below or dec.alpha is not None)
    candidates = []
    for base in spec.bases:
        pair = pairs[base.model_id]
        alone = _small_file_alone(ctx, pair, base, target) if base.qualities and math.isfinite(target) else None
        if alone is not None:
            candidates.append(alone)
            continue
        candidates.append(_image_layer(ctx, pair, base, spec))
        if residual:
            predicted = _predicted(ctx, pair, base, target)
            if predicted is not None:
                candidates.append(predicted)
    best = min(candidates, key=lambda c: c[0].total)
    return _finalize(best, ref, spec, dec, options, stages)


def _small_file_alone(ctx: _Context, pair, base: Base, target: float):
    """The lowest of the base's small-file qualities whose prediction TAU(small) reaches the target."""
    b = _Base(ctx.dec, pair, base, ctx.options, ctx.rec, ctx.stages)
    for q in (base.qualities if b.lossy else [None]):
        size, pred = b.prediction(q)
        with ctx.stages("search"):
            if fidelity_psnr(pred, ctx.ref, pair.scale) >= target:
                return _Candidate(total=size, base=base, small_quality=q), b, None
    return None


def _image_layer(ctx: _Context, pair, base: Base, spec: Fidelity):
    """A layer that is the image itself (AVIF, or exact where the target is) beside a small file that
    is only the preview: no TAU. It restores the same pixels on every device, so it aims at the
    target itself, without the device margin."""
    preview = spec.preview_long_side if ctx.dec.alpha is None else None  # alpha comes from the small file
    b = _Base(ctx.dec, pair, base, ctx.options, ctx.rec, ctx.stages, preview_long_side=preview)
    full = None
    if math.isfinite(spec.target_psnr):
        full = _full_layer(ctx.ref, ctx.grey, spec.target_psnr, pair.scale, ctx.effort, ctx.stages)
    with ctx.stages("encode"):
        if full is None:  # exact, or no AVIF level reaches the target
            layer, lfmt, note = _exact_layer(_channel(ctx.ref.rgb, ctx.grey), ctx.data, ctx.dec, ctx.options)
            level = None
        else:
            layer, lfmt, level = full
            note = None
        if lfmt == "source":  # the source's own bytes: its preview within PREVIEW_SOURCE_SHARE of them
            b, q, size = _preview_within(ctx, pair, base, spec, int(PREVIEW_SOURCE_SHARE * len(ctx.data)))
        else:
            q, size = _cheapest_thumbnail(b, ctx.ref, None, None)
        b.note = note
    return _Candidate(total=size + len(layer), base=base, small_quality=q, layer_format=lfmt, layer_level=level), b, layer


def _predicted(ctx: _Context, pair, base: Base, target: float):
    """The small file at the base's layer quality (TAD and TAU at full size), alone where TAU(small)
    reaches the target, else with the AVIF of the residual; None where no AVIF level reaches it."""
    b = _Base(ctx.dec, pair, base, ctx.options, ctx.rec, ctx.stages)
    q = base.layer_quality if base.layer_quality is not None else b.options.quality
    size, pred = b.prediction(q)
    with ctx.stages("search"):
        if fidelity_psnr(pred, ctx.ref, pair.scale) >= target:  # smooth images: no layer needed
            return _Candidate(total=size, base=base, small_quality=q), b, None
    residual = _residual_search(ctx.ref, pred, ctx.grey, target, pair.scale, ctx.effort, ctx.stages)
    if residual is None:
        return None
    layer, level = residual
    return _Candidate(total=size + len(layer), base=base, small_quality=q, layer_format="avif", layer_level=level), b, layer


# --- score targets (SSIMULACRA2 of the worst region; issue 29) -------------------------------------------

PREVIEW_SOURCE_SHARE = 0.02  # a preview kept beside the source's own bytes: at most this share of them
# JPEG sources are kept as JPEG XL recompression (about 0.8x) where a perceptual layer would come close to it
JPEG_KEEP_ABOVE = 0.7
SAMPLE_BUDGET_SLACK = 1.3  # the sample's byte estimate is rough: a layer is abandoned only well above the budget


def _perceptual_search(ctx: _Context, pairs: dict, spec: Fidelity):
    """The fewest bytes whose verified rehydration scores at least `spec.target_score` in its worst
    region (and at least `spec.rgb_psnr_floor` RGB PSNR): the small file alone where the spec
    allows it, else a preview plus a band layer of the image itself (pipeline.codec.rate), else the
    source's own bytes: never more than the source."""
    from pipeline.codec.measure import Ssimulacra2

    measure = Ssimulacra2()
    with ctx.stages("verify"):
        prepared = measure.prepare(ctx.ref.rgb)
    candidates = []
    pixels = ctx.ref.shape[0] * ctx.ref.shape[1]
    first = spec.bases[0]
    source = len(ctx.data)
    is_jpeg = ctx.dec.info.get("source_format") == "JPEG"
    # a layer the sample says is dearer than keeping the source (a JPEG: its JPEG XL recompression,
    # about 0.8x) is not searched band by band (about 40 % of a high-fidelity photo's CPU saved)
    keep_above = (JPEG_KEEP_ABOVE if is_jpeg else 1.0) * source  # a layer this large: the source is kept
    budget = keep_above * SAMPLE_BUDGET_SLACK
    layers: dict = {}  # the band layer does not depend on the pair: searched once for every base
    for base in spec.bases:
        pair = pairs[base.model_id]
        # TAU at full size costs seconds per megapixel: its small file alone is tried on small images only
        if base.qualities and (pixels <= ctx.effort.residual_below or ctx.effort.residual_below == math.inf):
            alone = _scored_small_file_alone(ctx, pair, base, spec, measure, prepared)
            if alone is not None:
                candidates.append(alone)
                continue
        layered = _scored_image_layer(ctx, pair, base, spec, measure, prepared, layers, budget)
        if layered is not None:
            candidates.append(layered)
    best = min(candidates, key=lambda c: c[0].total) if candidates else None
    if (best is None or best[0].total >= keep_above) and (
            is_jpeg or ctx.dec.alpha is None):  # a source layer restores no alpha of its own
        kept = _source_kept(ctx, pairs[first.model_id], first, spec, "target")
        if best is None or kept[0].total < best[0].total:
            best = kept
    return _finalize(best, ctx.ref, spec, ctx.dec, ctx.options, ctx.stages, measure=measure, prepared=prepared)


def _guard(spec: Fidelity, out: np.ndarray, ref: Reference) -> bool:
    return spec.rgb_psnr_floor is None or psnr(out, ref.rgb) >= spec.rgb_psnr_floor


def _scored_small_file_alone(ctx: _Context, pair, base: Base, spec: Fidelity, measure, prepared):
    """The lowest of the base's small-file qualities whose TAU(small) reaches the score (the preview tier)."""
    b = _Base(ctx.dec, pair, base, ctx.options, ctx.rec, ctx.stages)
    for q in (base.qualities if b.lossy else [None]):
        size, pred = b.prediction(q)
        with ctx.stages("search"):
            score = measure.score(prepared, pred)
            if score.worst >= spec.target_score and _guard(spec, pred, ctx.ref):
                return _Candidate(total=size, base=base, small_quality=q, measured=(score, pred)), b, None
    return None


def _scored_image_layer(ctx: _Context, pair, base: Base, spec: Fidelity, measure, prepared, layers: dict,
                        budget: float | None = None):
    """A preview small file plus a band layer of the image itself, each band at the coarsest level
    whose worst region reaches the score (pipeline.codec.rate); None where none does (or none within
    `budget` bytes). `layers` caches the layer for the image's other bases."""
    if "coded" not in layers:
        src = _channel(ctx.ref.rgb, ctx.grey)
        coded = None
        for target in (spec.target_score, spec.target_score + 2.0):  # a second, finer try where the RGB guard bites
            coded = rate.perceptual_layer(src, measure, prepared, target, ctx.effort, _mosaic, ctx.grey, ctx.stages,
                                          budget=budget)
            if coded is None or _guard(spec, _rgb(coded.decoded), ctx.ref):
                break
            coded = None
        layers["coded"] = coded
    coded = layers["coded"]
    if coded is None:
        return None
    preview = spec.preview_long_side if ctx.dec.alpha is None else None  # alpha comes from the small file
    b = _Base(ctx.dec, pair, base, ctx.options, ctx.rec, ctx.stages, preview_long_side=preview)
    with ctx.stages("encode"):
        q, size = _cheapest_thumbnail(b, ctx.ref, None, None)
    return _Candidate(total=size + len(coded.layer), base=base, small_quality=q, layer_format=coded.fmt,
                      layer_quality=max(coded.levels), measured=(coded.score, _rgb(coded.decoded)),
                      encodes=coded.encodes,
                      note=f"{coded.kind} bands at quality {'/'.join(map(str, coded.levels))}"), b, coded.layer


def _source_kept(ctx: _Context, pair, base: Base, spec: Fidelity, why: str):
    """The source's own bytes (a JPEG as JPEG XL recompression, which gives them back byte for byte)
    beside a preview of at most PREVIEW_SOURCE_SHARE of them: what is kept where nothing reaching
    the target is smaller than the source, and what `original` keeps of a non-JPEG source."""
    layer = None
    note = None
    with ctx.stages("encode"):
        if ctx.dec.info.get("source_format") == "JPEG":
            try:
                layer, fmt = enhancement.encode_jpeg_layer(ctx.data), "jxl-jpeg"
            except ValueError as exc:
                note = f"JPEG XL cannot keep this JPEG ({exc}): its own bytes kept"
        if layer is None:
            layer, fmt = enhancement.encode_source_layer(ctx.data, ctx.options.multi_frame,
                                                         ctx.options.high_bit_depth), "source"
        b, q, size = _preview_within(ctx, pair, base, spec, int(PREVIEW_SOURCE_SHARE * len(ctx.data)))
    kept = "the source JPEG as JPEG XL recompression" if fmt == "jxl-jpeg" else "the source file's own bytes"
    reason = ("`original` keeps the source file itself" if why == "original" else
              "no representation reaching the target is smaller than the source")
    b.note = "; ".join(filter(None, [note, f"kept {kept}: {reason}"]))
    return _Candidate(total=size + len(layer), base=base, small_quality=q, layer_format=fmt), b, layer


def _preview_within(ctx: _Context, pair, base: Base, spec: Fidelity, budget: int):
    """(_Base, quality, bytes) of the largest preview (the spec's long side, then each power of the
    pair's scale smaller) whose small file fits in `budget` bytes; the smallest where none does."""
    long_side = spec.preview_long_side if ctx.dec.alpha is None else None
    while True:
        b = _Base(ctx.dec, pair, base, ctx.options, ctx.rec, ctx.stages, preview_long_side=long_side)
        q = 10 if b.lossy else None
        size = len(b.small(q)[0])
        side = -(-max(ctx.ref.shape[:2]) // b.options.scale)
        if size <= budget or long_side is None or side <= 16 or b.options.scale * pair.scale > 128:
            return b, q, size
        long_side = max(16, side // pair.scale)


def thumbnail_psnr(small: bytes, ref, scale: int) -> float:
    """Y-PSNR of the decoded small file against Pillow's bicubic downscale of the (padded) source:
    is the preview still a faithful thumbnail?"""
    thumb = Image.open(io.BytesIO(small)).convert("RGB")
    ref = ref if isinstance(ref, Reference) else Reference(ref)
    return psnr(rgb_to_y(np.asarray(thumb)), ref.bicubic(thumb.size, scale))


def _finalize(best, ref: Reference, spec: Fidelity, dec, options: codec.CodecOptions, stages: Stages,
              measure=None, prepared=None):
    cand, b, layer = best
    target = spec.target_psnr if spec.target_psnr is not None else -math.inf
    scale = b.options.scale
    # rehydrate to a lossless format unless told otherwise: a JPEG of the restored pixels would add
    # its own loss on top of the fidelity just verified; `original` writes the source file itself
    if options.rehydrate_format:
        fmt, q = options.rehydrate_format, options.rehydrate_quality
    else:
        fmt, q = (formats.ORIGINAL if spec.original else "png"), None
    meta = {"rehydrate_format": fmt, "rehydrate_quality": q,
            "enhancement_sha256": codec._sha256(layer) if layer is not None else None}
    with stages("encode"):
        small, rec = b.small(cand.small_quality, **meta)
    # verify: decode exactly what is written, as rehydration does, to the output it writes (a
    # prediction-free layer without alpha restores from the layer alone: no TAU, as rehydration)
    out = None
    with stages("verify"):
        lossless_out = fmt in LOSSLESS_OUTPUTS or fmt == formats.ORIGINAL
        if (cand.layer_format in enhancement.PREDICTION_FREE and dec.alpha is None and lossless_out):
            if cand.layer_format in enhancement.ORIGINAL_FORMATS:  # the source's own bytes (checked), decoded as it was
                achieved = rgb_psnr = math.inf
            else:
                shape = _channel(ref.rgb, bool(dec.info["is_gray"])).shape
                out = _rgb(enhancement.apply_layer(enhancement.no_prediction(shape), layer))
                achieved, rgb_psnr = fidelity_psnr(out, ref, b.pair.scale), psnr(out, ref.rgb)
        else:
            pred = b.verified_prediction(small, cand.small_quality)
            img = codec._to_pil(codec.enhance(pred, layer), pred.alpha, pred.is_gray, pred.has_alpha)
            if not lossless_out:
                img = codec.decode_output(codec.encode_restored(img, pred.meta, pred.icc, pred.exif))
            out = np.asarray(img.convert("RGB"))
            achieved, rgb_psnr = fidelity_psnr(out, ref, b.pair.scale), psnr(out, ref.rgb)
        scores = _verified_scores(cand, out, measure, prepared)
        thumb = thumbnail_psnr(small, ref, scale)
    rec = rec.model_copy(update={
        "psnr_y": achieved, "psnr_rgb": rgb_psnr, "thumbnail_psnr": thumb,
        "score_worst": scores[0] if scores else None, "score_whole": scores[1] if scores else None,
        "encodes": cand.encodes if cand.layer_format else None,
        "enhancement_format": cand.layer_format, "enhancement_level": cand.layer_level,
        "enhancement_quality": cand.layer_quality,
        "enhancement_size": len(layer) if layer is not None else None,
        "enhancement_sha256": meta["enhancement_sha256"], **stages.columns(),
        "notes": "; ".join(filter(None, [rec.notes, cand.note, b.note])) or None,
    })
    failure = _missed(spec, achieved, rgb_psnr, scores, target)
    if failure:
        return None, rec.model_copy(update={"status": "failed_fidelity", "error_message": failure})
    return (small, layer), rec


def _verified_scores(cand: _Candidate, out: np.ndarray | None, measure, prepared) -> tuple[float, float] | None:
    """(worst region, whole image) SSIMULACRA2 of the verified rehydration `out` (None: the source's own
    pixels, 100); the search's own measurement where `out` is exactly the pixels it measured."""
    if measure is None:
        return None
    if out is None:
        return 100.0, 100.0
    if cand.measured is not None and np.array_equal(cand.measured[1], out):
        score = cand.measured[0]
    else:
        score = measure.score(prepared, out)
    return float(score.worst), float(score.whole)


def _missed(spec: Fidelity, achieved: float, rgb_psnr: float, scores, target: float) -> str | None:
    """Why the verified rehydration misses the spec (None: it reaches it)."""
    if spec.target_score is not None:
        if scores[0] < spec.target_score:
            return (f"verified rehydration scores {scores[0]:.2f} (SSIMULACRA2, worst region), below the target "
                    f"{spec.target_score:g}")
        if spec.rgb_psnr_floor is not None and rgb_psnr < spec.rgb_psnr_floor:
            return f"verified rehydration reaches {rgb_psnr:.2f} dB RGB PSNR, below the guard {spec.rgb_psnr_floor:g} dB"
        return None
    if achieved < target - TOLERANCE_DB:
        return f"verified rehydration reaches {achieved:.2f} dB Y-PSNR, below the target {target:.2f} dB"
    return None
