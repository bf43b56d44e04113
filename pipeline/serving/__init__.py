"""Rehydrate on demand over HTTP: a Ray Serve application over one archive (compress-archive DEST).

    taid serve s3://photos-taid --port 8000                 # 127.0.0.1 only; add --token for anything else
    serve deploy infra/serve/taid-serve.yaml                # the same application on a Ray cluster

Modules: `config` (typed parameters), `cache` (byte-bounded LRU), `listing` (the paged manifest view
the browser needs), `http` (keys, ETags, content types, auth), `app` (the deployment and its routes,
`build_app` for Serve configs, `deploy` for the CLI and tests), `static/` (the archive browser).
See docs/serve.md.
"""

from __future__ import annotations

from pipeline.face import lazy_face

_EXPORTS = {
    "ServeParams": "config", "deploy": "app", "build_app": "app",
    "token_fields": "access",
    "serve_until_stopped": "run",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS, globals())
