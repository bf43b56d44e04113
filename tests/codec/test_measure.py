"""The measure contract (pipeline/codec/measure.py): SSIMULACRA2 against its reference (PyPI
`ssimulacra2`, the oracle: a test dependency only), per-region scores, tiny and grey images, and
Y-PSNR against the codec's own `fidelity_psnr`.

Pairs: Set5/Set14 images and crops (odd sizes included) distorted by JPEG, AVIF, JPEG XL, lossy
WebP, Gaussian blur and the pipeline's own round trip (taid-x2, taid-x4)."""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image, ImageFilter

from models.metrics import psnr
from pipeline.codec.measure import MEASURES, REGION, PsnrY, Score, Ssimulacra2, measure, rgb_psnr
from tests import DATA

oracle = pytest.importorskip("ssimulacra2.ssimulacra2")  # the `test` extra

TOLERANCE = 1.0  # whole-image score, against the oracle (measured: ~0.003)


@lru_cache(maxsize=None)
def image(name: str) -> np.ndarray:
    folder = "Set5" if (DATA / "Set5" / f"{name}.png").exists() else "Set14"
    return np.asarray(Image.open(DATA / folder / f"{name}.png").convert("RGB"))


def crop(name: str, h: int, w: int, top: int = 0, left: int = 0) -> np.ndarray:
    return np.ascontiguousarray(image(name)[top : top + h, left : left + w])


