"""BD-rate arithmetic used by the rate-distortion benchmark."""

import pytest

from benchmarks.bdrate import bd_rate, rate_at_equal_quality

REF = [(0.2, 30.0), (0.4, 33.0), (0.8, 36.0), (1.6, 39.0)]


def test_identical_curves_have_zero_bd_rate():
    assert bd_rate(REF, REF) == pytest.approx(0.0, abs=1e-9)


def test_half_the_bits_at_equal_quality_is_minus_50_percent():
    half = [(r / 2, q) for r, q in REF]
    assert bd_rate(REF, half) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(half, REF) == pytest.approx(100.0, abs=1e-6)


def test_rate_range_restricts_the_interval():
    # test curve: half the rate below 33 dB, same rate above
    mixed = [(0.1, 30.0), (0.2, 33.0), (0.8, 36.0), (1.6, 39.0)]
    low = bd_rate(REF, mixed, rate_range=(0.1, 0.3))
    high = bd_rate(REF, mixed, rate_range=(0.8, 1.6))
    assert low < -30 and high == pytest.approx(0.0, abs=1e-6)


def test_no_overlap_gives_none_and_dominated_points_are_dropped():
    assert bd_rate(REF, [(0.1, 10.0), (0.2, 12.0)]) is None
    with_dominated = REF + [(1.0, 32.0)]  # more bits, less quality than (0.4, 33): ignored
    assert bd_rate(REF, with_dominated) == pytest.approx(0.0, abs=1e-9)


def test_single_point_against_a_curve():
    assert rate_at_equal_quality(REF, (0.2, 33.0)) == pytest.approx(-50.0)
    assert rate_at_equal_quality(REF, (0.2, 45.0)) is None
