"""Synthetic "scanned document / screenshot" images: a domain the shipped pairs never saw
(T91 and BSD200 are natural photos). Used by the fine-tuning tests and benchmark."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = (
    "archive invoice total amount due date reference customer order shipping account balance "
    "report figure table section page summary quarter revenue cost margin update status ready"
).split()


def render_document(seed: int, width: int = 256, height: int = 256) -> Image.Image:
    """A page of sharp anti-aliased text lines, rules and UI boxes on a light background."""
    rng = np.random.default_rng(seed)
    bg = tuple(int(v) for v in rng.integers(225, 256, 3))
    im = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(im)
    y = int(rng.integers(2, 10))
    while y < height - 8:
        kind = rng.random()
        size = int(rng.integers(9, 22))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        if kind < 0.12:  # a coloured button / header bar with text
            fill = tuple(int(v) for v in rng.integers(40, 220, 3))
            x0, x1 = int(rng.integers(0, width // 3)), int(rng.integers(width // 2, width))
            draw.rectangle((x0, y, x1, y + size + 6), fill=fill, outline=ink)
            text_ink = (255, 255, 255) if sum(fill) < 380 else (0, 0, 0)
            draw.text((x0 + 4, y + 3), " ".join(rng.choice(WORDS, 3)), fill=text_ink, font=ImageFont.load_default(size))
            y += size + 12
        elif kind < 0.2:  # a thin rule
            draw.line((0, y, width, y), fill=ink, width=1)
            y += 4
        else:
            words = " ".join(rng.choice(WORDS, int(rng.integers(3, 12))))
            draw.text((int(rng.integers(2, 20)), y), words, fill=ink, font=ImageFont.load_default(size))
            y += size + int(rng.integers(2, 8))
    return im


def write_documents(folder, count: int, size: int = 256, seed: int = 0) -> list[str]:
    """Write `count` PNG pages into `folder` (a local path); returns their paths."""
    from pathlib import Path

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = out / f"doc-{i:04d}.png"
        render_document(seed + i, size, size).save(path)
        paths.append(str(path))
    return paths
