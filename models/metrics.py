"""Image quality metrics with the super-resolution papers' conventions.

PSNR and SSIM are computed on 8-bit images (what a user gets back), on the BT.601 luma channel
(Y in [16, 235], as MATLAB's rgb2ycbcr) and on RGB, with `shave` pixels removed from every border.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8/float RGB in [0, 255] -> H x W float64 luma in [16, 235]."""
    img = img.astype(np.float64)
    return 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0


def _shave(a: np.ndarray, shave: int) -> np.ndarray:
    return a[shave:-shave, shave:-shave] if shave > 0 else a


def psnr(a: np.ndarray, b: np.ndarray, shave: int = 0, peak: float = 255.0) -> float:
    a, b = _shave(a.astype(np.float64), shave), _shave(b.astype(np.float64), shave)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def psnr_y(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    return psnr(rgb_to_y(a), rgb_to_y(b), shave)


def ssim_y(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """SSIM of the luma channels (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, valid region).

    The Gaussian window is separable: the five local statistics are filtered in one grouped
    1-D pass per axis (same values as the 2-D window to float64 rounding, ~10x faster)."""
    x = torch.from_numpy(_shave(rgb_to_y(a), shave))
    y = torch.from_numpy(_shave(rgb_to_y(b), shave))
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    stats = torch.stack([x, y, x * x, y * y, x * y])[None]  # 1 x 5 x H x W
    stats = F.conv2d(stats, g.view(1, 1, 1, 11).repeat(5, 1, 1, 1), groups=5)
    mu_x, mu_y, exx, eyy, exy = F.conv2d(stats, g.view(1, 1, 11, 1).repeat(5, 1, 1, 1), groups=5)[0]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    sxx, syy, sxy = exx - mu_x**2, eyy - mu_y**2, exy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(ssim_map.mean())


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W float in [0, 1] -> H x W x 3 uint8 (rounded, as an 8-bit file would hold it)."""
    return t[0].clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
