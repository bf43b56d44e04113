"""Who may use a server: the token policy of `taid serve`, with no Ray or Serve in it.

The token comes from the caller (`--token`), else the TAID_SERVE_TOKEN setting. Without one, a
server binds only to a loopback host (private photos are never open beyond this machine by
default) unless the caller insists (`--insecure-open`). Only the token's sha256 goes into the
deployment's parameters: Serve keeps those in the cluster, so the token itself is stored nowhere."""

from __future__ import annotations

from pipeline.errors import UserError
from pipeline.serving.http import token_digest

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class OpenServerRefused(UserError):
    """A non-loopback host without a token: one line, exit 2."""


def token_fields(host: str, token: str | None = None, insecure_open: bool = False) -> dict:
    """ServeParams fields (`token_sha256`, `allow_anonymous`) of a server on `host`: the token's
    sha256 (`token`, else the TAID_SERVE_TOKEN setting); without a token, anonymous access, on a
    loopback host only unless `insecure_open` (OpenServerRefused otherwise)."""
    from pipeline.settings import get_settings

    if not token:
        secret = get_settings().serve_token
        token = secret.get_secret_value() if secret else None
    if token:
        return {"token_sha256": token_digest(token), "allow_anonymous": False}
    if host not in LOOPBACK and not insecure_open:
        raise OpenServerRefused(f"refusing to serve {host} without a token (--token or TAID_SERVE_TOKEN)")
    return {"token_sha256": None, "allow_anonymous": True}
