"""The model zoo: named weights with their sha256, architecture, training recipe and metrics.

The table lives in `models/zoo.json` (one entry per model id) so tools can read it without
Python; weights live in `models/weights/<model_id>-<first 8 hex of sha256>.pt` and are verified
against the full sha256 before `torch.load(..., weights_only=True)` touches them.

Codec-aware pairs (trained with a lossy channel, JPEG or lossy WebP, between downscaler and
upscaler: models.channel) carry a `channel` block: {"small_format": "webp-lossy" | "jpeg", "quality":
default quality, "quality_band": [lo, hi], "gradient": "ste" | "proxy"}; `load_pair` sets it as
`pair.channel` (None for lossless pairs), and the archive codec writes such a pair's small files in
that format and quality unless told otherwise. Zoo entries and weights written before issue 22
call the block / the training settings "codec" (models.channel.LEGACY_KEYS): both are still read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from models.channel import channel_format, channel_settings
from models.networks import GRAY_TASKS, TaskAwarePair, pair_from_config

ZOO_FILE = Path(__file__).with_name("zoo.json")
WEIGHTS_DIR = Path(__file__).with_name("weights")
ARCH_KEYS = ("scale", "channels", "down_blocks", "up_blocks")
TASK_KEY = "task"  # in a grey pair's config only: "gray" (taid-gray) or "luma" (its baseline)
DEFAULT_QUALITY_BAND = (30, 90)  # TrainConfig.channel_quality's default
CHANNEL_KEY, LEGACY_CHANNEL_KEY = "channel", "codec"  # a zoo entry's block; the old name is still read


class WeightsError(RuntimeError):
    """Weights that are missing, modified or not a TAID checkpoint."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def zoo_table() -> dict[str, dict]:
    if not ZOO_FILE.exists():
        return {}
    return json.loads(ZOO_FILE.read_text())


def colour_only(model: str) -> bool:
    """Whether a zoo id names a colour-only (grey small file, scale 1) pair such as taid-gray."""
    return zoo_table().get(model, {}).get("config", {}).get(TASK_KEY) in GRAY_TASKS


def resolve(model: str) -> tuple[Path, str | None]:
    """(weights path, expected sha256) for a zoo id, or for a weights file path (sha from its name
    prefix is checked by load_pair; a full sha256 is only known for zoo entries)."""
    table = zoo_table()
    if model in table:
        entry = table[model]
        return WEIGHTS_DIR / entry["file"], entry["sha256"]
    path = Path(model)
    if path.suffix == ".pt" and path.exists():
        return path, None
    raise WeightsError(f"unknown model {model!r}: not in the zoo ({', '.join(sorted(table)) or 'empty'}) and not a .pt file")


def channel_block(channel: str | None, quality_band=None, gradient: str | None = None, quality: int | None = None) -> dict | None:
    """The `channel` block of a pair trained through `channel` ("jpeg", "webp-lossy"; the old "webp"
    is read as "webp-lossy"; None = lossless) over `quality_band` [qmin, qmax]: its small format and
    default quality (`quality`, else the middle of the band)."""
    fmt = channel_format(channel)
    if fmt is None:
        return None
    lo, hi = (int(q) for q in (quality_band or DEFAULT_QUALITY_BAND))
    return {"small_format": fmt, "quality": (lo + hi) // 2 if quality is None else int(quality),
            "quality_band": [lo, hi], "gradient": gradient or "ste"}


def entry_channel(entry: dict) -> dict | None:
    """A zoo entry's `channel` block (an entry written before issue 22 calls it `codec`)."""
    return entry.get(CHANNEL_KEY, entry.get(LEGACY_CHANNEL_KEY))


def _channel_block(model: str, blob: dict) -> dict | None:
    """A zoo entry's `channel` block when it has one; else derived from the checkpoint's
    train_config (weights files and registry models; old key names read too)."""
    entry = zoo_table().get(model)
    if entry is not None and (CHANNEL_KEY in entry or LEGACY_CHANNEL_KEY in entry):
        return entry_channel(entry)
    train = channel_settings(blob.get("train_config") or {})
    return channel_block(train.get("channel"), train.get("channel_quality"), train.get("channel_gradient"))


