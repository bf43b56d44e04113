"""CompressArchiveParams.request(): the run's one Request (pipeline.codec.request), whose columns are
the manifest's `fidelity`, `target_psnr` and `target_score` (issue 29: presets are score floors), and
whose models are the pairs to load."""

from __future__ import annotations

import pytest

from pipeline.jobs.params import CompressArchiveParams


def params(**kw) -> CompressArchiveParams:
    return CompressArchiveParams(source="s", dest="d", **kw)


@pytest.mark.parametrize("kw, columns, models", [
    ({}, {"fidelity": "standard", "target_psnr": None, "target_score": 80.0}, ["taid-x4-webp"]),
    ({"fidelity": "preview"}, {"fidelity": "preview", "target_psnr": None, "target_score": 60.0},
     ["taid-x2-webp", "taid-x4-webp"]),
    ({"target_psnr": 38}, {"fidelity": "target", "target_psnr": 38.0, "target_score": None}, ["taid-x4-webp"]),
    ({"target_score": 85}, {"fidelity": "target", "target_psnr": None, "target_score": 85.0}, ["taid-x4-webp"]),
    ({"fidelity": "lossless"}, {"fidelity": "lossless", "target_psnr": float("inf"), "target_score": None},
     ["taid-x4-webp"]),
    ({"fidelity": "high", "model_id": "taid-x2-webp"}, {"fidelity": "high", "target_psnr": None, "target_score": 90.0},
     ["taid-x2-webp"]),
    ({"model_id": "taid-x4"}, {"fidelity": None, "target_psnr": None, "target_score": None}, ["taid-x4"]),
    ({"small_format": "png"}, {"fidelity": None, "target_psnr": None, "target_score": None}, ["taid-x2"]),
])
def test_request_columns_and_models(kw, columns, models):
    request = params(**kw).request()
    assert request.columns() == columns and request.models == models


def test_fixed_request_carries_the_run_options():
    request = params(model_id="taid-x4", scale=16, small_format="jpeg", quality=70, max_pixels=1000, verify=True).request()
    o = request.options
    assert request.fidelity is None
    assert (o.model_id, o.scale, o.small_format, o.quality, o.max_pixels, o.verify) == ("taid-x4", 16, "jpeg", 70, 1000, True)
    assert params(model_id="taid-x4").request().options.scale is None  # the model's own, resolved with the pair


def test_fidelity_request_keeps_the_limits_and_effort():
    request = params(fidelity="high", effort="fast", preview_long_side=300, max_pixels=5000).request()
    assert request.fidelity.effort == "fast" and request.fidelity.preview_long_side == 300
    assert request.options.max_pixels == 5000 and request.options.small_format is None


def test_conflicts_are_refused_when_the_params_are_made():
    with pytest.raises(ValueError, match="picks the small file's format"):
        params(fidelity="high", small_format="png")
    with pytest.raises(ValueError, match="not a fidelity preset and --target-psnr"):
        params(fidelity="high", target_psnr=40)
    with pytest.raises(ValueError, match="not --target-score and --target-psnr"):
        params(target_score=80, target_psnr=40)
    with pytest.raises(ValueError, match="lossless"):
        params(target_score=100)
