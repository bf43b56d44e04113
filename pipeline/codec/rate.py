"""Rate control in a perceptual measure: a layer of the image itself, in horizontal bands, each band
at the coarsest level whose worst region still reaches the target.

    coded = perceptual_layer(src, measure, prepared, target=80.0, effort=EFFORTS["default"], stages=stages)
    coded.layer, coded.fmt, coded.levels, coded.score      # score: the whole image, measured

Why bands: an image's fidelity is the score of its worst region (pipeline.codec.measure), and one
level for the whole image spends the bits the hardest region needs on every region. Each band is
its own AVIF or JPEG XL file at its own level, so a band of soft sky is coded coarser than a band of
leaves; the bands are stacked again on rehydration (pipeline.codec.layer, formats b"g" / b"k").

How, per image:
1. The coder (JPEG XL, or eye-tuned AVIF where `CODERS` lists both) and a starting level are chosen on a sample:
   the image itself when it is small, else a mosaic of about a fifth of its 256-px tiles spread
   evenly over it (pipeline.codec.fidelity's `_mosaic`, passed in); on it each coder's coarsest level whose
   worst tile reaches the target is searched, and the coder with the fewer bytes there is kept.
2. Each band is searched from that level: encode, decode, score the band against the source band
   (its regions), then up or down by the measured slope until two levels `resolution` apart
   bracket the target (`_settle_band`). A band alone is scored without its neighbours, so it aims
   `BAND_AIM` above the target.
3. The bands are stacked and the whole image is scored, region by region, as verification does.
   Where a region misses, the bands it lies in go one step finer, and the image is scored again.
The caller (pipeline.codec.fidelity) then decodes the packed layer exactly as rehydration does and
checks that it gives these pixels, so the score measured here is the verified one.

Pure functions on numpy arrays: no storage, no model.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from pipeline.codec import layer as enhancement

MIN_BAND_ROWS = 256  # a band: at least four 64-px AV1 superblock rows (and two JPEG XL groups)
MAX_BANDS = 8
BAND_AIM = 0.5  # score points above the target a band aims at alone (its edges are scored without neighbours)
MAX_PROBES = 6  # encodes per band search
MAX_FIXES = 4  # rounds of "a region misses: its bands one step finer"
SAMPLE_ABOVE_PIXELS = 1_500_000  # larger images choose their coder and start level on a mosaic sample


class Coder(NamedTuple):
    """One image coder of a band layer: its layer format, how a band is encoded at a level, the
    levels (0 .. top, higher is finer), the search's resolution in levels, and where a search
    starts for a target score (measured on phone photos: level ~ a + b * score)."""

    kind: str  # "avif" | "jxl": the format of each band
    fmt: str  # the layer format (pipeline.codec.layer.LAYER_FORMATS)
    top: int
    resolution: int
    start: Callable[[float], int]
    slope: float  # score points per level, before a search has measured its own


def _coders(effort) -> dict[str, tuple[Coder, Callable[[np.ndarray, int], bytes]]]:
    avif_speed, jxl_effort = effort.final_speed, effort.jxl_effort
    return {
        "avif": (Coder("avif", "avif-bands", 100, 2, lambda s: int(np.clip(round(2.4 * s - 124), 10, 98)), 0.4),
                 lambda a, q: enhancement.encode_avif_eye(a, q, avif_speed)),
        "jxl": (Coder("jxl", "jxl-bands", 99, 1,  # 100 is distance 0: lossless, another mode
                       lambda s: int(np.clip(round(1.2 * s - 16), 20, 99)), 0.65),
                lambda a, q: enhancement.encode_jxl(a, q, jxl_effort)),
    }


# The coders an image chooses among on its sample. JPEG XL alone: on five 2.8 MP phone-photo crops at
# `standard`, choosing per image between it and eye-tuned AVIF stored 2.2 % more bytes (the sample chose
# AVIF twice, and lost both times once the bands were settled) for 16 % more CPU
# (benchmarks/band_coders.py). AVIF stays a coder.
CODERS: tuple[str, ...] = ("jxl",)


class Probe(NamedTuple):
    level: int
    data: bytes
    decoded: np.ndarray
    worst: float


class Coded(NamedTuple):
    """A band layer reaching the target: its bytes and format, the level of each band, the coder,
    the whole image's score as measured (pipeline.codec.measure.Score) and the decoded pixels."""

    layer: bytes
    fmt: str
    levels: list[int]
    kind: str
    score: object
    decoded: np.ndarray
    encodes: int


