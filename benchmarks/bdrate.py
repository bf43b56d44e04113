"""Bjontegaard delta rate between two rate-distortion curves.

Each curve is a list of (bits per pixel, PSNR dB) points. log10(rate) is interpolated piecewise-
linearly as a function of PSNR (monotone curves: more robust with a handful of points than the
original cubic fit, as in the AV1 common test conditions' piecewise variant), and the mean log-rate
difference over the PSNR interval both curves cover gives the rate change at equal quality.
Negative = the test curve needs fewer bits.
"""

from __future__ import annotations

import numpy as np


def _monotone(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Sort by PSNR and keep the lower convex hull's spirit: drop points that cost more bits for
    less quality than a previous one (an encoder setting that is simply dominated)."""
    pts = sorted(points, key=lambda p: (p[1], p[0]))
    rates, psnrs = [], []
    for rate, q in pts:
        if rates and rate <= rates[-1]:
            # same or lower rate at higher quality: the earlier point is dominated
            while rates and rate <= rates[-1]:
                rates.pop()
                psnrs.pop()
        rates.append(rate)
        psnrs.append(q)
    return np.log10(np.asarray(rates)), np.asarray(psnrs)


def bd_rate(
    reference: list[tuple[float, float]],
    test: list[tuple[float, float]],
    rate_range: tuple[float, float] | None = None,
    samples: int = 200,
) -> float | None:
    """Percent rate change of `test` against `reference` at equal PSNR, or None without overlap.

    `rate_range` (bpp) restricts the comparison to qualities that both curves reach with rates
    inside that range."""
    lr_ref, q_ref = _monotone(reference)
    lr_test, q_test = _monotone(test)
    if len(q_ref) < 2 or len(q_test) < 2:
        return None
    lo, hi = max(q_ref[0], q_test[0]), min(q_ref[-1], q_test[-1])
    if rate_range is not None:
        lo_r, hi_r = np.log10(rate_range[0]), np.log10(rate_range[1])
        for lr, q in ((lr_ref, q_ref), (lr_test, q_test)):
            lo = max(lo, float(np.interp(lo_r, lr, q)) if lr[0] < lo_r else lo)
            hi = min(hi, float(np.interp(hi_r, lr, q)) if lr[-1] > hi_r else hi)
    if hi <= lo:
        return None
    grid = np.linspace(lo, hi, samples)
    diff = np.interp(grid, q_test, lr_test) - np.interp(grid, q_ref, lr_ref)
    return float((10 ** diff.mean() - 1) * 100)


def rate_at_equal_quality(reference: list[tuple[float, float]], point: tuple[float, float]) -> float | None:
    """Percent rate change of a single (bpp, PSNR) point against a curve at the same PSNR (None
    when the curve does not reach that PSNR): for lossless settings, which give one point each."""
    lr_ref, q_ref = _monotone(reference)
    if not q_ref[0] <= point[1] <= q_ref[-1]:
        return None
    return float((point[0] / 10 ** np.interp(point[1], q_ref, lr_ref) - 1) * 100)
