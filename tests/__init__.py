"""Tests mirror the packages: tests/<package>/test_*.py (codec, storage, manifest, runtime, archive, jobs,
serving, models, flows, infra, ...). Every folder is a package (an `__init__.py`), so two folders may hold
files of the same name and `from tests.codec.test_codec import encode` works."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
DATA = ROOT / "tests" / "data"  # Set5, Set14 and MANIFEST.csv


def archive_root(layout: str, tmp_path: Path, request) -> str:
    """The root of a test archive in `layout`: a fresh bucket of the test S3 ("s3"; mark that case
    `services`), else a local folder."""
    if layout == "s3":
        return f"s3://{request.getfixturevalue('bucket')}/archive"  # `bucket` starts the S3 server
    return str(tmp_path / "archive")
