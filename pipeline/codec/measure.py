"""One measure contract: the score of a decoded image against its reference, whole and per region
(higher = better). Two measures: SSIMULACRA2 (the JPEG XL project's perceptual metric) and Y-PSNR
(the super-resolution papers' convention, as `fidelity_psnr`). Pure: numpy and torch on the CPU.

    m = Ssimulacra2()                      # or PsnrY(scale=4), MEASURES[name], measure(name, scale)
    ref = m.prepare(source_rgb)            # the reference side, computed once
    s = m.score(ref, decoded_rgb)          # Score(whole, regions, region); s.worst = the worst region

SSIMULACRA2 follows the reference (libjxl tools/ssimulacra2.cc, as ported by PyPI `ssimulacra2`
0.3, the test oracle) step by step: sRGB -> linear, opsin XYB with bias and cube root, made
positive; 6 scales, each one a 2x2 box downscale in linear RGB of the last, stopping below 8 px;
Gaussian sigma 1.5 (11 taps: scipy's radius for truncate 3.33); per channel the SSIM map (kC2, no
luminance C1 term) and the edge-difference maps (artifact: edges the output adds; detail loss:
edges it removes); per map its 1-norm and 4-norm, the 108 published weights (consecutively
indexed, so an image with fewer scales shifts them, as the reference does) and the final mapping.
Computed in float32 (the oracle: float64); the scores agree to ~0.003 (measured).

The blur's borders are the oracle's: zero padding at the left and right edges (the image darkens
towards them), mirror ('d c b a | a b c d') at the top and bottom. (The port pads rows with zeros,
but its XYB step transposes the image, `linear.T`, so its rows are the image's columns.) The blur
is two banded matrix products per plane (16 output rows from their 26 input rows per block, the
borders folded into the band), in BLAS: ~2.4x the multiplications of a direct 11-tap filter but
several times faster than any convolution here, and no padded copies. XYB is taken minus the
reference's mean per channel, so that float32 variances (blur(x^2) - mu^2) cancel far less; the
zero border is not shift-invariant, which `_centre` corrects exactly on the 5 border columns.
The pointwise steps run strip by strip (~32K pixels a plane), in cache. One thread (see
`_one_thread`).

Regions: one pass over the image. Each scale's SSIM, artifact and detail-loss maps are pooled
(1-norm and 4-norm) over each tile's footprint at that scale, then the same weights and mapping
give the tile's score. So a tile's score sees its surroundings through the blur (and, at coarse
scales, the 2x2 boxes straddling its border), exactly as the whole-image score does, and the
scales are the whole image's. Rescoring crops instead would cost a pass per tile and score every
tile's border as an image edge. A tile [a, b) covers [floor(a / 2^s), ceil(b / 2^s)) at scale s:
never empty (at least one pixel at every scale; a 1 px edge sliver is 1 px at every scale), and
neighbours overlap by one pixel only where the tile side is not a multiple of 2^s (REGION = 256
is, for all 6 scales).

Tiny images: the reference refuses images under 8 x 8 (its Python port returns 100 whatever the
pixels: no scale is computed). A fidelity check can't accept that, so an image with a side under
8 px is edge-replicated to 8 px first and scored on one scale; from 8 px on, the reference's rule
(scales stop below 8 px) holds unchanged.

The reference side (`prepare`) keeps, per scale, XYB, its blurred mean, variance and edge
strength: 12 float32 planes a scale, ~0.8 GB for a 12 MP image; one score adds ~0.65 GB of
scratch at peak (benchmarks/results/measure.md).
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

from models.metrics import psnr, rgb_to_y

REGION = 256  # tile side (full-resolution pixels): a multiple of 2^5, so tiles stay disjoint at every scale
SCALES = 6
MIN_SIDE = 8  # the reference stops adding scales below this
_C2 = 0.0009
_SIGMA, _RADIUS = 1.5, 5  # scipy.ndimage: radius = int(truncate 3.33 * sigma + 0.5)
_BLOCK = 16  # output rows per banded product (fastest measured: 16-48 all within ~20%)

# opsin absorbance (libjxl opsin_params.h) and its bias
_M = np.array(
    [[0.30, 1.0 - 0.078 - 0.30, 0.078],
     [0.23, 1.0 - 0.078 - 0.23, 0.078],
     [0.24342268924547819, 0.20476744424496821, 1.0 - 0.24342268924547819 - 0.20476744424496821]]
)
_BIAS = 0.0037930732552754493
# (mixed - cbrt(bias)) -> positive XYB: X = 14 * (m0 - m1) / 2 + 0.42, Y = (m0 + m1) / 2 + 0.01,
# B = m2 - (m0 + m1) / 2 + 0.55 (MakePositiveXYB), as one 3x3 map and an offset
_POSITIVE = np.array([[7.0, -7.0, 0.0], [0.5, 0.5, 0.0], [-0.5, -0.5, 1.0]])
_OFFSET = np.array([0.42, 0.01, 0.55])

# the published weights: index ((channel * scales + scale) * 2 + norm) * 3 + (ssim, artifact, detail loss)
_WEIGHTS = np.array([
    0.0, 0.0007376606707406586, 0.0, 0.0, 0.0007793481682867309, 0.0, 0.0, 0.0004371155730107379, 0.0,
    1.1041726426657346, 0.00066284834129271, 0.00015231632783718752, 0.0, 0.0016406437456599754, 0.0,
    1.8422455520539298, 11.441172603757666, 0.0, 0.0007989109436015163, 0.000176816438078653, 0.0,
    1.8787594979546387, 10.94906990605142, 0.0, 0.0007289346991508072, 0.9677937080626833, 0.0,
    0.00014003424285435884, 0.9981766977854967, 0.00031949755934435053, 0.0004550992113792063, 0.0, 0.0,
    0.0013648766163243398, 0.0, 0.0, 0.0, 0.0, 0.0, 7.466890328078848, 0.0, 17.445833984131262,
    0.0006235601634041466, 0.0, 0.0, 6.683678146179332, 0.00037724407979611296, 1.027889937768264,
    225.20515300849274, 0.0, 0.0, 19.213238186143016, 0.0011401524586618361, 0.001237755635509985,
    176.39317598450694, 0.0, 0.0, 24.43300999870476, 0.28520802612117757, 0.0004485436923833408, 0.0, 0.0,
    0.0, 34.77906344483772, 44.835625328877896, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    0.0008680556573291698, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0005313191874358747, 0.0, 0.00016533814161379112,
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0004179171803251336, 0.0017290828234722833, 0.0, 0.0020827005846636437,
    0.0, 0.0, 8.826982764996862, 23.19243343998926, 0.0, 95.1080498811086, 0.9863978034400682,
    0.9834382792465353, 0.0012286405048278493, 171.2667255897307, 0.9807858872435379, 0.0, 0.0, 0.0,
    0.0005130064588990679, 0.0, 0.00010854057858411537,
])


class Score(NamedTuple):
    whole: float  # the score of the whole image
    regions: np.ndarray  # float64 (rows, cols): the score of each tile
    region: int  # tile side in full-resolution pixels (edge tiles are smaller)

    @property
    def worst(self) -> float:
        """The image's fidelity: its worst region."""
        return float(self.regions.min())


