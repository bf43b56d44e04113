"""Colour-aware grayscale (taid-gray, issue 24) with the shipped weights: the quality bars against
the colorization baseline, the codec round trip (an ordinary mode-L small file that gives its
colours back; grey sources stay grey and exact; alpha as elsewhere) and a compress-archive +
rehydrate with --model taid-gray on local folders."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.evaluate import evaluate
from models.metrics import psnr
from models.zoo import load_pair, zoo_table
from pipeline.codec.options import CodecOptions, RehydrateError
from pipeline.codec.image import compress_image, decode_output, rehydrate_image

from tests import DATA
MODEL = "taid-gray"
# held-out photos (not in T91 / BSD200): all of Set5 and four colourful Set14 images
PHOTOS = sorted((DATA / "Set5").glob("*.png")) + [DATA / "Set14" / f"{n}.png" for n in ("comic", "flowers", "pepper", "zebra")]


@pytest.fixture(scope="module")
def pair():
    return load_pair(MODEL)


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_zoo_pairs_taid_gray_with_its_luma_baseline():
    table = zoo_table()
    baseline = table[MODEL]["baseline"]
    assert table[MODEL]["config"]["task"] == "gray" and table[baseline]["config"]["task"] == "luma"
    assert table[MODEL]["config"]["scale"] == 1
    assert table[MODEL]["config"]["up_blocks"] == table[baseline]["config"]["up_blocks"]  # the same TAU


def test_quality_bars_against_the_colorization_baseline():
    """The issue's bars: restored RGB at least 5 dB above the luma-only baseline, grey >= 30 dB vs luma."""
    report = evaluate(MODEL, [str(p) for p in PHOTOS])
    assert set(report) >= {"psnr_rgb", "psnr_y", "gray_vs_luma_psnr", "baseline"}
    assert report["baseline"]["model"] == zoo_table()[MODEL]["baseline"]
    assert report["psnr_rgb"] >= report["baseline"]["psnr_rgb"] + 5.0, report
    assert report["gray_vs_luma_psnr"] >= 30.0, report
    assert min(r["gray_vs_luma_psnr"] for r in report["images"]) >= 28.0  # no single photo far off (pepper: 29.1)
    assert report["psnr_rgb"] >= report["baselines"]["gray_only"]["psnr_rgb"] + 8.0  # colour really comes back


def test_codec_round_trip_is_an_ordinary_grey_png_that_restores_colour(pair):
    src = Image.open(DATA / "Set5" / "butterfly.png").convert("RGB").crop((0, 0, 201, 155))  # odd size on purpose
    small, _, rec = compress_image(png(src), pair, CodecOptions(model_id=MODEL, scale=1))
    assert rec.status == "ok" and (rec.scale, rec.model_id, rec.model_sha256) == (1, MODEL, pair.weights_sha256)
    im = Image.open(io.BytesIO(small))
    assert (im.format, im.mode, im.size) == ("PNG", "L", src.size)
    assert rec.output_format == "png" and not rec.is_gray
    # it looks like the photo's plain grayscale (this saturated corner is among the harder ones)
    assert psnr(np.asarray(im), np.asarray(src.convert("L"))) >= 28.0
    out = decode_output(rehydrate_image(small, None, pair))  # the embedded metadata alone is enough
    assert (out.mode, out.size) == ("RGB", src.size)
    restored, original = np.asarray(out), np.asarray(src)
    assert psnr(restored, original) >= 30.0
    chroma = restored.astype(int) - restored.mean(axis=2, keepdims=True)
    assert np.abs(chroma).mean() > 10  # the butterfly's orange is back, not a grey image in RGB
    # bound by model id and weights sha256: the baseline pair (same TAU architecture) is refused
    with pytest.raises(RehydrateError, match="refusing"):
        rehydrate_image(small, rec, load_pair(zoo_table()[MODEL]["baseline"]))


def test_grey_sources_stay_grey_and_exact_alpha_kept(pair):
    photo = Image.open(DATA / "Set5" / "bird.png").convert("RGB").crop((0, 0, 120, 90))
    grey = photo.convert("L")
    small, _, rec = compress_image(png(grey), pair, CodecOptions(model_id=MODEL, scale=1))
    assert rec.is_gray and Image.open(io.BytesIO(small)).mode == "L"
    out = decode_output(rehydrate_image(small, rec, pair))
    assert out.mode == "L" and np.array_equal(np.asarray(out), np.asarray(grey))

    alpha = Image.linear_gradient("L").resize(photo.size)
    for src in (photo.convert("RGBA"), grey.convert("LA")):
        src.putalpha(alpha)
        small, _, rec = compress_image(png(src), pair, CodecOptions(model_id=MODEL, scale=1))
        assert rec.alpha_stored and Image.open(io.BytesIO(small)).mode == "LA"
        out = decode_output(rehydrate_image(small, rec, pair))
        assert out.mode == src.mode and out.size == src.size
        assert np.array_equal(np.asarray(out)[..., -1], np.asarray(alpha))


def test_spatial_scale_and_fidelity_targets_are_refused_clearly(pair):
    from pipeline.codec.fidelity import requested_fidelity

    with pytest.raises(ValueError, match="not reachable with a colour-only"):
        compress_image(png(Image.new("RGB", (8, 8))), pair, CodecOptions(model_id=MODEL, scale=2))
    with pytest.raises(ValueError, match="fixed grey small file"):
        requested_fidelity("preview", None, MODEL)
    assert requested_fidelity(None, None, MODEL) is None  # --model taid-gray alone: one fixed layer


