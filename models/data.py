"""Training images: listing (local folders or fsspec URIs), decoding, random augmented patches."""

from __future__ import annotations

import io
from collections.abc import Sequence

import fsspec
import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def list_images(uris: Sequence[str]) -> list[str]:
    """Every image file under each URI (a folder, a prefix or a single file), sorted per URI."""
    found: list[str] = []
    for uri in uris:
        fs, path = fsspec.core.url_to_fs(uri)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        prefix = "" if protocol in ("file", "local") else f"{protocol}://"
        if fs.isfile(path):
            paths = [path]
        else:
            paths = sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_SUFFIXES))
        found += [prefix + p for p in paths]
    return found


def read_rgb(uri: str) -> np.ndarray:
    """H x W x 3 uint8 (grayscale and palette images are converted, alpha dropped)."""
    with fsspec.open(uri, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def split_holdout(uris: Sequence[str], every: int) -> tuple[list[str], list[str]]:
    """Deterministic split: every `every`-th file is held out for validation (0 = none)."""
    if every <= 0:
        return list(uris), []
    train = [u for i, u in enumerate(uris) if i % every != every - 1]
    held = [u for i, u in enumerate(uris) if i % every == every - 1]
    return train, held


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W float in [0, 1]."""
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def mod_crop(img: np.ndarray, multiple: int) -> np.ndarray:
    """Crop the bottom/right edge to a multiple of `multiple` (the SR papers' evaluation convention)."""
    h, w = img.shape[:2]
    return img[: h - h % multiple, : w - w % multiple]


class PatchSampler:
    """Random square patches with random flips / 90-degree rotations, as float batches on `device`.

    Images are kept as uint8 tensors on the device (T91 + BSD200 is about 45 MB decoded), so a
    batch costs a few slicing ops and no host-to-device copy. Images are drawn in proportion to
    their area, so large and small images are sampled evenly per pixel.
    """

    def __init__(self, images: Sequence[np.ndarray], patch: int, batch: int, seed: int, device: str = "cpu"):
        usable = [im for im in images if im.shape[0] >= patch and im.shape[1] >= patch]
        if not usable:
            raise ValueError(f"no training image is at least {patch}x{patch}")
        self.images = [torch.from_numpy(im).permute(2, 0, 1).contiguous().to(device) for im in usable]
        areas = np.array([im.shape[0] * im.shape[1] for im in usable], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.patch, self.batch, self.device = patch, batch, device
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def sample(self) -> torch.Tensor:
        p = self.patch
        idx = self.rng.choice(len(self.images), size=self.batch, p=self.weights)
        crops = []
        for i in idx:
            im = self.images[i]
            top = int(self.rng.integers(0, im.shape[1] - p + 1))
            left = int(self.rng.integers(0, im.shape[2] - p + 1))
            crops.append(im[:, top : top + p, left : left + p])
        x = torch.stack(crops).float().div_(255.0)
        if self.rng.random() < 0.5:
            x = x.flip(-1)
        if self.rng.random() < 0.5:
            x = x.flip(-2)
        if self.rng.random() < 0.5:
            x = x.transpose(-1, -2)
        return x.contiguous(memory_format=torch.channels_last)
