"""The archive codec: one image file -> small file + manifest record, and back.

    small, _, record = compress_image(data, pair, CodecOptions(scale=4))   # an Encoded: layer is always None here
    restored = rehydrate_image(small, record, pair)       # or record=None: use the embedded metadata

Pure code: no Ray, no Prefect, no storage. Decoding and the real-world policies live in
`pipeline.codec.image_io` (read its docstring for each case), the small file and its embedded metadata
in `pipeline.codec.small_file`, recursion and tiling in `pipeline.codec.tiling`.

Geometry: the upright image (EXIF orientation applied) of W x H pixels is reflect-padded on the
bottom/right to a multiple of `scale`, downscaled to ceil(W/scale) x ceil(H/scale) (`out_width`,
`out_height`), and on rehydration upscaled and cropped back to exactly W x H.

Small format and quality default to the model's (`small_file_settings`): a codec-aware pair (one
trained with WebP or JPEG between its two networks, `pair.channel` from models.zoo) writes that
lossy format at its default quality, any other pair lossless PNG; the record's `output_format`
and `small_quality` say what was written.

`compress_image` never raises for bad input: it returns Encoded(None, None, record) with `status` set to
`skipped_<reason>` or `failed_<reason>` and `error_message`. It raises only for caller errors
(a scale the pair cannot reach). `rehydrate_image` raises `RehydrateError` when the bytes are not a
TAID small file, when the pair is not the one that made the file (model id or weights sha256
differ, or a record names another model than the file's own metadata: we refuse rather than
guess), when a manifest row's `output_sha256` does not match the bytes, or when the requested
output cannot hold the image (JPEG and alpha).

Exactness: the codec uses the pair exactly as `taid eval` does (eval mode, channels_last weights,
set in place on the caller's module; 8-bit small image), so on a lossless small file the
reconstruction is pixel-identical to `models.evaluate.round_trip` (tests/codec/test_codec_set14.py).
The pair may live on a GPU: tiles are moved to its device one at a time.
"""

from __future__ import annotations

import hashlib
import io
import time
from typing import NamedTuple

import numpy as np
from PIL import Image

from pipeline.codec import formats, image_io, small_file
from pipeline.codec import layer as enhancement
from pipeline.codec.options import (  # noqa: F401  (re-exported for callers of the codec)
    CODEC_VERSION,
    DEFAULT_MAX_PIXELS,
    DEFAULT_TILE,
    CodecOptions,
    CompressRecord,
    Encoded,
    RehydrateError,
)

DEFAULT_SMALL_FORMAT = "png"  # for lossless pairs; a codec-aware pair's `channel` block says its own
DEFAULT_QUALITY = 90  # for a lossy small format the pair was not trained for


class _Tiling:
    """pipeline.codec.tiling (torch), imported when a network first runs: restoring from a
    prediction-free layer (the image itself) loads no torch."""

    def __getattr__(self, name):
        from pipeline.codec import tiling as module

        return getattr(module, name)


tiling = _Tiling()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _gray(arr: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> H x W uint8, channel mean rounded half up."""
    return ((arr.astype(np.uint16).sum(axis=2) * 2 + 3) // 6).astype(np.uint8)


def _colour_only(pair) -> bool:
    """A pair that hides colour in one grey channel at full size (taid-gray, models.networks.GrayPair)."""
    return getattr(pair, "small_channels", 3) == 1


def _through_pair(pair, arr: np.ndarray, scale: int, tile: int, up: bool, grey: bool) -> tuple[np.ndarray, int]:
    """TAD (TAU when `up`) of H x W x 3 uint8; a colour-only pair leaves grey pixels (a grey
    source, an alpha plane) as they are: there is no colour to hide, and the grey is exact."""
    if grey and _colour_only(pair):
        return arr, 0
    return (tiling.upscale_array if up else tiling.downscale_array)(pair, arr, scale, tile)


def small_file_settings(pair, small_format: str | None = None, quality: int | None = None) -> tuple[str, int | None]:
    """(small format, quality) with the model's defaults filled in: a codec-aware pair's `channel`
    block (models.zoo), else png. The model's quality goes with the model's format only: another
    lossy format gets DEFAULT_QUALITY. Quality is None for the lossless formats."""
    channel = getattr(pair, "channel", None) or {}
    fmt = small_format or channel.get("small_format") or DEFAULT_SMALL_FORMAT
    if fmt not in small_file.LOSSY_FORMATS:
        return fmt, None
    if quality is None:
        quality = channel.get("quality") if fmt == channel.get("small_format") else None
    return fmt, int(quality) if quality is not None else DEFAULT_QUALITY


def check_options(pair, options: CodecOptions) -> None:
    """Raise ValueError when `options` cannot work with `pair` (a scale that is not a power of the
    pair's scale; no scale is the pair's own). Call it once when a worker starts; compress_image calls it too."""
    tiling.steps_for(pair, options.scale or pair.scale)


def compress_image(data: bytes, pair, options: CodecOptions | None = None) -> Encoded:
    """One fixed small file of `data` by `pair`: Encoded(small, None, record); never a layer."""
    options = options or CodecOptions()
    check_options(pair, options)  # caller error -> ValueError, before any file is touched
    fmt, quality = small_file_settings(pair, options.small_format, options.quality)
    # the one place defaults resolve: the model's format, quality and scale where the options name none
    options = options.model_copy(update={"small_format": fmt, "quality": quality, "scale": options.scale or pair.scale})
    rec = CompressRecord(
        source_size=len(data), source_sha256=_sha256(data), scale=options.scale,
        model_id=getattr(pair, "model_id", options.model_id), model_sha256=getattr(pair, "weights_sha256", None),
    )
    small, rec = decoded_then(data, options, rec, lambda dec, rec: _compress_decoded(dec, pair, options, rec))
    return Encoded(small, None, rec)


def decoded_then(data: bytes, options: CodecOptions, rec: CompressRecord, work):
    """Decode `data`, then `work(decoded, record) -> (result, record)`; bad input and failures of
    the work become (None, record with a status): the one failure policy of every codec entry."""
    started = time.process_time()
    try:
        dec = image_io.decode_image(data, options.max_pixels, options.multi_frame, options.high_bit_depth)
    except image_io.DecodeFailure as f:
        return None, rec.model_copy(update={**_known(f.info), "status": f.status, "error_message": f.message})
    except Exception as exc:  # belt and braces: a decoder bug must not kill the batch
        return None, rec.model_copy(update={"status": "failed_decode", "error_message": f"{type(exc).__name__}: {exc}"})
    rec = rec.model_copy(update={**_known(dec.info), "cpu_decode_s": time.process_time() - started})
    try:
        return work(dec, rec)
    except MemoryError:
        return None, rec.model_copy(update={"status": "failed_out_of_memory", "error_message": "MemoryError while processing"})
    except Exception as exc:
        return None, rec.model_copy(update={"status": "failed_processing", "error_message": f"{type(exc).__name__}: {exc}"})


def _known(info: dict) -> dict:
    return {k: v for k, v in info.items() if k in CompressRecord.model_fields}


def _downscale(dec: image_io.Decoded, pair, scale: int, tile: int) -> tuple[Image.Image, int]:
    """TAD of the decoded image (and of its alpha): the 8-bit small image, before any codec."""
    small, tiles = _through_pair(pair, tiling.pad_to_multiple(dec.rgb, scale), scale, tile, False, dec.info["is_gray"])
    if dec.info["is_gray"] or _colour_only(pair):
        small_img = _gray(small)
        mode = "L"
    else:
        small_img, mode = small, "RGB"
    if dec.alpha is not None:
        a_small, n = _through_pair(pair, np.repeat(tiling.pad_to_multiple(dec.alpha, scale)[..., None], 3, axis=2),
                                   scale, tile, False, True)
        tiles += n
        small_img = np.dstack([small_img, _gray(a_small)])
        mode += "A"
    return Image.fromarray(np.ascontiguousarray(small_img), mode), tiles


def _rehydrate_settings(dec: image_io.Decoded, rec: CompressRecord, options: CodecOptions) -> tuple[str, int | None]:
    fmt, q = image_io.default_output(rec.source_format, dec.info.get("lossy_webp", False))
    if options.rehydrate_format:
        return options.rehydrate_format, options.rehydrate_quality
    return fmt, (options.rehydrate_quality if options.rehydrate_quality is not None else q)


def _encode_small(img: Image.Image, dec: image_io.Decoded, options: CodecOptions, rec: CompressRecord):
    """The small file of `img` at options' format and quality, and the record that describes it."""
    meta = small_file.embedded_meta(rec.model_dump())
    out, written = small_file.encode_small(img, options.small_format, options.quality, meta, dec.icc, dec.exif)
    notes = list(dec.notes)
    if written != options.small_format:
        notes.append(f"{options.small_format} cannot hold alpha: small file written as {written}")
    return out, rec.model_copy(
        update={
            "output_format": written, "output_size": len(out), "output_sha256": _sha256(out),
            "small_quality": options.quality if written in small_file.LOSSY_FORMATS else None,
            "out_width": img.width, "out_height": img.height, "notes": "; ".join(notes) or None,
        }
    )


def _compress_decoded(dec: image_io.Decoded, pair, options: CodecOptions, rec: CompressRecord):
    t0 = time.process_time()
    img, tiles = _downscale(dec, pair, options.scale, options.tile)
    t1 = time.process_time()
    fmt, q = _rehydrate_settings(dec, rec, options)
    rec = rec.model_copy(update={"rehydrate_format": fmt, "rehydrate_quality": q, "tiles": tiles, "status": "ok"})
    out, rec = _encode_small(img, dec, options, rec)
    t2 = time.process_time()
    rec = rec.model_copy(update={"cpu_tad_s": round(t1 - t0, 4), "cpu_encode_s": round(t2 - t1, 4)})
    if options.verify:
        restored = _rehydrate_pixels(out, rec.model_dump(), pair, options.tile)[0]
        from models.metrics import psnr

        rec = rec.model_copy(update={"roundtrip_psnr": psnr(np.asarray(restored.convert("RGB")), reference_rgb(dec)),
                                     "cpu_verify_s": round(time.process_time() - t2, 4)})
    return out, rec


def reference_rgb(dec: image_io.Decoded) -> np.ndarray:
    """The decoded source as the user sees it after rehydration (grey stays grey), H x W x 3 uint8:
    what fidelity is measured against."""
    return np.asarray(_to_pil(dec.rgb, dec.alpha, dec.info["is_gray"], dec.info["has_alpha"]).convert("RGB"))


def _to_pil(rgb: np.ndarray, alpha: np.ndarray | None, is_gray: bool, has_alpha: bool) -> Image.Image:
    color = _gray(rgb)[..., None] if is_gray else rgb
    if has_alpha:
        a = alpha if alpha is not None else np.full(rgb.shape[:2], 255, np.uint8)
        color = np.dstack([color, a])
    mode = ("L" if is_gray else "RGB") + ("A" if has_alpha else "")
    return Image.fromarray(np.ascontiguousarray(color.squeeze(axis=2) if color.shape[2] == 1 else color), mode)


def _present(v) -> bool:
    if v is None:
        return False
    try:
        return not bool(v != v)  # NaN (and pd.NA, whose comparison raises) count as missing
    except TypeError:
        return False


def _plain(v):
    """numpy scalars from a Parquet/pandas row -> Python scalars."""
    return v.item() if isinstance(v, np.generic) else v


def _check_same_model(embedded: dict, row: dict) -> None:
    """A row naming another model than the file's own metadata is refused, not trusted: the wrong
    upscaler would restore an image that looks plausible and is wrong."""
    for key in ("model_id", "model_sha256", "enhancement_sha256"):
        if embedded.get(key) is not None and row.get(key) is not None and embedded[key] != row[key]:
            raise RehydrateError(
                f"small file was made by {embedded.get('model_id')} (sha256 {embedded.get('model_sha256')}); its record "
                f"says {row.get('model_id')} (sha256 {row.get('model_sha256')}): refusing to guess"
            )


class Prediction(NamedTuple):
    """TAU(small) cropped to the original size, before any enhancement layer."""

    color: np.ndarray  # H x W x 3 uint8 (grey images: three equal channels)
    alpha: np.ndarray | None
    is_gray: bool
    has_alpha: bool
    meta: dict
    icc: bytes | None
    exif: bytes | None


def predict(small: bytes, record: CompressRecord | dict | None, pair, tile: int = DEFAULT_TILE,
            color: bool = True) -> Prediction:
    """TAU(small) at the original size, after checking that the pair is the one that made it.
    `color=False` skips TAU on the colour (a prediction-free layer replaces it: the prediction's
    colour is then a zero-cost stand-in of the right shape); an alpha channel is still upscaled."""
    try:
        im, embedded, icc, exif, _ = small_file.read_small(small)
    except small_file.SmallFileError as exc:
        raise RehydrateError(str(exc)) from exc
    if record is None and embedded is None:
        raise RehydrateError("no manifest record given and the file carries no TAID metadata: not a TAID small file")
    meta = dict(embedded or {})
    if record is not None:
        rec = record.model_dump() if isinstance(record, CompressRecord) else dict(record)
        if rec.get("status", "ok") != "ok":
            raise RehydrateError(f"record status is {rec.get('status')!r}: nothing to rehydrate")
        if _present(rec.get("output_sha256")) and rec["output_sha256"] != _sha256(small):
            raise RehydrateError("small file's sha256 differs from its manifest row's output_sha256: wrong or damaged file")
        # a manifest row may hold only DESIGN.md's fields, or nulls read back as NaN / pd.NA:
        # the embedded metadata fills what the row does not say
        from_row = {k: _plain(rec[k]) for k in small_file.EMBEDDED_KEYS if _present(rec.get(k))}
        _check_same_model(meta, from_row)
        meta.update(from_row)
    for key in ("width", "height", "scale", "model_id", "model_sha256"):
        if meta.get(key) is None:
            raise RehydrateError(f"metadata lacks {key!r}: not a TAID small file")
    want_id, want_sha = meta["model_id"], meta["model_sha256"]
    have_id, have_sha = getattr(pair, "model_id", None), getattr(pair, "weights_sha256", None)
    if have_sha != want_sha or have_id != want_id:
        raise RehydrateError(
            f"small file was made by {want_id} (sha256 {want_sha}); this pair is {have_id} (sha256 {have_sha}): refusing to guess"
        )
    w, h, s = int(meta["width"]), int(meta["height"]), int(meta["scale"])
    if im.size != (-(-w // s), -(-h // s)):
        raise RehydrateError(f"small image is {im.size[0]}x{im.size[1]}, expected {-(-w // s)}x{-(-h // s)} for {w}x{h} at x{s}")
    try:
        if color or alpha_stored_in(meta, im):  # no network runs otherwise: nothing for the pair to reach
            tiling.steps_for(pair, s)
    except ValueError as exc:
        raise RehydrateError(str(exc)) from exc
    # Flags missing from both record and embedded metadata are inferred from the small image's mode.
    alpha_stored = alpha_stored_in(meta, im)
    is_gray = bool(meta["is_gray"]) if meta.get("is_gray") is not None else im.mode in ("L", "LA")
    has_alpha = bool(meta["has_alpha"]) if meta.get("has_alpha") is not None else alpha_stored
    arr = np.asarray(im.convert("RGBA" if alpha_stored else "RGB"))
    small_rgb = arr[..., :3]
    if is_gray:
        small_rgb = np.repeat(_gray(small_rgb)[..., None], 3, axis=2)
    if color:
        up = _through_pair(pair, small_rgb, s, tile, True, is_gray)[0][:h, :w]
    else:
        up = enhancement.no_prediction((h, w, 3))
    alpha = None
    if alpha_stored:
        a_up, _ = _through_pair(pair, np.repeat(arr[..., 3:4], 3, axis=2), s, tile, True, True)
        alpha = _gray(a_up[:h, :w])
    return Prediction(up, alpha, is_gray, has_alpha, meta, icc, exif)


def alpha_stored_in(meta: dict, im: Image.Image) -> bool:
    """Whether a small file carries an alpha plane (TAU upscales it, whatever the layer)."""
    return bool(meta["alpha_stored"]) if meta.get("alpha_stored") is not None else im.mode in ("RGBA", "LA", "PA")


def _check_layer_sha(want: str | None, layer: bytes) -> None:
    if _sha256(layer) != want:
        raise RehydrateError("enhancement layer's sha256 differs from the one its small file names: wrong or damaged layer")


def enhance(pred: Prediction, layer: bytes | None, preview: bool = False) -> np.ndarray:
    """The restored colour pixels: the prediction, plus the enhancement layer its metadata names.
    A layer is checked against the sha256 the small file (or its row) carries; a missing one is
    refused unless `preview` (a fast preview at the small file's own fidelity)."""
    want = pred.meta.get("enhancement_sha256")
    if preview or (want is None and layer is None):
        return pred.color
    if want is None:
        raise RehydrateError("an enhancement layer was given, but the small file names none: refusing to guess")
    if layer is None:
        raise RehydrateError("this small file needs its enhancement layer (or ask for the preview without it)")
    _check_layer_sha(want, layer)
    try:
        if pred.is_gray:
            return np.repeat(enhancement.apply_layer(pred.color[..., 0], layer)[..., None], 3, axis=2)
        return enhancement.apply_layer(pred.color, layer)
    except enhancement.LayerError as exc:
        raise RehydrateError(str(exc)) from exc


def needs_prediction(layer: bytes | None, preview: bool = False) -> bool:
    """Whether restoring needs TAU's colour: not when a prediction-free layer (the image itself,
    pipeline.codec.layer.PREDICTION_FREE) is applied."""
    if preview or layer is None:
        return True
    try:
        return enhancement.layer_format(layer) not in enhancement.PREDICTION_FREE
    except enhancement.LayerError:
        return True  # enhance() says what is wrong with it


def _rehydrate_pixels(small: bytes, record: CompressRecord | dict | None, pair, tile: int, layer: bytes | None = None,
                      preview: bool = False):
    pred = predict(small, record, pair, tile, color=needs_prediction(layer, preview))
    color = enhance(pred, layer, preview)
    return _to_pil(color, pred.alpha, pred.is_gray, pred.has_alpha), pred.meta, pred.icc, pred.exif


def rehydrate_image(
    small: bytes,
    record: CompressRecord | dict | None,
    pair,
    restored_format: str | None = None,
    quality: int | None = None,
    tile: int = DEFAULT_TILE,
    layer: bytes | None = None,
    preview: bool = False,
) -> bytes:
    """Full-resolution image bytes, upright, with the original's ICC profile and EXIF (Orientation=1).
    `restored_format="original"` (the default of a `--fidelity original` archive) gives the source file
    itself where a jxl-jpeg or source layer holds it (byte for byte, checked against `source_sha256`),
    else the exact pixels as PNG.

    Format: `restored_format` if given, else the record's `rehydrate_format` (the source's format
    where it makes sense: JPEG stays JPEG at quality 95, PNG stays PNG; see image_io.default_output).
    `layer`: the enhancement layer the small file names (pipeline.codec.layer), if it has one;
    `preview` rehydrates without it (preview fidelity)."""
    if (restored_format or _embedded_format(small, record)) == formats.ORIGINAL:
        if not preview and layer is not None:
            original = _original_file(small, record, pair, layer)
            if original is not None:
                return original
        restored_format = "png"  # no original file kept (not a JPEG source, or a preview): exact pixels, losslessly
    img, meta, icc, exif = _rehydrate_pixels(small, record, pair, tile, layer, preview)
    return encode_restored(img, meta, icc, exif, restored_format, quality)


def _embedded_format(small: bytes, record) -> str | None:
    rec = record.model_dump() if isinstance(record, CompressRecord) else (record or {})
    fmt = rec.get("rehydrate_format")
    if isinstance(fmt, str) and fmt:
        return fmt
    try:
        return (small_file.read_small(small)[1] or {}).get("rehydrate_format")
    except small_file.SmallFileError:
        return None


def _original_file(small: bytes, record, pair, layer: bytes) -> bytes | None:
    """The source file itself from a jxl-jpeg or source layer (None for other layers), after the same
    checks as any rehydration (pair, sha256s) and against the source's sha256 where the row has it."""
    try:
        if enhancement.layer_format(layer) not in enhancement.ORIGINAL_FORMATS:
            return None
    except enhancement.LayerError as exc:
        raise RehydrateError(str(exc)) from exc
    pred = predict(small, record, pair, color=False)
    _check_layer_sha(pred.meta.get("enhancement_sha256"), layer)
    try:
        data = enhancement.original_bytes(layer)
    except enhancement.LayerError as exc:
        raise RehydrateError(str(exc)) from exc
    rec = record.model_dump() if isinstance(record, CompressRecord) else (record or {})
    want = rec.get("source_sha256")
    if _present(want) and _sha256(data) != want:
        raise RehydrateError("the original file rebuilt from the layer differs from the manifest's source_sha256: refusing")
    return data


def encode_restored(img: Image.Image, meta: dict, icc: bytes | None, exif: bytes | None,
                    restored_format: str | None = None, quality: int | None = None) -> bytes:
    fmt = restored_format or meta.get("rehydrate_format") or "png"
    q = quality if quality is not None else (meta.get("rehydrate_quality") if restored_format is None else None)
    if fmt.lower() in ("jpeg", "jpg") and q is None:
        q = image_io.DEFAULT_JPEG_QUALITY
    try:
        return image_io.encode_output(img, fmt, q, icc, exif)
    except ValueError as exc:
        raise RehydrateError(str(exc)) from exc


def decode_output(data: bytes) -> Image.Image:
    """Convenience for tests and tools: open rehydrated bytes fully loaded."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return im