def test_archive_with_taid_gray_rehydrates_every_key_in_colour(tmp_path, ray_local):
    from pipeline.jobs.params import CompressArchiveParams
    from pipeline.jobs import run_compress, run_rehydrate
    from pipeline.manifest.parts import read_manifest
    from pipeline.jobs.params import RehydrateParams
    from pipeline.storage.fs import filesystem

    src, dest, to = tmp_path / "src", tmp_path / "archive", tmp_path / "restored"
    (src / "photos").mkdir(parents=True)
    photo = Image.open(DATA / "Set5" / "baby.png").convert("RGB").crop((0, 0, 161, 117))
    photo.save(src / "photos" / "baby.png")
    photo.save(src / "photos" / "baby.jpg", quality=92)
    photo.convert("L").save(src / "photos" / "grey.png")
    result = run_compress(CompressArchiveParams(source=str(src), dest=str(dest), model_id=MODEL, workers=1))
    assert result["by_status"] == {"ok": 3}
    rows = {r["source_key"]: r for r in read_manifest(*filesystem(str(dest))).to_pylist()}
    assert {r["scale"] for r in rows.values()} == {1} and {r["model_id"] for r in rows.values()} == {MODEL}
    for row in rows.values():
        assert Image.open(row["output_uri"]).mode == "L"

    back = run_rehydrate(RehydrateParams(archive=str(dest), to=str(to), prefix="photos/", workers=1))
    assert back["by_status"] == {"ok": 3}
    for name in ("baby.png", "baby.jpg"):
        out = Image.open(to / "photos" / name)
        assert (out.mode, out.size) == ("RGB", photo.size)
        assert psnr(np.asarray(out), np.asarray(photo)) >= 28.0
    grey = Image.open(to / "photos" / "grey.png")
    assert grey.mode == "L" and np.array_equal(np.asarray(grey), np.asarray(photo.convert("L")))


def test_tiles_join_without_seams(pair):
    """The grey networks work on 2 x 2 blocks: the tile margin counts their convolutions twice
    (tiling.margin_small, feature_stride), so tiled TAD and TAU give the untiled result."""
    from pipeline.codec import tiling

    img = np.asarray(Image.open(DATA / "Set14" / "pepper.png").convert("RGB"))[:203, :317]
    a, n_a = tiling.downscale_array(pair, img, 1, tile=4096)
    b, n_b = tiling.downscale_array(pair, img, 1, tile=96)
    assert (n_a, n_b > 6) == (1, True)
    assert np.abs(a.astype(int) - b).max() <= 1 and np.mean(a != b) < 1e-3
    ua, _ = tiling.upscale_array(pair, a, 1, tile=4096)
    ub, _ = tiling.upscale_array(pair, a, 1, tile=96)
    assert np.abs(ua.astype(int) - ub).max() <= 1 and np.mean(ua != ub) < 1e-3


def test_taid_eval_cli_reports_the_issue_keys(tmp_path, capsys):
    import json

    from flows.cli import main

    out = tmp_path / "report.json"
    assert main(["eval", "--model", MODEL, "--data", str(DATA / "Set5"), "--limit", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"psnr_rgb", "psnr_y", "gray_vs_luma_psnr"} <= set(report) and report["n_images"] == 2
    assert report["baseline"]["psnr_rgb"] < report["psnr_rgb"] and report["scale"] == 1
    assert "grey-vs-luma" in capsys.readouterr().out


def test_grey_training_step_and_export_round_trip(tmp_path):
    """`taid train --task gray|luma` builds the grey networks, trains them (the luma baseline has no
    TAD parameters) and exports weights that load back as the same kind of pair."""
    import torch

    from models.networks import GrayPair
    from models.training import TrainConfig, build_pair, make_optimizer, save_training_state, train_step
    from models.zoo import export_weights

    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    for task in ("gray", "luma"):
        cfg = TrainConfig(task=task, channels=8, down_blocks=1, up_blocks=1, patch=16, batch=2)
        pair = build_pair(cfg)
        assert isinstance(pair, GrayPair) and (sum(p.numel() for p in pair.downscaler.parameters()) > 0) == (task == "gray")
        out = pair(x)
        assert out["small"].shape == (2, 1, 16, 16) and torch.equal(out["small"], torch.round(out["small"] * 255) / 255)
        losses = train_step(pair, make_optimizer(pair, cfg), x, cfg, 0)
        assert losses["loss"] > 0
        odd = pair.downscale(torch.rand(1, 3, 15, 17))["small"]  # odd sizes are padded inside and cropped back
        assert odd.shape == (1, 3, 15, 17) and torch.equal(odd[:, 0], odd[:, 2])

        class Sampler:
            def state(self):
                return {}

        save_training_state(tmp_path / f"{task}.pt", pair, make_optimizer(pair, cfg), cfg, 1, Sampler(), [])
        path, sha = export_weights(tmp_path / f"{task}.pt", f"taid-gray-{task}test", tmp_path)
        loaded = load_pair(str(path))
        assert isinstance(loaded, GrayPair) and loaded.arch["task"] == task and loaded.scale == 1
        assert torch.equal(loaded.upscale(odd)["restored"], pair.eval().upscale(odd)["restored"])
