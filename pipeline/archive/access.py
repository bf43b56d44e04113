"""Rehydrate on demand: full resolution back from an archive written by compress-archive.

    data = rehydrate("2024/cat.jpg", archive="s3://bucket/archive")     # by source key
    img = rehydrate_pil("s3://bucket/archive/2024/cat.jpg.png", archive="s3://bucket/archive")

The manifest row is found without reading the whole manifest (the manifest index: one row
group of a key-sorted file, plus any runs newer than the index), the small file's
sha256 is checked against the row, the upscaler of exactly that model id + weights sha256 is
loaded (zoo or registry), and the codec restores size, mode, alpha, ICC and orientation policy
in the original's format. Every refusal raises `RehydrateRefused` with the reason; nothing is
written in that case.

A row whose layer is the image itself (a prediction-free layer: `avif-full`, `avif-bands`,
`webp-lossless-full`, `jxl-jpeg`) and whose small file has no alpha plane needs no network: it is
restored without loading the pair, so without torch (the pair's identity is still the row's and
the small file's, checked against each other).
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache

from PIL import Image

from pipeline.codec import OUTPUT_SUFFIX, RehydrateError, rehydrate_image
from pipeline.manifest import archive_base, present, resolve_row, shared_reader
from pipeline.storage import filesystem


class RehydrateRefused(RuntimeError):
    """Unknown key, small file missing or modified, model unavailable or mismatched."""


class SmallFileMissing(RehydrateRefused):
    """The row exists but its small file does not (an HTTP server answers 404, not 409)."""


def find_row(archive: str, key_or_uri: str, storage_options: dict | None = None) -> dict:
    """The latest `ok` manifest row of a source key, or of a small file's URI. Served by the
    manifest index (one row group read) plus the runs newer than it: see
    `pipeline.manifest.index.ManifestReader`, which a long-lived server can hold itself."""
    reader = shared_reader(archive, storage_options)
    snap = reader.snapshot(refresh=True)  # one pointer read + one listing of _manifest/ per call
    if not reader.has_manifest(snap):
        raise RehydrateRefused(f"{archive} has no manifest: not a compress-archive destination")
    row = reader.find(key_or_uri, snap)
    if row is None:
        raise RehydrateRefused(f"no ok row for {key_or_uri!r} in {archive}'s manifest")
    return row


@lru_cache(maxsize=8)
def _pair(model_id: str, sha256: str, registry: str | None, device: str):
    from models.zoo import load_pair

    return load_pair(model_id, device, expected_sha256=sha256, registry=registry)


class PairName:
    """The name of a pair without its networks: what restoring from a prediction-free layer needs
    (the codec checks the small file's model id and weights sha256 against it; no network runs)."""

    def __init__(self, model_id: str, weights_sha256: str):
        self.model_id, self.weights_sha256 = model_id, weights_sha256


def needs_networks(small: bytes, layer: bytes | None, preview: bool) -> bool:
    """Does restoring this small file (+ layer) run TAU? Not for a prediction-free layer on a small
    file without alpha."""
    from pipeline.codec import alpha_stored_in, needs_prediction, read_small

    if needs_prediction(layer, preview):
        return True
    try:
        im, embedded, *_ = read_small(small)
    except Exception:  # noqa: BLE001 - the codec says what is wrong with it, with the pair
        return True
    return alpha_stored_in(embedded or {}, im)


def warm_pair(model_id: str, sha256: str, registry: str | None = None, device: str = "cpu") -> None:
    """Load a pair into this process's cache now (a server's start-up), so its first request does not pay for it."""
    _pair(model_id, sha256, registry, device)


def _read_verified(uri: str, sha256: str, what: str, storage_options: dict | None,
                   missing: type[RehydrateRefused] = RehydrateRefused) -> bytes:
    fs, path = filesystem(uri, storage_options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise missing(f"{what} {uri} is missing") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise RehydrateRefused(
            f"{what} {uri} has sha256 {actual[:16]}..., the manifest says {sha256[:16]}...: modified or corrupt, refusing"
        )
    return data


def read_small_verified(row: dict, storage_options: dict | None = None) -> bytes:
    return _read_verified(row["output_uri"], row["output_sha256"], "small file", storage_options, SmallFileMissing)


def has_layer(row: dict) -> bool:
    return present(row.get("enhancement_uri"))


def read_layer_verified(row: dict, storage_options: dict | None = None) -> bytes | None:
    """The row's enhancement layer (pipeline.codec.layer), sha256-checked; None when it has none."""
    if not has_layer(row):
        return None
    return _read_verified(row["enhancement_uri"], row["enhancement_sha256"], "enhancement layer", storage_options)


def rehydrate_row(
    row: dict,
    restored_format: str | None = None,
    quality: int | None = None,
    registry: str | None = None,
    device: str = "cpu",
    storage_options: dict | None = None,
    preview: bool = False,
    prepare=None,
    archive: str | None = None,
) -> bytes:
    """The full image of a manifest row; `preview` leaves out its enhancement layer (a
    fast preview at the small file's own fidelity; the layer is then not even read). `prepare`
    (a worker's) sets how the loaded pair runs: precision, or through a model actor. `archive`:
    the archive a raw row was read from (DuckDB, pyarrow: its file paths are relative to the
    archive root); rows from ManifestReader / find_row are resolved already."""
    if archive is not None:
        fs, root = filesystem(archive, storage_options)
        row = resolve_row(row, archive_base(fs, root))
    small = read_small_verified(row, storage_options)
    layer = None if preview else read_layer_verified(row, storage_options)
    if not needs_networks(small, layer, preview):
        pair = PairName(row["model_id"], row["model_sha256"])
    else:
        from models.zoo import WeightsError

        try:
            pair = _pair(row["model_id"], row["model_sha256"], registry, device)
            if prepare is not None:
                pair = prepare(pair)
        except WeightsError as exc:
            raise RehydrateRefused(f"model for {row['source_key']}: {exc}") from exc
    try:
        return rehydrate_image(small, row, pair, restored_format=restored_format, quality=quality, layer=layer,
                               preview=preview)
    except RehydrateError as exc:
        raise RehydrateRefused(str(exc)) from exc


def rehydrate(
    key_or_uri: str,
    archive: str,
    restored_format: str | None = None,
    quality: int | None = None,
    registry: str | None = None,
    storage_options: dict | None = None,
    preview: bool = False,
) -> bytes:
    """Image bytes of one archived image at full resolution (the original's format by default)."""
    row = find_row(archive, key_or_uri, storage_options)
    return rehydrate_row(row, restored_format, quality, registry, storage_options=storage_options,
                         preview=preview)


def rehydrate_to_file(
    key_or_uri: str,
    archive: str,
    output: str | None = None,
    restored_format: str | None = None,
    quality: int | None = None,
    registry: str | None = None,
    storage_options: dict | None = None,
    preview: bool = False,
) -> tuple[str, int]:
    """Rehydrate one archived image into a local file, written atomically: `output`, else the
    name a batch run would give it (`restored_key`'s last part) in the working directory.
    Returns (file written, its size)."""
    from pipeline.storage import write_local

    row = find_row(archive, key_or_uri, storage_options)
    data = rehydrate_row(row, restored_format, quality, registry, storage_options=storage_options,
                         preview=preview)
    out = output or restored_key(row, restored_format).rsplit("/", 1)[-1]
    write_local(out, data)
    return out, len(data)


# what each output format's file is called (a batch run's names, and a single key's default)


def default_format(row: dict) -> str:
    """What rehydration writes without an explicit format: PNG for fidelity archives (their verified
    pixels, exactly), else the source's format (JPEG stays JPEG...)."""
    if present(row.get("fidelity")):
        return "png"
    return (row.get("source_format") or "png").lower()


def restored_key(row: dict, restored_format: str | None) -> str:
    """The key (relative name) of `row`'s rehydrated image in a given format."""
    if not restored_format:
        key = row["source_key"]
        if present(row.get("fidelity")) and not key.lower().endswith(".png"):
            return key + ".png"  # appended, never replaced: cat.jpg and cat.png stay two files
        return key
    stem = row["source_key"].rsplit(".", 1)[0] if "." in row["source_key"].rsplit("/", 1)[-1] else row["source_key"]
    return stem + OUTPUT_SUFFIX.get(restored_format.lower(), "." + restored_format.lower())


def rehydrate_pil(key_or_uri: str, archive: str, **kwargs) -> Image.Image:
    im = Image.open(io.BytesIO(rehydrate(key_or_uri, archive, **kwargs)))
    im.load()
    return im
