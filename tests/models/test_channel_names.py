"""One name per meaning (issue 22): the lossy coding between TAD and TAU in training, and the block
recording it on a pair, are the *channel* (models.channel); data stored before the rename (training
configs with codec / codec_quality / codec_gradient and "webp", zoo entries with a "codec" block)
is still read, and only the new names are written."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

import models.zoo as zoo
from models.channel import LEGACY_KEYS, channel_format, channel_settings
from models.training import TrainConfig, train
from models.zoo import entry_channel, load_pair, sha256_file, zoo_table

ROOT = Path(__file__).resolve().parents[2]
SET14 = ROOT / "tests" / "data" / "Set14"
OLD = {"codec": "webp", "codec_quality": (40, 80), "codec_gradient": "proxy"}


def test_channel_format_reads_the_old_spelling_and_refuses_others():
    assert channel_format("webp") == channel_format("webp-lossy") == "webp-lossy"
    assert channel_format("jpeg") == "jpeg" and channel_format(None) is None and channel_format("") is None
    for bad in ("png", "webp-lossless", "avif"):
        with pytest.raises(ValueError, match=bad):
            channel_format(bad)


def test_old_training_config_keys_are_read_and_only_new_ones_written():
    cfg = TrainConfig(**{"scale": 2, **OLD})
    assert (cfg.channel, cfg.channel_quality, cfg.channel_gradient) == ("webp-lossy", (40, 80), "proxy")
    dumped = cfg.model_dump()
    assert not {"codec", "codec_quality", "codec_gradient"} & set(dumped)
    assert TrainConfig(**dumped) == cfg  # what a checkpoint stores now reads back the same
    assert channel_settings(OLD) == {"channel": "webp-lossy", "channel_quality": (40, 80), "channel_gradient": "proxy"}
    # a config with both (never written, but possible by hand): the new key wins
    assert channel_settings({**OLD, "channel": "jpeg"})["channel"] == "jpeg"
    with pytest.raises(ValueError):
        TrainConfig(channel="png")


def test_shipped_weights_keep_their_bytes_and_old_keys_yet_give_the_zoo_block():
    """The weights files are not rewritten (their sha256 is in zoo.json): a pair loaded by file,
    so derived from the blob's old-style train_config, has the zoo entry's channel apart from the
    chosen default quality."""
    table = zoo_table()
    aware = {m: e for m, e in table.items() if "channel" in e}
    assert set(aware) == {"taid-x2-webp", "taid-x4-webp", "taid-x4-jpeg"}
    assert not any("codec" in e for e in table.values())  # the zoo itself is written with the new key
    for model, entry in aware.items():
        path = zoo.WEIGHTS_DIR / entry["file"]
        assert sha256_file(path) == entry["sha256"]
        blob = torch.load(path, weights_only=True)
        assert "codec" in blob["train_config"]  # stored before the rename
        by_file = load_pair(str(path)).channel
        assert {k: v for k, v in by_file.items() if k != "quality"} == {
            k: v for k, v in entry["channel"].items() if k != "quality"}, model
        assert load_pair(model).channel == entry["channel"]


def test_a_zoo_entry_written_before_the_rename_is_read():
    block = {"small_format": "jpeg", "quality": 75, "quality_band": [30, 95], "gradient": "proxy"}
    assert entry_channel({"codec": block}) == block and entry_channel({"channel": block}) == block
    assert entry_channel({}) is None


@pytest.fixture
def tmp_zoo(tmp_path, monkeypatch):
    folder = tmp_path / "zoo"
    folder.mkdir()
    (folder / "zoo.json").write_text("{}")
    monkeypatch.setattr(zoo, "ZOO_FILE", folder / "zoo.json")
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", folder)
    return folder


def test_add_codec_model_exports_a_pre_rename_run_with_a_channel_block(tmp_path, tmp_zoo, monkeypatch):
    """infra/cpu/add_codec_model.py on a run whose last.pt says codec webp (as runs before issue 22
    did): the entry gets a `channel` block, the shared training record (models.zoo.zoo_entry), and
    the pair loads with that block."""
    run = tmp_path / "run"
    cfg = TrainConfig(scale=2, channels=8, down_blocks=1, up_blocks=1, data=[str(SET14)], patch=32, batch=2, steps=2,
                      warmup_steps=1, val_every=100, ckpt_every=100, holdout_every=0, channel="webp-lossy",
                      channel_quality=(40, 80), channel_gradient="proxy")
    last = train(cfg, run, device="cpu", log=lambda *_: None)
    state = torch.load(last, weights_only=True)
    config = {k: v for k, v in state["config"].items() if k not in LEGACY_KEYS.values()}  # ("channels" stays)
    state["config"] = {**config, **OLD, "init_from": "taid-x2"}  # as stored before the rename
    torch.save(state, last)
    (tmp_zoo / "zoo.json").write_text(json.dumps({"taid-x2-t": {"metrics": {"Set5": {"psnr_y": 1.0}}}}))
    (tmp_zoo / "taid-x2-t-00000000.pt").write_bytes(b"an older version")

    monkeypatch.setattr(sys, "argv", ["add_codec_model.py", "--run", str(run), "--id", "taid-x2-t", "--quality", "70",
                                      "--command", "taid train ..."])
    runpy.run_path(str(ROOT / "infra" / "cpu" / "add_codec_model.py"), run_name="__main__")

    entry = json.loads((tmp_zoo / "zoo.json").read_text())["taid-x2-t"]
    assert list(entry) == ["file", "sha256", "config", "parameters", "channel", "training", "metrics"]
    assert entry["channel"] == {"small_format": "webp-lossy", "quality": 70, "quality_band": [40, 80], "gradient": "proxy"}
    assert entry["config"] == {"scale": 2, "channels": 8, "down_blocks": 1, "up_blocks": 1}
    training = entry["training"]
    assert training["init_from"] == "taid-x2" and training["steps"] == 2 and training["command"] == "taid train ..."
    assert training["channel"].startswith("webp-lossy q40-80") and "gradient: proxy" in training["channel"]
    assert entry["metrics"] == {"Set5": {"psnr_y": 1.0}}  # kept from the previous entry
    assert [p.name for p in tmp_zoo.glob("taid-x2-t-*.pt")] == [entry["file"]]  # the older file is gone
    assert sha256_file(tmp_zoo / entry["file"]) == entry["sha256"]
    assert load_pair("taid-x2-t").channel == entry["channel"]
