"""The archive server: one Ray Serve deployment (FastAPI ingress) over one archive.

Each replica keeps the archive's pairs loaded (warmed at start-up), a byte-bounded LRU of responses
and a short-lived cache of manifest rows. Every route but /healthz sits behind the token when one is
configured; keys are validated before anything touches storage; refusals are never cached.
"""

import io
import logging
import os
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from ray import serve
from typing_extensions import Annotated

from models.zoo import WeightsError
from pipeline.archive import RehydrateRefused, SmallFileMissing, find_row, read_small_verified, rehydrate_row, warm_pair
from pipeline.codec import CODEC_VERSION, SOURCE_OUTPUT, encode_output
from pipeline.serving import listing
from pipeline.serving.cache import ByteLRU, TTLCache
from pipeline.serving.config import ImageQuery, ServeParams
from pipeline.serving.http import CONTENT_TYPES, authorized, etag, json_row, matches, sniff_content_type, token_digest
from pipeline.storage import UnsafeKeyError, validate_key

STATIC = Path(__file__).parent / "static"
PAGE = (STATIC / "index.html").read_bytes()
SCRIPT = (STATIC / "browser.js").read_bytes()
APP_NAME = "taid-archive"
DEPLOYMENT = "ArchiveServer"
ROUTES = ("thumb", "image", "meta", "api", "healthz", "browser.js")  # metric labels: a fixed set, not keys

api = FastAPI(title="taid-archive", docs_url=None, redoc_url=None, openapi_url=None)


def _route(scope: dict) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    path = (path[len(root):] if root and path.startswith(root) else path) or "/"
    if path == "/healthz":  # exactly this path is open: /healthz/anything is not
        return "healthz"
    first = path.lstrip("/").split("/", 1)[0]
    return first if first in ROUTES and first != "healthz" else ("page" if path == "/" else "other")


SAFETY_HEADERS = [(b"x-content-type-options", b"nosniff"),
                  (b"cross-origin-resource-policy", b"same-origin")]  # other sites cannot embed private images


