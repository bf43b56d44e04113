"""`make demo`: the main job on the embedded defaults. Until compress-archive lands this
evaluates the shipped pairs on the bundled Set5 images (see README)."""

from __future__ import annotations

from pipeline.cli import main

if __name__ == "__main__":
    for model in ("taid-x2", "taid-x4"):
        main(["eval", "--model", model, "--data", "tests/data/Set5"])
