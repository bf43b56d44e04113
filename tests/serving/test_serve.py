"""`taid serve` against a real Ray Serve on 127.0.0.1 over an archive in SeaweedFS, in the session's
local Ray: images equal to `taid rehydrate`, ETag/304, 400/404/409, the token (401) and the archive
browser in a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from flows.cli import main
from pipeline.jobs import run_compress
from pipeline.jobs.params import CompressArchiveParams
from pipeline.manifest.parts import ManifestWriter
from pipeline.archive.access import find_row
from pipeline.serving.config import ServeParams
from pipeline.serving.http import token_digest

from tests import DATA, ROOT
SCREENSHOT = ROOT / "benchmarks" / "results" / "serve_browser.png"
CHROMIUM = "/usr/bin/chromium"
TOKEN = "test-token-7f3a"
BUCKET = "serve-tests"


def rgba_png(size: int = 48) -> bytes:
    arr = np.random.default_rng(5).integers(0, 256, (size, size, 4), dtype=np.uint8)
    arr[..., 3] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


@pytest.fixture(scope="module")
def archive(s3, ray_local):
    fs = s3.filesystem()
    fs.makedirs(BUCKET, exist_ok=True)
    sources = {f"set5/{p.name}": p.read_bytes() for p in sorted((DATA / "Set5").glob("*.png"))}
    for name in ("comic", "coastguard", "foreman"):
        sources[f"set14/{name}.png"] = (DATA / "Set14" / f"{name}.png").read_bytes()
    jpeg = io.BytesIO()
    Image.open(DATA / "Set5" / "bird.png").convert("RGB").save(jpeg, "JPEG", quality=92)
    sources["photos/bird.jpg"] = jpeg.getvalue()
    sources["alpha/logo.png"] = rgba_png()
    broken = {"bad/empty.png": b"", "bad/notes.png": b"not an image\n", "bad/cut.png": sources["set5/bird.png"][:400]}
    for key, data in {**sources, **broken}.items():
        fs.pipe(f"{BUCKET}/src/{key}", data)
    result = run_compress(CompressArchiveParams(
        source=f"s3://{BUCKET}/src", dest=f"s3://{BUCKET}/archive", model_id="taid-x4", verify=True))
    assert result["by_status"]["ok"] == len(sources) and sum(result["by_status"].values()) == len(sources) + 3
    # one image at the high fidelity preset: a small file plus an enhancement layer (issue 13)
    fs.pipe(f"{BUCKET}/layered/bird.jpg", sources["photos/bird.jpg"])
    layered = run_compress(CompressArchiveParams(
        source=f"s3://{BUCKET}/layered", dest=f"s3://{BUCKET}/archive-layered", fidelity="high"))
    assert layered["by_status"] == {"ok": 1} and layered["images_with_layer"] == 1
    # and one at `original` (issue 21), beside it in the same archive: the JPEG itself comes back
    fs.pipe(f"{BUCKET}/originals/orig/bird.jpg", sources["photos/bird.jpg"])
    original = run_compress(CompressArchiveParams(
        source=f"s3://{BUCKET}/originals", dest=f"s3://{BUCKET}/archive-layered", fidelity="original", effort="fast"))
    assert original["by_status"] == {"ok": 1}
    return {"uri": f"s3://{BUCKET}/archive", "fs": fs, "sources": sources, "layered": f"s3://{BUCKET}/archive-layered"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """Raw HTTP on loopback: http.client sends the path exactly as given (no `..` normalisation)."""

    def __init__(self, port: int):
        self.port = port

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request("GET", path, headers=headers or {})
            res = conn.getresponse()
            return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
        finally:
            conn.close()

    def json(self, path: str, headers: dict | None = None):
        status, _, body = self.get(path, headers)
        assert status == 200, (path, status, body)
        return json.loads(body)


@pytest.fixture(scope="module")
def server(archive, ray_local):
    """The application deployed as `taid serve` deploys it (one replica, no token: loopback only)."""
    from ray import serve

    from pipeline.serving.app import deploy

    port = free_port()

    def start(uri: str | None = None, **params) -> Client:
        deploy(ServeParams(archive=uri or archive["uri"], **params), host="127.0.0.1", port=port, num_cpus=0.5)
        return Client(port)

    yield start
    serve.shutdown()


@pytest.fixture(scope="module")
def open_client(server):
    return server(allow_anonymous=True)


def test_image_equals_taid_rehydrate(open_client, archive, tmp_path):
    for key, ctype in [("set5/woman.png", "image/png"), ("photos/bird.jpg", "image/jpeg"), ("alpha/logo.png", "image/png")]:
        status, headers, body = open_client.get(f"/image/{key}")
        assert status == 200 and headers["content-type"] == ctype, (key, status, body[:200])
        out = tmp_path / key.replace("/", "_")
        assert main(["rehydrate", archive["uri"], key, "-o", str(out)]) == 0
        assert body == out.read_bytes()  # the same bytes as the CLI writes, so the same pixels
        served, original = decoded(body), decoded(archive["sources"][key])
        assert served.size == original.size and served.mode == original.mode
        assert np.array_equal(np.asarray(served), np.asarray(decoded(out.read_bytes())))


def test_thumb_meta_etag_and_cache(open_client, archive):
    key = "set14/comic.png"
    row = find_row(archive["uri"], key)
    status, headers, body = open_client.get(f"/thumb/{key}")
    assert status == 200 and headers["content-type"] == "image/png"
    assert body == archive["fs"].cat(row["output_uri"])  # the small file as stored
    assert headers["etag"] == f'"{row["output_sha256"]}"' and headers["cache-control"].startswith("private, max-age=")
    status, again, body = open_client.get(f"/thumb/{key}", {"If-None-Match": headers["etag"]})
    assert status == 304 and body == b"" and again["etag"] == headers["etag"]

    meta = open_client.json(f"/meta/{key}")
    assert meta["source_key"] == key and meta["output_sha256"] == row["output_sha256"] and meta["width"] == 250

    status, first, body = open_client.get(f"/image/{key}")
    assert status == 200 and first["x-taid-cache"] == "miss" and "rehydrate;dur=" in first["server-timing"]
    assert decoded(body).size == (250, 361)
    status, second, cached = open_client.get(f"/image/{key}")
    assert status == 200 and second["x-taid-cache"] == "hit" and cached == body and second["etag"] == first["etag"]
    assert open_client.get(f"/image/{key}", {"If-None-Match": f'"other", {first["etag"]}'})[0] == 304
    assert open_client.get(f"/image/{key}", {"If-None-Match": '"other"'})[0] == 200

    status, small_h, small = open_client.get(f"/image/{key}?max_side=64&format=jpeg&quality=80")
    assert status == 200 and small_h["content-type"] == "image/jpeg" and small_h["etag"] != first["etag"]
    assert decoded(small).format == "JPEG" and decoded(small).size == (44, 64)  # 250x361 scaled to a 64 px long side
    status, preview_h, preview = open_client.get(f"/image/{key}?preview=1")
    assert status == 200 and decoded(preview).size == (250, 361)
    stats = open_client.json("/api/stats")
    assert stats["pairs"] == ["taid-x4"] and stats["cache"]["hits"] >= 1 and stats["cache"]["bytes"] > 0
    assert stats["rss_bytes"] > 0
    assert preview_h["etag"] == first["etag"]  # no enhancement layer: preview is the same image, so the same tag


def test_bad_keys_and_parameters(open_client):
    reads = open_client.json("/api/stats")["storage_reads"]
    for path in ["/image/%2e%2e/src/set5/bird.png", "/thumb/set5/../set5/bird.png", "/image//etc/passwd",
                 "/meta/set5%5cbird.png", "/thumb/set5/./bird.png", "/image/set5//bird.png"]:
        status, _, body = open_client.get(path)
        assert status == 400 and json.loads(body) == {"detail": "bad key"}, (path, status, body)
    assert open_client.json("/api/stats")["storage_reads"] == reads  # refused keys never reached storage

    for query in ["quality=0", "quality=abc", "format=bmp", "max_side=0", "preview=maybe", "colour=red"]:
        status, _, body = open_client.get(f"/image/set5/bird.png?{query}")
        assert status == 400 and json.loads(body)["detail"].startswith("bad parameters"), (query, status, body)
    for path in ["/api/rows?limit=0", "/api/rows?offset=-1", "/api/rows?status=OK;drop"]:
        assert open_client.get(path)[0] == 400, path
    assert open_client.get("/image/alpha/logo.png?format=jpeg")[0] == 400  # JPEG cannot hold its alpha

    for path in ["/image/set5/nosuch.png", "/thumb/set5/nosuch.png", "/meta/nosuch.png", "/thumb/bad/cut.png"]:
        status, _, body = open_client.get(path)
        assert status == 404 and b"nosuch" not in body, (path, status, body)


def test_tampered_small_file_and_other_weights_409_never_cached(open_client, archive):
    fs, key = archive["fs"], "set14/coastguard.png"
    small = find_row(archive["uri"], key)["output_uri"]
    original = fs.cat(small)
    try:
        fs.pipe(small, original[:-12] + b"tampered....")
        for path in [f"/image/{key}", f"/image/{key}", f"/thumb/{key}", f"/thumb/{key}"]:
            status, _, body = open_client.get(path)
            assert status == 409 and b"modified or corrupt" in body, (path, status, body)
    finally:
        fs.pipe(small, original)
    status, _, body = open_client.get(f"/image/{key}")
    assert status == 200 and decoded(body).size == (352, 288)  # the refusals left nothing behind

    # a newer row for another key naming weights that did not make its small file
    row = find_row(archive["uri"], "set14/foreman.png")
    writer = ManifestWriter(fs, f"{BUCKET}/archive", "weights-differ")
    writer.add({**row, "run_id": "weights-differ", "model_sha256": "0" * 64, "processed_at": datetime.now(timezone.utc)})
    writer.close()
    for _ in range(2):
        status, _, body = open_client.get("/image/set14/foreman.png")
        assert status == 409 and b"0000000000" in body, (status, body)


def test_rows_listing_shows_failed_and_skipped(open_client, archive):
    everything = open_client.json("/api/rows?limit=500")
    assert everything["counts"] == {"ok": len(archive["sources"]), "skipped": 2, "failed": 1}
    failed = open_client.json("/api/rows?status=failed")["rows"]
    assert [r["key"] for r in failed] == ["bad/cut.png"] and failed[0]["status"].startswith("failed_") and failed[0]["error"]
    skipped = open_client.json("/api/rows?status=skipped")["rows"]
    assert {r["key"] for r in skipped} == {"bad/empty.png", "bad/notes.png"} and all(r["error"] for r in skipped)
    page = open_client.json("/api/rows?prefix=set5/&offset=2&limit=2")
    assert page["total"] == 5 and [r["key"] for r in page["rows"]] == ["set5/butterfly.png", "set5/head.png"]
    woman = open_client.json("/api/rows?prefix=set5/woman")["rows"][0]
    assert (woman["width"], woman["height"], woman["small_width"], woman["small_height"]) == (228, 344, 57, 86)
    assert woman["bytes_saved"] == woman["source_bytes"] - woman["stored_bytes"] > 0 and woman["roundtrip_psnr"] > 20


def test_byte_lru_stays_within_its_budget():
    from pipeline.serving.cache import ByteLRU

    cache = ByteLRU(100)
    cache.put("a", b"x" * 40, {})
    cache.put("b", b"y" * 40, {})
    assert cache.get("a")[0] == b"x" * 40  # "a" is now the most recently used
    cache.put("c", b"z" * 40, {})  # over budget: the least recently used ("b") goes
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    cache.put("huge", b"h" * 101, {})  # larger than the whole budget: never stored
    assert cache.get("huge") is None
    assert cache.stats()["bytes"] == 80 and cache.stats()["evictions"] == 1
    off = ByteLRU(0)
    off.put("a", b"x", {})
    assert off.get("a") is None


def test_serve_config_file_and_cli_guard(archive, ray_local, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    from pipeline.serving.app import DEPLOYMENT, build_app

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "infra" / "serve" / "taid-serve.yaml").read_text()))
    assert config.http_options.host == "127.0.0.1"
    app = config.applications[0]
    assert app.import_path == "pipeline.serving.app:build_app" and app.deployments[0].name == DEPLOYMENT
    assert app.deployments[0].autoscaling_config["max_replicas"] >= 2
    params = ServeParams.model_validate(app.args)
    assert params.allow_anonymous is False and params.token_env == "TAID_SERVE_TOKEN"
    build_app({**app.args, "archive": archive["uri"]})  # what `serve deploy` imports and calls
    with pytest.raises(ValueError, match="credentials"):
        ServeParams(archive=archive["uri"], storage_options={"secret": "x"})
    monkeypatch.delenv("TAID_SERVE_TOKEN", raising=False)
    assert main(["serve", archive["uri"], "--host", "0.0.0.0"]) == 2  # never open beyond loopback by default


@pytest.fixture(scope="module")
def token_client(server):
    """The same app redeployed with a token (as `taid serve --token`: only its sha256 is deployed)."""
    client = server(token_sha256=token_digest(TOKEN))
    deadline, in_a_row = time.monotonic() + 60, 0
    while in_a_row < 5:  # the replacement replica has taken over (and the open one is gone)
        assert time.monotonic() < deadline, "the token deployment did not take over"
        in_a_row = in_a_row + 1 if client.get("/api/rows")[0] == 401 else 0
        time.sleep(0.2)
    return client


def test_token_required_everywhere_but_healthz(token_client):
    assert token_client.get("/healthz")[0] == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()}
    answers = set()
    for path in ["/", "/browser.js", "/thumb/set5/woman.png", "/thumb/set5/nosuch.png", "/image/set5/woman.png",
                 "/meta/nosuch.png", "/api/rows", "/api/stats", "/nonexistent", "/image/%2e%2e/x", "/healthz/x"]:
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"},
                        {"Authorization": TOKEN}, {"Authorization": "Basic !!"}]:
            status, h, body = token_client.get(path, headers)
            assert status == 401, (path, headers, status)
            answers.add(body)
    assert answers == {b'{"detail":"unauthorized"}'}  # known and unknown keys look the same
    assert token_client.get("/thumb/set5/woman.png", bearer)[0] == 200
    assert token_client.get("/thumb/set5/nosuch.png", bearer)[0] == 404
    assert token_client.get("/", basic)[0] == 200 and token_client.get("/image/set5/baby.png", basic)[0] == 200
    status, headers, _ = token_client.get("/")
    assert status == 401 and headers["www-authenticate"].startswith("Basic ")  # the browser asks for it


def test_browser_gallery_and_full_image(token_client, archive, tmp_path, request):
    from playwright.sync_api import sync_playwright

    # the committed screenshots (docs/serve.md) change only when asked: pytest --save-screenshots
    shot = SCREENSHOT if request.config.getoption("--save-screenshots") else tmp_path / SCREENSHOT.name

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: .ci/run installs it (apt-get install chromium)"
    rows = {r["key"]: r for r in token_client.json("/api/rows?limit=500", {"Authorization": f"Bearer {TOKEN}"})["rows"]}
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            # the documented way: the browser's own login, any user name and the token as password
            context = browser.new_context(http_credentials={"username": "taid", "password": TOKEN},
                                          viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{token_client.port}/")
            page.wait_for_selector(".card img.thumb")
            page.wait_for_function(
                "[...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
            shown = page.eval_on_selector_all("img.thumb", "els => els.map(e => [e.alt, e.naturalWidth, e.naturalHeight])")
            assert len(shown) == len(archive["sources"])
            for key, w, h in shown:
                assert (w, h) == (rows[key]["small_width"], rows[key]["small_height"]), key
            errors = dict(page.eval_on_selector_all(
                ".card.failed, .card.skipped", "els => els.map(e => [e.dataset.key, e.querySelector('.error').textContent])"))
            assert set(errors) == {"bad/cut.png", "bad/empty.png", "bad/notes.png"} and all(errors.values())
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)

            page.click(".card[data-key='set5/woman.png'] img.thumb")
            page.wait_for_function("document.getElementById('full-image').dataset.loaded === '1'", timeout=120_000)
            size = page.eval_on_selector("#full-image", "e => [e.naturalWidth, e.naturalHeight]")
            assert tuple(size) == decoded(archive["sources"]["set5/woman.png"]).size == (228, 344)
            info = page.inner_text("#full-info")
            assert "228×344 px" in info and " ms" in info
            page.screenshot(path=str(shot.with_name("serve_browser_viewer.png")))

            page.click("#close")
            page.select_option("#status-filter", "failed")
            page.click("#apply")
            page.wait_for_function("document.querySelectorAll('.card').length === 1")
            assert page.inner_text(".card .key") == "bad/cut.png"
        finally:
            browser.close()
    assert os.path.getsize(shot) > 10_000


def test_preview_leaves_out_the_enhancement_layer(server, archive):
    """Issue 13's layered archive: the full image meets its fidelity, `preview=1` is TAU(small) alone."""
    from models.metrics import psnr_y
    from pipeline.codec.measure import Ssimulacra2

    client = server(archive["layered"], allow_anonymous=True)
    deadline, in_a_row = time.monotonic() + 60, 0
    while in_a_row < 5:  # the layered archive's replica has taken over (the token one answers 401)
        assert time.monotonic() < deadline, "the layered deployment did not take over"
        in_a_row = in_a_row + 1 if client.get("/meta/bird.jpg")[0] == 200 else 0
        time.sleep(0.2)
    meta = client.json("/meta/bird.jpg")
    # `high`: SSIMULACRA2 >= 90 in the worst 256-px region (JSON writes an exact PSNR as "inf")
    assert meta["fidelity"] == "high" and meta["target_score"] == 90 and meta["target_psnr"] is None
    assert meta["score_worst"] >= meta["target_score"] and meta["enhancement_size"] > 0
    src = np.asarray(decoded(archive["sources"]["photos/bird.jpg"]).convert("RGB"))
    status, full_h, full = client.get("/image/bird.jpg?format=png")
    status_p, preview_h, preview = client.get("/image/bird.jpg?format=png&preview=1")
    assert status == status_p == 200 and preview_h["etag"] != full_h["etag"]
    full_px, preview_px = (np.asarray(decoded(b).convert("RGB")) for b in (full, preview))
    assert full_px.shape == preview_px.shape == src.shape
    full_worst, preview_worst = (Ssimulacra2().score(src, px).worst for px in (full_px, preview_px))
    assert full_worst >= 90 > preview_worst and psnr_y(full_px, src) > psnr_y(preview_px, src)
    # `original`: the source JPEG byte for byte, on request and as that archive row's default
    jpeg = archive["sources"]["photos/bird.jpg"]
    for query in ("?format=original", ""):
        status, headers, body = client.get(f"/image/orig/bird.jpg{query}")
        assert status == 200 and body == jpeg and headers["content-type"] == "image/jpeg"
    status, _, body = client.get("/image/orig/bird.jpg?format=png")  # its exact pixels on request
    assert status == 200 and np.array_equal(np.asarray(decoded(body).convert("RGB")), src)
