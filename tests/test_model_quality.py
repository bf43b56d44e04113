"""The shipped weights meet the issue's bar on Set5, through the real `taid eval` CLI and its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main

SET5 = Path(__file__).parent / "data" / "Set5"

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