class Prepared:
    """The reference side of one measure, computed once and scored against many outputs."""

    __slots__ = ("measure", "shape", "data")

    def __init__(self, measure: str, shape: tuple[int, int], data):
        self.measure, self.shape, self.data = measure, shape, data


class Measure(ABC):
    """The score of a pair of images, whole and per region; higher = better."""

    name: str
    region: int = REGION

    @abstractmethod
    def prepare(self, ref: np.ndarray) -> Prepared:
        """ref: H x W x 3 uint8 (or H x W grey)."""

    @abstractmethod
    def _score(self, ref: Prepared, out: np.ndarray) -> Score: ...

    def score(self, ref: Prepared | np.ndarray, out: np.ndarray) -> Score:
        """out: uint8, the reference's shape."""
        prepared = ref if isinstance(ref, Prepared) else self.prepare(ref)
        if prepared.measure != self.name:
            raise ValueError(f"a reference prepared for {prepared.measure}, scored by {self.name}")
        out = _rgb(out)
        if out.shape[:2] != prepared.shape:
            raise ValueError(f"output {out.shape[:2]} against a reference of {prepared.shape}")
        return self._score(prepared, out)


def _rgb(img: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8; grey (H x W or H x W x 1) as three equal channels."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
        raise ValueError(f"expected an H x W x 3 (or H x W) image, got shape {img.shape}")
    return img


def _grid(n: int, region: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + region)) for a in range(0, n, region)]