class Guard:
    """Token check before routing (an unknown path and an unknown key answer the same 401), safety
    headers and metrics on every answer. A plain ASGI middleware: Starlette's `@app.middleware`
    (BaseHTTPMiddleware) runs each request through an extra task and a memory stream, which cost a
    large share of a cached thumbnail's time under 16 clients."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        server: ArchiveServer = scope["app"].state.server  # the app Serve runs (a copy of `api`)
        start = time.perf_counter()
        route, status = _route(scope), [500]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *SAFETY_HEADERS]}
            await send(message)

        auth = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"), None)
        try:
            if route != "healthz" and server.token_sha256 and not authorized(auth, server.token_sha256):
                # Basic on the page and its script: the browser asks once and then sends it with every request
                scheme = "Basic" if route in ("page", "browser.js") else "Bearer"
                response = JSONResponse({"detail": "unauthorized"}, status_code=401,
                                        headers={"WWW-Authenticate": f'{scheme} realm="taid-archive", charset="UTF-8"'})
                await response(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            server.observe(route, status[0], time.perf_counter() - start)


api.add_middleware(Guard)


@api.exception_handler(RequestValidationError)
async def bad_parameters(request: Request, exc: RequestValidationError):
    fields = sorted({".".join(str(p) for p in e["loc"][1:]) for e in exc.errors()})
    return JSONResponse({"detail": f"bad parameters: {', '.join(fields)}"}, status_code=400)


def pick_device(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"  # Ray hides GPUs the replica was not given


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def downsize(data: bytes, max_side: int, fmt: str | None, quality: int | None) -> bytes:
    """Shrink a rehydrated image so its longer side is max_side, keeping its format, ICC and EXIF."""
    im = Image.open(io.BytesIO(data))
    im.load()
    scale = max_side / max(im.size)
    small = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    fmt = fmt or SOURCE_OUTPUT.get(im.format, "png")
    return encode_output(small, fmt, quality, im.info.get("icc_profile"), im.info.get("exif"))


@serve.deployment(name=DEPLOYMENT, max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class ArchiveServer:
    def __init__(self, params: ServeParams):
        from ray.util import metrics

        self.params, self.storage = params, params.fsspec_options()
        token = os.environ.get(params.token_env)
        self.token_sha256 = params.token_sha256 or (token_digest(token) if token else None)
        if not self.token_sha256 and not params.allow_anonymous:
            raise RuntimeError(f"no token: set {params.token_env} for the replicas (an archive is never served open by default)")
        self.device = pick_device(params.device)
        self.responses = ByteLRU(params.cache_bytes)
        self.rows = TTLCache(params.row_ttl_s)
        self.listing = TTLCache(params.row_ttl_s, max_entries=1)
        self.rehydrating = threading.BoundedSemaphore(params.rehydrate_concurrency)
        self.storage_reads = 0  # manifest lookups + small-file reads (tests check refused keys add none)
        self.requests = metrics.Counter("taid_serve_requests", "HTTP requests by route and status code",
                                        tag_keys=("route", "code"))
        self.latency = metrics.Histogram("taid_serve_request_latency_ms", "request latency by route",
                                         boundaries=[2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000],
                                         tag_keys=("route",))
        api.state.server = self  # one instance per replica process: the middleware finds it here
        self.pairs = self.warm()

    def warm(self) -> list[str]:
        """Load the pair of every model the archive's ok rows name (a few at most): the first request
        after start-up then pays for a rehydration, not for loading weights."""
        table = self.latest()
        ok = table.filter(pc.equal(table.column("status"), "ok")) if table.num_rows else table
        pairs = sorted({(r["model_id"], r["model_sha256"]) for r in ok.select(["model_id", "model_sha256"]).to_pylist()})
        loaded = []
        for model_id, sha in pairs[:4]:
            try:
                warm_pair(model_id, sha, self.params.registry, self.device)
                loaded.append(model_id)
            except WeightsError as exc:  # a row naming weights we do not have: its requests get 409, the rest serve
                logging.getLogger("ray.serve").warning("not preloading %s: %s", model_id, exc)
        return loaded

    def observe(self, route: str, code: int, seconds: float) -> None:
        self.requests.inc(tags={"route": route, "code": str(code)})
        self.latency.observe(seconds * 1000, tags={"route": route})

    # ---- lookups ----
    def latest(self):
        table = self.listing.get("rows")
        if table is None:
            self.storage_reads += 1
            table = listing.latest_rows(self.params.archive, self.storage)
            self.listing.put("rows", table)
        return table

    def row_in_memory(self, key: str) -> dict | None:
        """The key's row if it is cached (no storage access), None if not; a bad key is a 400."""
        try:
            validate_key(key)  # before any storage access: .., absolute, backslash, NUL, empty segments
        except UnsafeKeyError:
            raise HTTPException(400, "bad key") from None
        return self.rows.get(key)

    def row(self, key: str) -> dict:
        row = self.row_in_memory(key)
        if row is None:
            self.storage_reads += 1
            try:
                row = find_row(self.params.archive, key, self.storage)
            except RehydrateRefused:
                raise HTTPException(404, "no image with this key") from None
            self.rows.put(key, row)
        return row

    def small(self, row: dict) -> bytes:
        self.storage_reads += 1
        try:
            return read_small_verified(row, self.storage)
        except SmallFileMissing:
            raise HTTPException(404, "the small file of this key is missing") from None
        except RehydrateRefused as exc:
            raise HTTPException(409, str(exc)) from None

    def headers(self, tag: str, cache: str | None = None) -> dict:
        headers = {"ETag": tag, "Cache-Control": f"private, max-age={self.params.cache_max_age_s}"}
        if cache:
            headers["X-Taid-Cache"] = cache
        return headers

    # ---- routes ----
    @api.get("/healthz")
    def healthz(self):
        return {"status": "ok"}

    @api.get("/", response_class=HTMLResponse)
    def page(self):
        return Response(PAGE, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    @api.get("/browser.js")
    def script(self):
        return Response(SCRIPT, media_type="text/javascript; charset=utf-8", headers={"Cache-Control": "no-cache"})

    @api.get("/thumb/{key:path}")
    async def thumb(self, key: str, request: Request):
        """The small file exactly as stored (sha256-verified), with its own content type. A warm
        request (row and bytes in memory) is answered on the event loop: no thread hop, which
        under 16 clients cost more than the answer itself; anything that reads storage runs in
        the thread pool."""
        row = self.row_in_memory(key)
        if row is not None:
            tag = etag(row["output_sha256"])
            if matches(request.headers.get("if-none-match"), tag):
                return Response(status_code=304, headers=self.headers(tag))
            hit = self.responses.get(("thumb", key, tag))
            if hit:
                media = CONTENT_TYPES.get(row["output_format"]) or sniff_content_type(hit[0])
                return Response(hit[0], media_type=media, headers=self.headers(tag, "hit"))
        return await run_in_threadpool(self.thumb_from_storage, key, request)

    def thumb_from_storage(self, key: str, request: Request):
        row = self.row(key)
        tag = etag(row["output_sha256"])
        if matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=self.headers(tag))
        hit = self.responses.get(("thumb", key, tag))
        data = hit[0] if hit else self.small(row)
        if not hit:
            self.responses.put(("thumb", key, tag), data, {})
        media = CONTENT_TYPES.get(row["output_format"]) or sniff_content_type(data)
        return Response(data, media_type=media, headers=self.headers(tag, "hit" if hit else "miss"))

    @staticmethod
    def image_tag(row: dict, query: ImageQuery) -> tuple[str, bool]:
        """(ETag, preview) of a full image: what fixes its bytes."""
        preview = query.preview and bool(row.get("enhancement_uri"))  # without a layer, preview is the full image
        return etag(row["output_sha256"], "image", row["model_sha256"], row.get("enhancement_sha256"),
                    query.format, query.quality, query.max_side, preview, CODEC_VERSION), preview

    @api.get("/image/{key:path}")
    async def image(self, key: str, request: Request, query: Annotated[ImageQuery, Query()]):
        """The full image, rehydrated once per (small file, weights, parameters) and then cached; a
        cached one is answered on the event loop (as thumb), the rest in the thread pool."""
        row = self.row_in_memory(key)
        if row is not None:
            tag, _ = self.image_tag(row, query)
            if matches(request.headers.get("if-none-match"), tag):
                return Response(status_code=304, headers=self.headers(tag))
            hit = self.responses.get(("image", key, tag))
            if hit:
                return Response(hit[0], media_type=hit[1]["type"], headers=self.headers(tag, "hit"))
        return await run_in_threadpool(self.image_from_storage, key, request, query)

    def image_from_storage(self, key: str, request: Request, query: ImageQuery):
        row = self.row(key)
        tag, preview = self.image_tag(row, query)
        if matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=self.headers(tag))
        hit = self.responses.get(("image", key, tag))
        if hit:
            return Response(hit[0], media_type=hit[1]["type"], headers=self.headers(tag, "hit"))
        with self.rehydrating:  # bounded memory; a request that waited may find its image made meanwhile
            hit = self.responses.get(("image", key, tag))
            if hit:
                return Response(hit[0], media_type=hit[1]["type"], headers=self.headers(tag, "hit"))
            start = time.perf_counter()
            data = self.rehydrate(row, query, preview)
            took_ms = (time.perf_counter() - start) * 1000
        media = sniff_content_type(data)
        self.responses.put(("image", key, tag), data, {"type": media})
        headers = {**self.headers(tag, "miss"), "Server-Timing": f"rehydrate;dur={took_ms:.1f}"}
        return Response(data, media_type=media, headers=headers)

    def rehydrate(self, row: dict, query: ImageQuery, preview: bool) -> bytes:
        self.storage_reads += 1
        try:
            data = rehydrate_row(row, restored_format=query.format, quality=query.quality, registry=self.params.registry,
                                 device=self.device, storage_options=self.storage, preview=preview)
        except SmallFileMissing:
            raise HTTPException(404, "the small file of this key is missing") from None
        except RehydrateRefused as exc:
            if "cannot hold" in str(exc):  # image_io's refusal of a format for this image (JPEG and alpha)
                raise HTTPException(400, str(exc)) from None
            raise HTTPException(409, str(exc)) from None  # small file or weights differ from the row
        if query.max_side and max(row["width"], row["height"]) > query.max_side:
            data = downsize(data, query.max_side, None if query.format == "original" else query.format, query.quality)
        return data

    @api.get("/meta/{key:path}")
    def meta(self, key: str):
        return JSONResponse(json_row(self.row(key)), headers={"Cache-Control": "private, no-cache"})

    @api.get("/api/rows")
    def rows_page(self, offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  status: Annotated[str, Query(pattern=r"^[a-z_]{0,40}$")] = "", prefix: Annotated[str, Query(max_length=1024)] = ""):
        """A page of the latest row per key (filters run in memory on the listing: nothing reaches storage by name)."""
        body = listing.page(self.latest(), offset, limit, status, prefix)
        return JSONResponse(body, headers={"Cache-Control": "private, no-cache"})

    @api.get("/api/stats")
    def stats(self):
        import resource

        return {"cache": self.responses.stats(), "storage_reads": self.storage_reads, "rss_bytes": rss_bytes(),
                "rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "device": self.device, "pairs": self.pairs, "pid": os.getpid()}


def application(params: ServeParams, num_replicas: int | None = None, num_cpus: float | None = None,
                num_gpus: float | None = None):
    """The bound application. GPUs: one per replica when the cluster has any, unless told otherwise
    (a Serve config's `ray_actor_options` overrides all of this)."""
    import ray

    actor = {"num_cpus": 1 if num_cpus is None else num_cpus}
    if num_gpus is None:
        num_gpus = 1 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    if num_gpus:
        actor["num_gpus"] = num_gpus
    options = {"ray_actor_options": actor}
    if num_replicas:
        options["num_replicas"] = num_replicas
    return ArchiveServer.options(**options).bind(params)


def build_app(args: dict):
    """`import_path` of the Serve config (infra/serve/taid-serve.yaml): its `args` are ServeParams."""
    return application(ServeParams.model_validate(args))


def deploy(params: ServeParams, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False, **options) -> str:
    """Start Serve's HTTP proxy on host:port in the connected Ray and (re)deploy the archive app there.
    Serve's per-request access log lines (proxy and replica) are off unless `access_log`: writing
    them cost about a fifth of a cached thumbnail's time under load, and our own Prometheus
    metrics count every request by route and status."""
    logging_config = {"enable_access_log": access_log}
    serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
    serve.run(application(params, **options), name=APP_NAME, route_prefix="/", logging_config=logging_config)
    return f"http://{host}:{port}/"
