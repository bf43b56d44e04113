"""Single files (pipeline.archive.files): compress and rehydrate without an archive, the layer
beside the small file, the record merged with the embedded metadata, the format from the output
name, atomic writes with the usual permissions and no temporary file left on failure."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from pipeline.archive.files import FileRefused, compress_file, rehydrate_file
from pipeline.codec.formats import format_of_name
from pipeline.codec.layer import layer_name
from pipeline.errors import UserError
from pipeline.storage.fs import write_local

SET5 = Path(__file__).resolve().parents[1] / "data" / "Set5"


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "bird.png"
    Image.open(SET5 / "bird.png").convert("RGB").crop((0, 0, 96, 64)).save(path)
    return path


def usual_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_format_of_name():
    assert [format_of_name(n) for n in ("a.PNG", "b.jpg", "c.jpeg", "d.tif", "e.webp", "f", "dir.png/g", "h.bmp")] == \
        ["png", "jpeg", "jpeg", "tiff", "webp", None, None, None]


def test_fixed_small_file_round_trip_with_record(photo, tmp_path):
    small, record = tmp_path / "out" / "bird.small.png", tmp_path / "bird.json"
    result = compress_file(str(photo), str(small), model_id="taid-x2", record_path=str(record))
    assert result.layer_path is None and small.exists() and not Path(layer_name(str(small))).exists()
    assert result.record.scale == 2 and result.record.output_size == small.stat().st_size
    assert json.loads(record.read_text())["model_id"] == "taid-x2"
    assert any("bird.small.png" in line for line in result.summary(str(photo)))
    assert (small.stat().st_mode & 0o777) == usual_mode()  # not mkstemp's 0600

    out = rehydrate_file(str(small), str(tmp_path / "back.jpg"))  # the name asks for JPEG
    back = Image.open(io.BytesIO(out))
    assert back.format == "JPEG" and back.size == (96, 64)
    assert (tmp_path / "back.jpg").read_bytes() == out
    with_record = rehydrate_file(str(small), str(tmp_path / "back.png"), record_path=str(record))
    assert Image.open(io.BytesIO(with_record)).format == "PNG"
    assert [p.name for p in tmp_path.rglob(".*.tmp")] == []


def test_layered_file_needs_its_layer_unless_preview(photo, tmp_path):
    small = tmp_path / "bird.webp"
    result = compress_file(str(photo), str(small), fidelity="high")
    assert Path(result.layer_path) == Path(layer_name(str(small))) and Path(result.layer_path).exists()
    full = rehydrate_file(str(small), str(tmp_path / "full.png"))
    os.unlink(result.layer_path)
    with pytest.raises(FileRefused, match="enhancement layer .* is missing"):
        rehydrate_file(str(small), str(tmp_path / "never.png"))
    assert not (tmp_path / "never.png").exists()
    preview = rehydrate_file(str(small), str(tmp_path / "preview.png"), preview=True)
    assert Image.open(io.BytesIO(preview)).size == Image.open(io.BytesIO(full)).size


def test_refusals_are_one_line_user_errors(photo, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    record = tmp_path / "bad.json"
    with pytest.raises(FileRefused) as info:
        compress_file(str(bad), str(tmp_path / "never.png"), record_path=str(record))
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    assert json.loads(record.read_text())["status"] != "ok"  # the refused image's record is written
    assert not (tmp_path / "never.png").exists()
    with pytest.raises(FileRefused, match="fidelity target picks"):
        compress_file(str(photo), str(tmp_path / "x.webp"), fidelity="high", quality=80)
    with pytest.raises(FileRefused, match="cannot rehydrate"):
        rehydrate_file(str(photo), str(tmp_path / "x.png"))  # a plain PNG: no TAID metadata
    with pytest.raises(FileRefused, match="cannot rehydrate"):
        rehydrate_file(str(tmp_path / "missing.png"), str(tmp_path / "y.png"))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_bytes(b"x")  # a non-empty folder: the rename over it fails
    with pytest.raises(OSError):
        write_local(str(target), b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    write_local(str(tmp_path / "new" / "file.bin"), b"data")
    assert (tmp_path / "new" / "file.bin").read_bytes() == b"data"
    assert ((tmp_path / "new" / "file.bin").stat().st_mode & 0o777) == usual_mode()
