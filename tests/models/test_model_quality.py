"""The shipped weights meet the issue's bar on Set5, through the real `taid eval` CLI and its JSON."""

from __future__ import annotations

import json

import pytest

from flows.cli import main

from tests import DATA
SET5 = DATA / "Set5"

# (model, minimum Set5 Y-PSNR, minimum gain over bicubic down+up, minimum thumbnail Y-PSNR)
BAR = [("taid-x2", 41.0, 5.0, 35.0), ("taid-x4", 32.0, 3.0, 35.0)]


@pytest.mark.parametrize("model,min_psnr,min_gain,min_thumb", BAR)
def test_shipped_weights_meet_the_bar_on_set5(tmp_path, capsys, model, min_psnr, min_gain, min_thumb):
    out = tmp_path / "report.json"
    assert main(["eval", "--model", model, "--data", str(SET5), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"model", "scale", "data", "mean", "images", "baselines"} <= set(report)
    assert set(report["mean"]) >= {"psnr_y", "psnr_rgb", "ssim", "thumb_psnr_y"}
    assert set(report["baselines"]) == {"bicubic", "lanczos"}
    assert [r["name"] for r in report["images"]] == ["baby", "bird", "butterfly", "head", "woman"]
    mean = report["mean"]
    assert mean["psnr_y"] >= min_psnr
    assert mean["psnr_y"] - report["baselines"]["bicubic"]["psnr_y"] >= min_gain
    assert mean["psnr_y"] > report["baselines"]["lanczos"]["psnr_y"]
    assert min(r["thumb_psnr_y"] for r in report["images"]) >= min_thumb
    assert "mean" in capsys.readouterr().out  # the printed table


# Codec-aware pairs (issue 9), through their own lossy small file at its default quality:
# (model, the lossless pair it was fine-tuned from, min gain over that pair through the same codec,
#  min gain over Pillow bicubic down -> same codec -> bicubic up)
CODEC_AWARE = [
    ("taid-x2-webp", "taid-x2", 0.8, 1.0),
    ("taid-x4-webp", "taid-x4", 0.3, 0.8),
    ("taid-x4-jpeg", "taid-x4", 0.3, 0.8),
]


@pytest.mark.parametrize("model,lossless,min_gain_lossless,min_gain_bicubic", CODEC_AWARE)
def test_codec_aware_weights_beat_lossless_pair_and_bicubic_through_the_codec(
    tmp_path, model, lossless, min_gain_lossless, min_gain_bicubic
):
    from models.evaluate import evaluate
    from models.zoo import zoo_table

    block = zoo_table()[model]["channel"]
    out = tmp_path / "report.json"
    assert main(["eval", "--model", model, "--data", str(SET5), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    channel = report["channel"]
    assert channel == {"format": block["small_format"], "quality": block["quality"]}
    mean = report["mean"]
    # the bar: the decoded small file is still a faithful thumbnail at the default quality
    assert mean["thumb_psnr_y"] >= 32.0
    assert 0 < mean["bpp"] < 2.0
    assert mean["psnr_y"] - report["baselines"]["bicubic"]["psnr_y"] >= min_gain_bicubic
    base = evaluate(lossless, str(SET5), channel=channel["format"], quality=channel["quality"])
    assert base["channel"] == channel
    assert mean["psnr_y"] - base["mean"]["psnr_y"] >= min_gain_lossless
