"""`taid serve`: the archive server (pipeline.serving) in this process until stopped."""

from __future__ import annotations

import argparse

from flows.commands.base import command, params


def _serve(args: argparse.Namespace) -> int:
    from pipeline.serving import serve_until_stopped, token_fields

    cache = {"cache_bytes": args.cache_mb * 2**20} if args.cache_mb is not None else {}
    p = params(args, **token_fields(args.host, args.token, args.insecure_open), **cache)
    serve_until_stopped(p, args.host, args.port, args.replicas, args.access_log, args.ray_address)
    return 0


def add(sub) -> None:
    v = command(sub, "serve", _serve, "pipeline.serving.config:ServeParams",
                ("host", "port", "token", "insecure_open", "replicas", "cache_mb", "ray_address", "access_log"),
                help="HTTP server (Ray Serve) over one archive: thumbnails, rehydrated images, a browser")
    v.add_argument("archive", help="the compress-archive destination URI")
    v.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; anything else needs a token)")
    v.add_argument("--port", type=int, default=8000, help="(default 8000)")
    v.add_argument("--token", help="bearer token for every route but /healthz (default: TAID_SERVE_TOKEN; "
                   "prefer the variable: arguments show in `ps`)")
    v.add_argument("--insecure-open", dest="insecure_open", action="store_true",
                   help="allow a non-loopback host without a token")
    v.add_argument("--replicas", type=int, help="fixed number of replicas (default 1; autoscaling: infra/serve/taid-serve.yaml)")
    v.add_argument("--cache-mb", dest="cache_mb", type=int, help="response cache per replica in MiB (default: "
                   "ServeParams.cache_bytes, 256 MiB)")
    v.add_argument("--registry", help="model registry URI for fine-tuned model ids")
    v.add_argument("--endpoint-url", dest="endpoint_url", help="S3-compatible endpoint for s3:// URIs")
    v.add_argument("--ray-address", dest="ray_address", help="Ray cluster to deploy into (default: a local Ray)")
    v.add_argument("--access-log", dest="access_log", action="store_true",
                   help="Serve's per-request access log lines (off: they cost latency under load; metrics count requests)")
