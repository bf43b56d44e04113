"""Tests mirror the packages: tests/<package>/test_*.py (codec, storage, manifest, runtime, archive, jobs,
serving, models, flows, infra, ...). Every folder is a package (an `__init__.py`), so two folders may hold
files of the same name and `from tests.codec.test_codec import encode` works."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
DATA = ROOT / "tests" / "data"  # Set5, Set14 and MANIFEST.csv
