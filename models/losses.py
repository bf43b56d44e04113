"""TAID training objective: L1 reconstruction + lambda * L1 guidance of the small image to bicubic."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def taid_loss(out: dict[str, torch.Tensor], x: torch.Tensor, guidance_weight: float) -> dict[str, torch.Tensor]:
    """`out` is TaskAwarePair.forward(x). The guidance term uses the 8-bit small image (with its
    straight-through gradient), so it measures the thumbnail a user will actually see."""
    reconstruction = F.l1_loss(out["restored"], x)
    guidance = F.l1_loss(out["small"], out["guide"])
    return {
        "loss": reconstruction + guidance_weight * guidance,
        "reconstruction": reconstruction,
        "guidance": guidance,
    }