def codec(img: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    if fmt == "JXL":
        import pillow_jxl  # noqa: F401  (registers JPEG XL with Pillow)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, quality=quality, **({"method": 4} if fmt == "WEBP" else {}))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def blur(img: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))


@lru_cache(maxsize=None)
def load_pair(model_id: str):
    from models.zoo import load_pair

    return load_pair(model_id)


def pipeline_round_trip(img: np.ndarray, model_id: str) -> np.ndarray:
    """What the archive gives back: one fixed small file of the pair, rehydrated (no layer)."""
    from pipeline.codec.image import compress_image, decode_output, rehydrate_image
    from pipeline.codec.options import CodecOptions

    pair = load_pair(model_id)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    small, _, record = compress_image(buf.getvalue(), pair, CodecOptions())
    return np.asarray(decode_output(rehydrate_image(small, record, pair)).convert("RGB"))


def oracle_score(ref: np.ndarray, out: np.ndarray, tmp_path) -> float:
    """The reference implementation, through its own entry (files)."""
    a, b = tmp_path / "ref.png", tmp_path / "out.png"
    Image.fromarray(ref).save(a)
    Image.fromarray(out).save(b)
    return float(oracle.compute_ssimulacra2(str(a), str(b)))


# (id, reference, distortion): 24 pairs, ~0.05-0.26 MP each, so the oracle's ~5 s/MP stays affordable
PAIRS = {
    "baby-jpeg20": (lambda: crop("baby", 256, 256, 128, 128), lambda x: codec(x, "JPEG", 20)),
    "bird-jpeg50": (lambda: image("bird"), lambda x: codec(x, "JPEG", 50)),
    "barbara-jpeg75": (lambda: crop("barbara", 257, 311, 40, 100), lambda x: codec(x, "JPEG", 75)),
    "comic-jpeg90": (lambda: image("comic"), lambda x: codec(x, "JPEG", 90)),
    "face-jpeg97": (lambda: image("face"), lambda x: codec(x, "JPEG", 97)),
    "butterfly-avif30": (lambda: image("butterfly"), lambda x: codec(x, "AVIF", 30)),
    "lenna-avif55": (lambda: crop("lenna", 240, 300, 100, 100), lambda x: codec(x, "AVIF", 55)),
    "zebra-avif75": (lambda: crop("zebra", 250, 330), lambda x: codec(x, "AVIF", 75)),
    "pepper-avif90": (lambda: crop("pepper", 256, 256, 200, 200), lambda x: codec(x, "AVIF", 90)),
    "woman-jxl40": (lambda: image("woman"), lambda x: codec(x, "JXL", 40)),
    "monarch-jxl70": (lambda: crop("monarch", 300, 290, 50, 100), lambda x: codec(x, "JXL", 70)),
    "man-jxl90": (lambda: crop("man", 256, 256, 100, 150), lambda x: codec(x, "JXL", 90)),
    "bridge-jxl98": (lambda: crop("bridge", 256, 256), lambda x: codec(x, "JXL", 98)),
    "head-webp30": (lambda: image("head"), lambda x: codec(x, "WEBP", 30)),
    "flowers-webp70": (lambda: crop("flowers", 250, 262, 20, 30), lambda x: codec(x, "WEBP", 70)),
    "foreman-webp90": (lambda: image("foreman"), lambda x: codec(x, "WEBP", 90)),
    "baboon-blur1": (lambda: crop("baboon", 256, 256, 100, 100), lambda x: blur(x, 1.0)),
    "coastguard-blur2": (lambda: image("coastguard"), lambda x: blur(x, 2.0)),
    "ppt3-blur0.6": (lambda: crop("ppt3", 256, 300, 200, 150), lambda x: blur(x, 0.6)),
    "bird-taid-x2": (lambda: image("bird"), lambda x: pipeline_round_trip(x, "taid-x2")),
    "butterfly-taid-x4": (lambda: image("butterfly"), lambda x: pipeline_round_trip(x, "taid-x4")),
    "lenna-taid-x2": (lambda: crop("lenna", 256, 256, 200, 200), lambda x: pipeline_round_trip(x, "taid-x2")),
    "tiny-jpeg": (lambda: crop("baboon", 9, 13), lambda x: blur(x, 1.0)),  # 2 scales: the weights shift
    "small-jpeg": (lambda: crop("comic", 40, 70, 30, 30), lambda x: codec(x, "JPEG", 40)),  # 3 scales
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_ssimulacra2_agrees_with_the_oracle(pair, tmp_path):
    make_ref, distort = PAIRS[pair]
    ref = make_ref()
    out = distort(ref)
    ours = Ssimulacra2().score(ref, out)
    expected = oracle_score(ref, out, tmp_path)
    assert abs(ours.whole - expected) <= TOLERANCE, (pair, ours.whole, expected)
    assert ours.regions.dtype == np.float64 and ours.region == REGION
    rows, cols = (math.ceil(n / REGION) for n in ref.shape[:2])
    assert ours.regions.shape == (rows, cols)


def test_identical_images_score_100():
    m = Ssimulacra2(region=64)
    for img in (image("baby"), crop("woman", 301, 227), crop("comic", 100, 9)):
        s = m.score(img, img.copy())
        assert s.whole == 100.0 and (s.regions == 100.0).all() and s.worst == 100.0


def test_prepared_reference_scores_as_the_array():
    ref = image("bird")
    m = Ssimulacra2()
    prepared = m.prepare(ref)
    for q in (30, 80):
        out = codec(ref, "JPEG", q)
        a, b = m.score(prepared, out), m.score(ref, out)
        assert a.whole == b.whole and np.array_equal(a.regions, b.regions)
    with pytest.raises(ValueError):
        m.score(prepared, ref[:-1])
    with pytest.raises(ValueError):
        PsnrY(scale=2).score(prepared, ref)


def test_tiny_images_do_not_crash():
    """Under 8 px a side the reference computes no scale; here such images are edge-padded to 8 px
    (one scale), so a distorted tiny image still scores under 100."""
    rng = np.random.default_rng(1)
    m = Ssimulacra2()
    for h in (1, 2, 3, 5, 7, 8, 9, 12, 16):
        for w in (1, 4, 7, 8, 9, 16):
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            b = np.clip(a.astype(np.int16) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
            same, other = m.score(a, a), m.score(a, b)
            assert same.whole == 100.0 and same.regions.shape == (1, 1)
            assert math.isfinite(other.whole) and other.whole < 100.0


def test_grey_is_rgb_with_equal_channels():
    grey = np.asarray(Image.fromarray(image("baby")).convert("L"))
    out = blur(grey, 1.0)
    m = Ssimulacra2()
    assert m.score(grey, out).whole == m.score(np.dstack([grey] * 3), np.dstack([out] * 3)).whole


def test_a_local_distortion_lowers_its_own_tile():
    ref = image("baby")  # 512 x 512: 4 x 4 tiles of 128
    out = ref.copy()
    out[128 + 32 : 256 - 32, 256 + 32 : 384 - 32] = codec(ref, "JPEG", 10)[128 + 32 : 256 - 32, 256 + 32 : 384 - 32]
    s = Ssimulacra2(region=128).score(ref, out)
    assert s.regions.shape == (4, 4)
    hit = s.regions[1, 2]
    assert s.worst == hit < 60
    far = np.delete(np.delete(s.regions, [0, 1, 2], axis=0), [1, 2, 3], axis=1)  # rows 3, cols 0
    assert (far > 99.5).all(), s.regions
    assert hit < s.whole < s.regions.max()


def test_tiles_of_a_uniform_distortion_agree_with_their_crops(tmp_path):
    """Each full 256 px tile's pooled score against the oracle on that tile alone: they differ only
    through the tile's surroundings (blur context and coarse-scale boxes across its border, against
    the crop's own image-edge handling). Measured: tiles 0.1-1.9 below their crops."""
    diffs = []
    for name, distort in (("baby", lambda x: codec(x, "JPEG", 50)), ("barbara", lambda x: codec(x, "AVIF", 50))):
        ref = image(name)
        out = distort(ref)
        s = Ssimulacra2().score(ref, out)
        for i in range(ref.shape[0] // REGION):
            for j in range(ref.shape[1] // REGION):
                box = np.s_[i * REGION : (i + 1) * REGION, j * REGION : (j + 1) * REGION]
                crop_score = oracle_score(np.ascontiguousarray(ref[box]), np.ascontiguousarray(out[box]), tmp_path)
                diffs.append(s.regions[i, j] - crop_score)
    assert len(diffs) == 8 and max(map(abs, diffs)) < 3.0, np.round(diffs, 2)


def test_psnr_y_whole_is_fidelity_psnr():
    from pipeline.codec.fidelity import fidelity_psnr

    for name, scale in (("baby", 4), ("woman", 2), ("comic", 4)):
        ref = image(name)
        out = codec(ref, "JPEG", 60)
        m = PsnrY(scale=scale)
        s = m.score(m.prepare(ref), out)
        assert s.whole == fidelity_psnr(out, ref, scale)
        assert s.regions.shape == tuple(math.ceil(n / REGION) for n in ref.shape[:2])
        tile = np.s_[:REGION, :REGION]
        assert s.regions[0, 0] == pytest.approx(psnr_y_plain(ref[tile], out[tile]), abs=1e-9)
    same = PsnrY(scale=4).score(ref, ref)
    assert same.whole == math.inf and (same.regions == math.inf).all()


def psnr_y_plain(a, b):
    from models.metrics import psnr_y

    return psnr_y(a, b)


def test_rgb_psnr_and_the_registry():
    ref = image("bird")
    out = codec(ref, "WEBP", 50)
    assert rgb_psnr(ref, out) == psnr(ref, out)
    assert set(MEASURES) == {"ssimulacra2", "psnr-y"}
    assert isinstance(measure("ssimulacra2", 4), Ssimulacra2)
    assert measure("psnr-y", 4).scale == 4 and measure("psnr-y", 2).name == "psnr-y"
    with pytest.raises(ValueError):
        measure("vmaf", 4)
    s = Score(50.0, np.array([[70.0, 40.0]]), 256)
    assert s.worst == 40.0