def band_rows(h: int) -> list[tuple[int, int]]:
    """Horizontal bands of an image `h` rows high: up to MAX_BANDS of at least MIN_BAND_ROWS rows,
    their edges on multiples of 64 (AV1 superblocks)."""
    k = max(1, min(MAX_BANDS, h // MIN_BAND_ROWS))
    edges = sorted({min(h, round(i * h / k / 64) * 64) for i in range(k)} | {h})
    return list(zip(edges, edges[1:]))


def _settle_band(encode, measure, ref, src: np.ndarray, coder: Coder, target: float, start: int,
                 slope: float, grey: bool, counter: list[int]) -> tuple[Probe | None, float]:
    """(the coarsest probe found whose worst region reaches `target`, or None where the finest
    level misses; the slope measured in score points per level). Probes until a reaching level and
    a missing one lie at most `coder.resolution` apart, or a reaching level is less than one
    step's slope above the target (a step coarser would miss), or MAX_PROBES."""
    tried: dict[int, Probe] = {}

    def at(level: int) -> Probe:
        level = int(np.clip(level, 0, coder.top))
        if level not in tried:
            data = encode(src, level)
            decoded = enhancement.decode_band(data, coder.kind, grey)
            counter[0] += 1
            tried[level] = Probe(level, data, decoded, measure.score(ref, _rgb(decoded)).worst)
        return tried[level]

    at(start)
    for _ in range(MAX_PROBES - 1):
        hits = [q for q in tried.values() if q.worst >= target]
        misses = [q for q in tried.values() if q.worst < target]
        hi = min(hits, key=lambda q: q.level) if hits else None
        lo = max(misses, key=lambda q: q.level) if misses else None
        if hi is not None and lo is not None and hi.level - lo.level <= coder.resolution:
            break
        if hi is not None and hi.worst - target < slope * coder.resolution:
            break  # one step coarser would miss by the slope: no probe spent to bracket it
        if hi is not None and hi.level == 0:
            break
        if lo is not None and lo.level >= coder.top:
            break
        if hi is not None and lo is not None:  # interpolate inside the bracket
            frac = (target - lo.worst) / max(hi.worst - lo.worst, 1e-6)
            guess = lo.level + frac * (hi.level - lo.level)
            guess = min(max(round(guess), lo.level + 1), hi.level - 1)
        elif hi is not None:  # everything reaches: coarser by the slope, at least one resolution step
            guess = hi.level - max(coder.resolution, math.floor((hi.worst - target) / slope))
        else:  # everything misses: finer by the slope, at least one step
            guess = lo.level + max(coder.resolution, math.ceil((target - lo.worst) / slope))
        if int(np.clip(guess, 0, coder.top)) in tried:
            break
        at(guess)
    hits = [q for q in tried.values() if q.worst >= target]
    pts = sorted((q.level, q.worst) for q in tried.values())
    if len(pts) >= 2 and pts[-1][0] > pts[0][0] and pts[-1][1] > pts[0][1]:
        slope = (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
    return (min(hits, key=lambda q: q.level) if hits else None), max(slope, 0.05)


def _choose_coder(measure, target: float, effort, grey: bool, sample: np.ndarray,
                  counter: list[int]) -> tuple[str, int, float, int | None]:
    """(coder kind, starting level, slope, its bytes on the sample) from the coder whose coarsest
    level reaching `target` on `sample` is smallest; a coder that reaches it nowhere loses."""
    coders = _coders(effort)
    ref = measure.prepare(sample)
    found = {}
    for kind in CODERS:  # with one coder: its start level and slope on the sample
        coder, encode = coders[kind]
        probe, slope = _settle_band(encode, measure, ref, sample, coder, target, coder.start(target), coder.slope,
                                    grey, counter)
        if probe is not None:
            found[kind] = (len(probe.data), probe.level, slope)
    if not found:
        return "jxl", coders["jxl"][0].top, coders["jxl"][0].slope, None
    kind = min(found, key=lambda k: found[k][0])
    return kind, found[kind][1], found[kind][2], found[kind][0]


def perceptual_layer(src: np.ndarray, measure, prepared, target: float, effort, mosaic, grey: bool = False,
                     stages=None, budget: float | None = None) -> Coded | None:
    """The band layer of `src` (H x W x 3 uint8, or H x W for grey) whose every region reaches
    `target` in `measure` (`prepared`: measure.prepare of the image as the user sees it, RGB), with
    the fewest bytes this search finds; None when even the finest levels miss, or when the sample
    says the layer would take more than `budget` bytes (the caller keeps the source instead: the
    bands are not searched for a layer that would be thrown away)."""
    from contextlib import nullcontext

    stage = stages or (lambda name: nullcontext())
    counter = [0]
    h = src.shape[0]
    with stage("search"):
        small = src.shape[0] * src.shape[1] <= SAMPLE_ABOVE_PIXELS or h < 2 * MIN_BAND_ROWS
        if small and len(CODERS) == 1:  # nothing to choose, and the bands' own search is as cheap as a sample's
            kind = CODERS[0]
            coder = _coders(effort)[kind][0]
            start, slope = coder.start(target + BAND_AIM), coder.slope
        else:
            sample = src if small else mosaic(src)
            kind, start, slope, sample_bytes = _choose_coder(measure, target + BAND_AIM, effort, grey, sample, counter)
            estimate = sample_bytes * src.size / sample.size if sample_bytes is not None else math.inf
            if budget is not None and estimate > budget:
                return None
    coder, encode = _coders(effort)[kind]
    rows = band_rows(h)
    with stage("encode"):
        probes: list[Probe] = []
        for a, b in rows:
            band = src[a:b]
            ref = measure.prepare(band)
            probe, slope = _settle_band(encode, measure, ref, band, coder, target + BAND_AIM, start, slope, grey,
                                        counter)
            if probe is None:
                return None
            probes.append(probe)
            start = probe.level
    with stage("verify"):
        decoded = np.concatenate([p.decoded for p in probes], axis=0)
        score = measure.score(prepared, _rgb(decoded))
    for _ in range(MAX_FIXES):
        if score.worst >= target:
            break
        missing = _bands_of_missing_regions(score, rows, target)
        if all(probes[i].level >= coder.top for i in missing):
            return None
        with stage("encode"):
            for i in missing:
                level = min(coder.top, probes[i].level + coder.resolution)
                data = encode(src[rows[i][0]:rows[i][1]], level)
                probes[i] = Probe(level, data, enhancement.decode_band(data, coder.kind, grey), math.nan)
                counter[0] += 1
        with stage("verify"):
            decoded = np.concatenate([p.decoded for p in probes], axis=0)
            score = measure.score(prepared, _rgb(decoded))
    if score.worst < target:
        return None
    layer = enhancement.pack_bands([(b - a, p.data) for (a, b), p in zip(rows, probes)], coder.fmt)
    return Coded(layer, coder.fmt, [p.level for p in probes], kind, score, decoded, counter[0])


def _bands_of_missing_regions(score, rows: list[tuple[int, int]], target: float) -> list[int]:
    """The bands that overlap a region scoring below `target`."""
    r = score.region
    missing = set()
    for ri, ci in zip(*np.nonzero(score.regions < target)):
        top, bottom = ri * r, (ri + 1) * r
        missing |= {i for i, (a, b) in enumerate(rows) if a < bottom and b > top}
    return sorted(missing)


def _rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr
