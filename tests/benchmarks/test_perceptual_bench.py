"""The pure helpers of benchmarks/perceptual.py: crops, the quality search, the interpolation, the bar."""

import math

import pytest

from benchmarks.perceptual import bars, bytes_at_score, centre_box, crop_boxes, next_quality


def test_crops_lie_along_the_diagonal_inside_the_image():
    boxes = crop_boxes(4032, 3024)
    assert len(boxes) == 3
    for x0, y0, x1, y1 in boxes:
        assert x1 - x0 == 768 and y1 - y0 == 768 and 0 <= x0 and x1 <= 4032 and y1 <= 3024
    assert boxes[0][0] < boxes[1][0] < boxes[2][0] and boxes[0][1] < boxes[1][1] < boxes[2][1]
    # an image smaller than a crop: the whole of it, once
    assert crop_boxes(500, 480) == [(0, 0, 500, 480)]


def test_centre_box_follows_the_long_side():
    assert centre_box(3264, 1836) == (608, 150, 2656, 1686)
    x0, y0, x1, y1 = centre_box(3024, 4032)
    assert (x1 - x0, y1 - y0) == (1536, 2048)


def test_bytes_are_interpolated_between_the_adjacent_qualities():
    pts = {70: (1000, 78.0), 71: (1100, 80.0), 75: (1500, 85.0)}
    assert bytes_at_score(pts, 79.0) == pytest.approx(math.sqrt(1000 * 1100))
    assert bytes_at_score(pts, 80.0) == pytest.approx(1100)
    assert bytes_at_score(pts, 90.0) is None
    assert bytes_at_score({50: (900, 82.0)}, 80.0) == 900  # nothing below: the reaching probe itself


def test_search_ends_on_a_reaching_quality_with_a_miss_just_below():
    score = lambda q: 40 + 0.5 * q  # noqa: E731  (reaches 80 at q = 80)
    pts: dict[int, tuple[int, float]] = {}
    for _ in range(12):
        q = next_quality(pts, 80.0, start=60, slope=0.4)
        if q is None:
            break
        pts[q] = (q * 10, score(q))
    assert q is None and len(pts) <= 6
    assert min(k for k, v in pts.items() if v[1] >= 80) == 80 and 79 in pts


def test_bars_say_which_hold():
    summary = {"photo": {
        "standard": {"oracle_crop_min": 79.0, "oracle_photo_mean": 81.0, "bytes_vs_source_max": 0.5},
        "high": {"oracle_crop_min": 87.0, "bytes_vs_source_max": 0.9},
        "original": {"byte_exact": 9, "images": 9, "bytes_vs_source_max": 1.01}}}
    got = {b["bar"]: b["holds"] for b in bars(summary, {"ratio_max": 1.04, "ratio_mean": 1.0})}
    assert got["standard: every crop (oracle)"] and got["standard: mean over photos (oracle)"]
    assert not got["high: every crop (oracle)"]
    assert got["original: byte for byte"] and got["no preset above 1.02x source (photos + SR)"]
