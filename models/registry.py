"""A model registry in object storage for fine-tuned pairs (the shipped ones live in the zoo).

Layout under a registry URI (any fsspec URI: s3://models/, a local folder, ...):

    <registry>/weights/<model_id>-<sha8>.pt          the weights, never overwritten
    <registry>/models/<model_id>/<sha256>.json        one entry per version (immutable)
    <registry>/models/<model_id>/latest.json          the version a bare model id resolves to

Every object is written with a single PUT of its whole body, so readers never see half an entry,
and a version is never modified once written: a manifest row's (model_id, model_sha256) always
finds the exact weights that made it, even after newer versions are registered.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import fsspec

from models.zoo import WeightsError, sha256_file

REGISTRY_ENV = "TAID_MODEL_REGISTRY"


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def register(
    weights: str | Path,
    model_id: str,
    registry: str,
    *,
    base: str,
    data_uri: str,
    metrics: dict,
    extra: dict | None = None,
) -> dict:
    """Upload weights and write the entry; returns the entry. Re-registering the same bytes is a no-op."""
    if not model_id.startswith("taid-") or "/" in model_id:
        raise ValueError(f"model id {model_id!r} must look like taid-x2-<domain>")
    sha = sha256_file(weights)
    entry = {
        "model_id": model_id,
        "sha256": sha,
        "weights": _join(registry, "weights", f"{model_id}-{sha[:8]}.pt"),
        "base_model": base,
        "data_uri": data_uri,
        "metrics": metrics,
        "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    fs, _ = fsspec.core.url_to_fs(registry)
    for folder in (_join(registry, "weights"), _join(registry, "models", model_id)):
        fs.makedirs(folder, exist_ok=True)  # needed on local folders, harmless on object stores
    if not fs.exists(entry["weights"]):
        fs.put_file(str(weights), entry["weights"])
    body = json.dumps(entry, indent=2).encode()
    fs.pipe_file(_join(registry, "models", model_id, f"{sha}.json"), body)
    fs.pipe_file(_join(registry, "models", model_id, "latest.json"), body)  # written last: the version is complete
    return entry


def lookup(model_id: str, registry: str, sha256: str | None = None) -> dict:
    """The entry of `model_id` (a given version, or the latest)."""
    name = f"{sha256}.json" if sha256 else "latest.json"
    uri = _join(registry, "models", model_id, name)
    try:
        with fsspec.open(uri, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        what = f"version {sha256[:12]}" if sha256 else "any version"
        raise WeightsError(f"model {model_id!r} ({what}) is not registered in {registry}") from None


def fetch_weights(model_id: str, registry: str, sha256: str | None = None) -> tuple[Path, str]:
    """Local path of the weights (downloaded once into the cache, verified) and their sha256."""
    entry = lookup(model_id, registry, sha256)
    from models.settings import get_model_settings

    local = get_model_settings().cache_dir / f"{model_id}-{entry['sha256'][:8]}.pt"
    if not local.exists() or sha256_file(local) != entry["sha256"]:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_suffix(f".{os.getpid()}.tmp")
        try:
            with fsspec.open(entry["weights"], "rb") as src, open(tmp, "wb") as dst:
                dst.write(src.read())
            os.replace(tmp, local)
        except BaseException:  # disk full, a failed download: leave no temporary file behind
            tmp.unlink(missing_ok=True)
            raise
    return local, entry["sha256"]