# --- SSIMULACRA2 -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _linear_lut() -> np.ndarray:
    v = np.arange(256, dtype=np.float64) / 255.0
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


@lru_cache(maxsize=1)
def _xyb_constants() -> tuple[torch.Tensor, float, torch.Tensor, torch.Tensor]:
    f = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    return f(_M), _BIAS, f(_POSITIVE), f(_OFFSET - _POSITIVE.sum(axis=1) * np.cbrt(_BIAS))


def _xyb(lin: torch.Tensor, out: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """3 x h x w linear RGB -> positive XYB minus `shift` (per channel), into `out`."""
    m, bias, pos, offset = _xyb_constants()
    mixed = torch.mm(m, lin.reshape(3, -1)).add_(bias).clamp_min_(0.0).pow_(1.0 / 3.0)
    # the cube root's bias (cbrt(bias)) and the shift are folded into the offset
    flat = out.as_strided((3, out.shape[1] * out.shape[2]), (out.stride(0), 1), out.storage_offset())
    torch.addmm((offset if shift is None else offset - shift)[:, None], pos, mixed, out=flat)
    return out


def _planes(k: int, h: int, w: int) -> torch.Tensor:
    """k x h x w float32, each plane starting 64-byte aligned. BLAS rounds differently at different
    alignments; with every plane aligned alike, identical images get bit-identical statistics on
    both sides (score exactly 100)."""
    plane = -(-h * w // 16) * 16
    return torch.empty(k * plane).as_strided((k, h, w), (plane, w, 1))


def _downsample(lin: torch.Tensor) -> torch.Tensor:
    """2x2 box mean; an odd edge averages the pixels it has (as the reference)."""
    return torch.nn.functional.avg_pool2d(lin[None], 2, ceil_mode=True)[0]


@lru_cache(maxsize=64)
def _bands(n: int, mirror: bool) -> list[tuple[int, int, int, int, torch.Tensor]]:
    """The 1-D blur over n samples as blocks (a, b, lo, hi, K): out[a:b] = K^T-weighted in[lo:hi],
    K of shape (hi - lo, b - a), the border (zeros, or mirror) folded in."""
    taps = np.exp(-0.5 / _SIGMA**2 * np.arange(-_RADIUS, _RADIUS + 1) ** 2)
    taps /= taps.sum()
    blocks, interior = [], None
    for a in range(0, n, _BLOCK):
        b = min(n, a + _BLOCK)
        lo, hi = max(0, a - _RADIUS), min(n, b + _RADIUS)
        if lo == a - _RADIUS and hi == b + _RADIUS and b - a == _BLOCK and interior is not None:
            blocks.append((a, b, lo, hi, interior))  # every interior block is the same band
            continue
        o = np.arange(a, b)[:, None]
        src = o + np.arange(-_RADIUS, _RADIUS + 1)[None, :]
        w = np.broadcast_to(taps, src.shape).copy()
        if mirror:
            src = src % (2 * n)
            src = np.where(src >= n, 2 * n - 1 - src, src)
        else:
            w[(src < 0) | (src >= n)] = 0.0
            src = np.clip(src, 0, n - 1)
        k = np.zeros((hi - lo, b - a))
        np.add.at(k, (src - lo, np.broadcast_to(o - a, src.shape)), w)
        k = torch.from_numpy(k.astype(np.float32))
        if lo == a - _RADIUS and hi == b + _RADIUS and b - a == _BLOCK:
            interior = k
        blocks.append((a, b, lo, hi, k))
    return blocks


def _blur(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each k x h x w plane into dst (dst may be src): vertical (mirror border)
    into a transposed scratch plane, then horizontal (zero border) back; no padded copies."""
    _, h, w = src.shape
    vertical, horizontal = _bands(h, True), _bands(w, False)
    scratch = torch.empty(w, h)
    for s, d in zip(src, dst):
        for a, b, lo, hi, k in vertical:
            torch.mm(s[lo:hi].T, k, out=scratch[:, a:b])
        for a, b, lo, hi, k in horizontal:
            torch.mm(scratch[lo:hi].T, k, out=d[:, a:b])
    return dst


@lru_cache(maxsize=64)
def _border(w: int) -> tuple[tuple[slice, torch.Tensor], ...]:
    """1 - b on the columns the zero border reaches (b = the blur of 1), as (columns, 1 - b) pairs."""
    taps = np.exp(-0.5 / _SIGMA**2 * np.arange(-_RADIUS, _RADIUS + 1) ** 2)
    taps /= taps.sum()
    x = np.arange(w)[:, None] + np.arange(-_RADIUS, _RADIUS + 1)[None, :]
    beta = torch.from_numpy((1.0 - (taps * ((x >= 0) & (x < w))).sum(1)).astype(np.float32))
    if w <= 2 * _RADIUS:
        return ((slice(0, w), beta),)
    return ((slice(0, _RADIUS), beta[:_RADIUS]), (slice(w - _RADIUS, w), beta[w - _RADIUS:]))


def _centre(mu: torch.Tensor, products: torch.Tensor, c: torch.Tensor) -> None:
    """Make blurs of x - c exact (in place) where the zero border makes the blur not shift-
    invariant. With b = blur(1), beta = 1 - b: mu' = mu - c beta is the true mean minus c, and
    blur(x1 x2) - mu1 mu2 = (blur((x1 - c)(x2 - c)) + c^2 beta) - mu1' mu2'; so only the border
    columns of the means and of the blurred products change, each by a constant per column."""
    c = c[:, None, None]
    for cols, beta in _border(mu.shape[2]):
        mu[..., cols] -= c * beta
        cc = (c * c) * beta
        for p in products:
            p[..., cols] += cc


def _footprints(n: int, n_scale: int, region: int, shift: int) -> np.ndarray:
    """(tiles + 1) x n_scale 0/1 float32: each tile's pixels at a scale (>= 1), and a last row of all."""
    tiles = _grid(n, region)
    m = np.zeros((len(tiles) + 1, n_scale), dtype=np.float32)
    for i, (a, b) in enumerate(tiles):
        lo = min(a >> shift, n_scale - 1)
        hi = max(lo + 1, min(n_scale, -(-b >> shift)))
        m[i, lo:hi] = 1.0
    m[-1] = 1.0
    return m


class _Scale(NamedTuple):
    shift: torch.Tensor  # 3: the XYB mean subtracted
    img: torch.Tensor  # 3 x h x w positive XYB (minus shift)
    mu: torch.Tensor  # its blur
    var: torch.Tensor  # blur(img^2) - mu^2
    edge: torch.Tensor  # 1 + |img - mu|
    segments: list[tuple[int, int, list[int]]]  # row pieces (a, b) and the tile rows (+ all) holding them
    cols: torch.Tensor  # w x (tile cols + 1) float64 footprints
    counts: np.ndarray  # (tile rows + 1) x (tile cols + 1) pixels per footprint


_CHUNK = 32768  # pixels per plane in one pointwise step: the step's planes stay in cache


def _chunks(h: int, w: int) -> list[tuple[int, int]]:
    """Row strips of ~_CHUNK pixels, even-sized (the 2x2 downscale works strip by strip)."""
    step = max(2, _CHUNK // w // 2 * 2)
    return [(a, min(h, a + step)) for a in range(0, h, step)]


def _segments(rows: np.ndarray, h: int, w: int) -> list[tuple[int, int, list[int]]]:
    """The rows cut at strip and footprint borders: (a, b, footprints holding rows a..b)."""
    cuts = {0, h} | {a for a, _ in _chunks(h, w)}
    for f in rows:
        nz = np.flatnonzero(f)
        cuts |= {int(nz[0]), int(nz[-1]) + 1}
    cuts = sorted(cuts)
    return [(a, b, np.flatnonzero(rows[:, a]).tolist()) for a, b in zip(cuts, cuts[1:])]


def _first_stage(src: np.ndarray | torch.Tensor, shift: torch.Tensor, buf: torch.Tensor,
                 ref_img: torch.Tensor | None, last: bool) -> torch.Tensor | None:
    """Strip by strip: XYB into buf[0:3], its square into buf[3:6], the product with the reference's
    XYB into buf[6:9] (when given), and the next scale's linear RGB (returned, unless last).
    src: H x W x 3 uint8 (scale 0, through the sRGB table) or 3 x h x w linear."""
    h, w = buf.shape[1:]
    down = None if last else torch.empty(3, (h + 1) // 2, (w + 1) // 2)
    lut = _linear_lut()
    for a, b in _chunks(h, w):
        if isinstance(src, np.ndarray):
            lin = torch.from_numpy(np.take(lut, src[a:b].transpose(2, 0, 1)))
        else:
            lin = src[:, a:b]
        img = _xyb(lin, buf[0:3, a:b], shift)
        torch.mul(img, img, out=buf[3:6, a:b])
        if ref_img is not None:
            torch.mul(ref_img[:, a:b], img, out=buf[6:9, a:b])
        if down is not None:
            down[:, a // 2:(b + 1) // 2] = _downsample(lin)
    return down


_threads_lock = threading.Lock()
_threads_users = [0, 1]  # callers inside, torch's thread count before the first


@contextmanager
def _one_thread():
    """torch on one thread for the duration (restored after the last concurrent caller). The
    steps are cache-sized and many: intra-op threads only add barrier waits (measured 60x slower
    with 2 threads on a loaded 2-core machine, ~no gain unloaded); parallelise across images."""
    with _threads_lock:
        if _threads_users[0] == 0:
            _threads_users[1] = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users[0] += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users[0] -= 1
            if _threads_users[0] == 0 and _threads_users[1] != 1:
                torch.set_num_threads(_threads_users[1])


class Ssimulacra2(Measure):
    """SSIMULACRA2 (Cloudinary / JPEG XL): 100 = identical, ~90 visually lossless, ~70 high
    quality, ~50 medium; whole and per REGION tile."""

    name = "ssimulacra2"

    def __init__(self, region: int = REGION):
        if region < 1:
            raise ValueError("region must be >= 1")
        self.region = region

    def prepare(self, ref: np.ndarray) -> Prepared:
        with _one_thread():
            return self._prepare(_rgb(ref))

    def _prepare(self, ref: np.ndarray) -> Prepared:
        shape = ref.shape[:2]
        src: np.ndarray | torch.Tensor = _pad_tiny(ref)
        scales = []
        for s in range(SCALES):
            h, w = src.shape[:2] if isinstance(src, np.ndarray) else src.shape[1:]
            if h < MIN_SIDE or w < MIN_SIDE:
                break
            # XYB is taken minus the reference's mean (see _centred): float32 sigma = blur(x^2) - mu^2
            # then cancels far less (the oracle computes in float64)
            sample = (torch.from_numpy(np.take(_linear_lut(), src[::4, ::4].transpose(2, 0, 1)))
                      if isinstance(src, np.ndarray) else src[:, ::4, ::4])
            shift = _xyb(sample, torch.empty(sample.shape)).mean((1, 2))
            buf = _planes(6, h, w)  # img, img^2: the same steps and layout as _score's
            src = _first_stage(src, shift, buf, None, s == SCALES - 1)
            img = buf[0:3]
            mu = _blur(img, _planes(3, h, w))
            var = _blur(buf[3:6], buf[3:6])
            _centre(mu, (var,), shift)
            var.addcmul_(mu, mu, value=-1.0)  # as in _maps: identical images get identical sigmas
            edge = torch.sub(mu, img).abs_().add_(1.0)
            rows = _footprints(shape[0], h, self.region, s)
            cols = _footprints(shape[1], w, self.region, s)
            counts = np.outer(rows.sum(1, dtype=np.float64), cols.sum(1, dtype=np.float64))
            scales.append(_Scale(shift, img, mu, var, edge, _segments(rows, h, w),
                                 torch.from_numpy(cols.T.astype(np.float64)), counts))
        return Prepared(self.name, shape, scales)

    def _score(self, ref: Prepared, out: np.ndarray) -> Score:
        with _one_thread():
            return self._score_one_thread(ref, out)

    def _score_one_thread(self, ref: Prepared, out: np.ndarray) -> Score:
        norms = []  # per scale: 2 norms x 9 maps x (tile rows + 1) x (tile cols + 1)
        src: np.ndarray | torch.Tensor = _pad_tiny(out)
        for s, r in enumerate(ref.data):
            h, w = r.img.shape[1:]
            # one buffer: img2, img2^2, img1 img2; blurred in place (but img2), then holds the maps
            buf = _planes(9, h, w)
            src = _first_stage(src, r.shift, buf, r.img, s == len(ref.data) - 1)
            mu = _blur(buf[0:3], _planes(3, h, w))
            _blur(buf[3:9], buf[3:9])
            _centre(mu, (buf[3:6], buf[6:9]), r.shift)
            one = torch.zeros(len(r.counts), 9, w, dtype=torch.float64)
            four = torch.zeros(len(r.counts), 9, w, dtype=torch.float64)
            for a, b, tiles in r.segments:
                maps = _maps(r, buf[:, a:b], mu[:, a:b], a, b)
                one[tiles] += maps.sum(1).double()  # a few rows in float32, the rest in float64
                four[tiles] += maps.square_().square_().sum(1).double()
            del buf, mu
            one, four = (torch.matmul(x, r.cols).permute(1, 0, 2).numpy() for x in (one, four))
            norms.append(np.stack([one / r.counts, (four / r.counts) ** 0.25]))
        return _ssimulacra2_scores(norms, self.region)


def _maps(r: _Scale, buf: torch.Tensor, mu: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Rows a..b of one scale: buf (img2, blurred img2^2, blurred img1 img2) becomes the 9 maps
    (SSIM, artifact, detail loss per channel), in place."""
    mu1, img = r.mu[:, a:b], buf[0:3]
    sigma2, sigma12 = buf[3:6], buf[6:9]
    # SSIM (no C1): d = max(0, 1 - (1 - (mu1 - mu2)^2) (2 sigma12 + C2) / (sigma1^2 + sigma2^2 + C2))
    sigma12.addcmul_(mu1, mu, value=-1.0).mul_(2.0).add_(_C2)
    sigma2.addcmul_(mu, mu, value=-1.0).add_(r.var[:, a:b]).add_(_C2)
    t = torch.sub(mu1, mu).square_().neg_().add_(1.0)
    t.mul_(sigma12).div_(sigma2).neg_().add_(1.0).clamp_min_(0.0)
    # edges: d1 = (1 + |img2 - mu2|) / (1 + |img1 - mu1|) - 1: > 0 artifact, < 0 detail lost
    d1 = mu.sub_(img).abs_().add_(1.0).div_(r.edge[:, a:b]).sub_(1.0)
    img.copy_(t)
    torch.clamp_min(d1, 0.0, out=sigma2)
    torch.sub(sigma2, d1, out=sigma12)  # max(-d1, 0) = max(d1, 0) - d1
    return buf


def _pad_tiny(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h >= MIN_SIDE and w >= MIN_SIDE:
        return rgb
    return np.pad(rgb, ((0, max(0, MIN_SIDE - h)), (0, max(0, MIN_SIDE - w)), (0, 0)), mode="edge")


def _ssimulacra2_scores(norms: list[np.ndarray], region: int) -> Score:
    n = len(norms)
    v = np.stack(norms)  # scales x norms x (3 kinds x 3 channels) x R x C
    v = v.reshape(n, 2, 3, 3, *v.shape[-2:])  # scale, norm, kind (ssim, artifact, detail), channel
    w = _WEIGHTS[: n * 18].reshape(3, n, 2, 3)  # channel, scale, norm, kind
    x = np.einsum("cpnk,pnkcij->ij", w, np.abs(v)) * 0.9562382616834844
    x = 2.326765642916932 * x - 0.020884521182843837 * x**2 + 6.248496625763138e-05 * x**3
    score = np.where(x > 0, 100.0 - 10.0 * np.power(np.maximum(x, 0.0), 0.6276336467831387), 100.0)
    return Score(float(score[-1, -1]), np.ascontiguousarray(score[:-1, :-1]), region)


# --- Y-PSNR ------------------------------------------------------------------------------------


class PsnrY(Measure):
    """Y-PSNR (BT.601 luma in [16, 235]); whole = the lower of whole-image and `scale`-shaved PSNR
    (fidelity_psnr's convention); regions = each tile's Y-PSNR (inf where identical)."""

    name = "psnr-y"

    def __init__(self, scale: int, region: int = REGION):
        if region < 1:
            raise ValueError("region must be >= 1")
        self.scale, self.region = scale, region

    def prepare(self, ref: np.ndarray) -> Prepared:
        ref = _rgb(ref)
        return Prepared(self.name, ref.shape[:2], rgb_to_y(ref))

    def _score(self, ref: Prepared, out: np.ndarray) -> Score:
        yr, yo = ref.data, rgb_to_y(out)
        whole = y_psnr_floor(yo, yr, self.scale)
        sq = (yo - yr) ** 2
        rows = [a for a, _ in _grid(sq.shape[0], self.region)]
        cols = [a for a, _ in _grid(sq.shape[1], self.region)]
        sums = np.add.reduceat(np.add.reduceat(sq, rows, axis=0), cols, axis=1)
        counts = np.outer(np.diff(rows + [sq.shape[0]]), np.diff(cols + [sq.shape[1]]))
        with np.errstate(divide="ignore"):
            regions = 10.0 * np.log10(255.0**2 / (sums / counts))
        return Score(whole, regions, self.region)


def y_psnr_floor(yo: np.ndarray, yr: np.ndarray, scale: int) -> float:
    """The lower of whole-image and `scale`-shaved Y-PSNR of two luma planes: the one definition of a
    Y-PSNR fidelity (PsnrY.whole, and pipeline.codec.fidelity's PSNR search and verification)."""
    shaved = psnr(yo, yr, scale) if min(yo.shape[:2]) > 2 * scale else math.inf
    return min(psnr(yo, yr), shaved)


def rgb_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Plain RGB PSNR of two uint8 images (the pixel-level second guard)."""
    return psnr(_rgb(a), _rgb(b))


MEASURES: dict[str, type[Measure]] = {"ssimulacra2": Ssimulacra2, "psnr-y": PsnrY}


def measure(name: str, scale: int, region: int = REGION) -> Measure:
    """A measure by name (`scale`: the pair's, which only Y-PSNR's border shave uses)."""
    if name not in MEASURES:
        raise ValueError(f"unknown measure {name!r}: one of {sorted(MEASURES)}")
    return PsnrY(scale, region) if name == "psnr-y" else MEASURES[name](region)