def load_pair(
    model: str, device: str = "cpu", expected_sha256: str | None = None, registry: str | None = None
) -> TaskAwarePair:
    """Load a pair for inference after checking its sha256 (refuses rather than guesses).

    `model` is a zoo id, a weights file, or the id of a fine-tuned pair in the model registry
    (`registry`, or the TAID_MODEL_REGISTRY environment variable; see models/registry.py).
    """
    if registry is None:  # the environment's (TAID_MODEL_REGISTRY), read through the one Settings
        from models.settings import get_model_settings

        registry = get_model_settings().model_registry
    try:
        path, zoo_sha = resolve(model)
    except WeightsError:
        if not registry:
            raise
        from models.registry import fetch_weights

        path, zoo_sha = fetch_weights(model, registry, expected_sha256)
    if not path.exists():
        raise WeightsError(f"weights file {path} for {model!r} is missing")
    actual = sha256_file(path)
    for expected in (zoo_sha, expected_sha256):
        if expected and actual != expected:
            raise WeightsError(f"weights {path} have sha256 {actual}, expected {expected}: file modified or corrupt")
    if zoo_sha is None and expected_sha256 is None:
        prefix = path.stem.rsplit("-", 1)[-1]
        if not actual.startswith(prefix):
            raise WeightsError(f"weights {path}: sha256 {actual[:8]}... does not match the name's prefix {prefix}")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        pair = pair_from_config(blob["config"])
        pair.load_state_dict(blob["state_dict"])
    except Exception as exc:  # truncated file, foreign pickle, wrong keys
        raise WeightsError(f"weights {path} are not a loadable TAID pair: {exc}") from exc
    pair.model_id = blob.get("model_id", model)
    pair.weights_sha256 = actual
    try:
        pair.channel = _channel_block(model, blob)
    except ValueError as exc:
        raise WeightsError(f"weights {path}: {exc}") from exc
    return pair.to(device).eval()


def arch_config(config: dict) -> dict:
    """The architecture part of a training config (what pair_from_config builds from)."""
    arch = {k: config[k] for k in ARCH_KEYS}
    if config.get(TASK_KEY) in GRAY_TASKS:  # no spatial scaling, whatever the training config's default scale
        arch.update({"scale": 1, TASK_KEY: config[TASK_KEY]})
    return arch


def export_weights(training_state: str | Path, model_id: str, out_dir: str | Path) -> tuple[Path, str]:
    """Strip a training state down to shippable weights named `<model_id>-<sha8>.pt`."""
    state = torch.load(training_state, map_location="cpu", weights_only=True)
    config = state["config"]
    arch = arch_config(config)
    blob = {
        "model_id": model_id,
        "config": arch,
        "train_config": {k: v for k, v in config.items() if k not in arch},
        "step": state["step"],
        "state_dict": state["state_dict"],
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{model_id}.tmp"
    torch.save(blob, tmp)
    sha = sha256_file(tmp)
    final = out / f"{model_id}-{sha[:8]}.pt"
    os.replace(tmp, final)
    return final, sha


TRAIN_DATA = "T91 + BSD200 (../shared/data/train), every 20th file held out for validation"


def zoo_entry(
    run: str | Path, model_id: str, state: dict, *, hardware: str, command: str, previous: dict | None = None,
    lead: dict | None = None, recipe: dict | None = None,
) -> dict:
    """Export `run`/last.pt (already loaded as `state`) into WEIGHTS_DIR as `model_id` and return its
    zoo entry (the infra/cpu/add_*_model.py tools): file, sha256, architecture, parameter count, the
    training record (`lead` goes after the data, `recipe` after the schedule) and `previous`'s
    metrics. Older files of the id are removed: the zoo keeps one version per id (the registry is
    where versions accumulate)."""
    cfg = state["config"]
    old = list(WEIGHTS_DIR.glob(f"{model_id}-*.pt"))
    path, sha = export_weights(Path(run) / "last.pt", model_id, WEIGHTS_DIR)
    for f in old:
        if f != path:
            f.unlink()
    return {
        "file": path.name,
        "sha256": sha,
        "config": arch_config(cfg),
        "parameters": sum(v.numel() for v in state["state_dict"].values()),
        "training": {
            "data": TRAIN_DATA,
            **(lead or {}),
            "steps": state["step"],
            "batch": cfg["batch"],
            "patch": cfg["patch"],
            "lr": cfg["lr"],
            "schedule": f"Adam(0.9, 0.99), {cfg['warmup_steps']} warm-up steps, cosine to {cfg['min_lr_ratio']} x lr, "
                        f"grad clip {cfg['grad_clip']}",
            **(recipe or {}),
            "seed": cfg["seed"],
            "hardware": hardware,
            "command": command,
        },
        "metrics": (previous or {}).get("metrics", {}),
    }
