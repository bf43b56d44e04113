"""The enhancement layer: what the small file alone cannot restore, stored beside it.

Rehydration predicts the full image from the small file (TAU(small), 8-bit). When that prediction
is below the fidelity the user asked for, the codec stores the difference

    residual = source - prediction             (per pixel and channel, 8-bit values)

as an ordinary image, and rehydration adds it back. The small file stays a standard image (the
preview); the layer is useless without it and is never needed to see the thumbnail.

File: `<small file name>.enh` (`layer_name`), a 5-byte header and an image:

    b"TEL" + version (1) + format byte + payload
    format b"a": AVIF, lossy, 4:2:0 (4:0:0 for grey). The residual is offset by 128 and clipped to
                0..255; restored = clip(prediction + decoded - 128). Clipping only bites where the
                prediction is off by more than 127 levels; the codec verifies what it wrote, so a
                clipped pixel can cost fidelity but never goes unnoticed.
    format b"f": AVIF of the source itself; restored = decoded, the prediction is not used. For images
                TAU predicts badly (screenshots, text, line art: the residual is then dearer than the
                image), the codec picks this when it is smaller.
    format b"l": WebP lossless of the source itself; restored = decoded, exactly the source, the
                prediction is not used (the `lossless` preset, and the fallback when no lossy layer
                reaches the target). Written since issue 17, instead of b"w".
    format b"g": AVIF of the image itself in horizontal bands, each its own AVIF at its own level:
                payload = band count (1 byte), then per band its height and byte length (two
                little-endian uint32), then the bands' AVIF files; restored = the bands stacked.
                Mixing two adjacent levels across bands is a quantizer finer than libaom's
                (pipeline.codec.fidelity: a large image lands within a fraction of a level of its
                target); 8 bands of a 12 MP photo cost 0.7 % more bytes than one AVIF at one level.
    format b"j": JPEG XL recompression of a JPEG source's own bytes (lossless, about 0.85x of the JPEG);
                restored = the source JPEG decoded again (pipeline.codec.image_io, the same policies as the
                compressing side), and `original_bytes` gives the JPEG back byte for byte. The
                prediction is not used. Written for `--fidelity original` and `lossless` since issue 21.
    format b"k": JPEG XL of the image itself in horizontal bands, packed as b"g" (band count, then per
                band its height and byte length, then the bands' JPEG XL files); restored = the bands
                stacked. Written since issue 29 for perceptual targets, where JPEG XL's VarDCT, coded
                by quality (libjxl's distance), needs fewer bytes than AVIF at the higher scores.
    format b"s": the source file's own bytes: payload = method byte (0 stored, 1 lzma), policy byte
                (bit 0: first frame of a multi-frame file, bit 1: high bit depth reduced to 8), then
                the bytes. restored = the source decoded again by the same policies
                (pipeline.codec.image_io), and `original_bytes` gives the file back byte for byte.
                Written since issue 29 where no representation reaching the target is smaller than the
                source (an archive never stores more than the source), and for `--fidelity original`
                of non-JPEG sources (HEIC, AVIF, WebP, PNG, TIFF), which come back as their own bytes.
    format b"w": WebP lossless of the residual modulo 256; restored = (prediction + decoded) mod 256.
                Read, no longer written: exact only when TAU at rehydration computes bit for bit
                what it computed at compression, and a prediction off by one level at a pixel of
                value 0 or 255 wraps to an error of 255 (the modulo). Another device or precision
                (GPU vs CPU, bf16, other convolution kernels) breaks that; b"l" cannot be broken so,
                and is 3-71 % smaller with its small file (mean 15 % on Set5 + Set14 as JPEG q90
                sources, 28 % as PNG sources: benchmarks/inference_precision.py, docs/gpu.md).

Cross-device: every layer but b"w" keeps rehydration on another device within the prediction's
own difference (b"a": clipped, so a prediction off by d levels restores off by at most d; b"f" and
b"l": not at all). The tolerance is stated and tested in tests/codec/test_cross_device.py.

AVIF settings (`avif_settings`, issue 21): libaom's own quantizer (`cq-level`, 0-63) instead of
Pillow's 0-100 quality (which maps onto it unevenly: 66 -> 67 jumped +1.9 dB and +14 % bytes on one
photo, because libavif's default quantisation matrices switch level there), quantisation matrices
off, `tune=psnr` (the target is a PSNR: 4-6 % fewer bytes at equal Y-PSNR than the defaults tuned for
the eye, and one level is a smooth 0.5-0.6 dB step). A layer's `level` is 63 - cq-level, so a higher
level is finer, as a quality is. `speed` is libaom's effort (6 finest ... 9 fastest).

Measured on held-out training photos (JPEG q90 sources; benchmarks/residual_coders.py): AVIF
4:2:0 of the residual needs 2-3 % fewer bytes than 4:4:4, 11-20 % fewer than lossy WebP or JPEG XL;
AVIF's loop filters (CDEF, restoration) pay on the residual too, its perceptual delta-q does not.

Binding: the small file's embedded metadata carries the layer's sha256 (`e=`), and so does the
manifest row (`enhancement_sha256`); rehydration refuses a layer whose sha256 differs and a small
file whose layer is missing (unless asked to skip the layer, for a fast preview).

Pure functions on numpy arrays: no storage, no model.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

MAGIC = b"TEL"
VERSION = 1
SUFFIX = ".enh"
LAYER_FORMATS = {"avif": b"a", "avif-full": b"f", "avif-bands": b"g", "webp-lossless": b"w", "webp-lossless-full": b"l",
                 "jxl-jpeg": b"j", "jxl-bands": b"k", "source": b"s"}
# restored = the layer: device-independent
PREDICTION_FREE = ("avif-full", "avif-bands", "jxl-bands", "webp-lossless-full", "jxl-jpeg", "source")
EXACT_FORMATS = ("webp-lossless-full", "jxl-jpeg", "source")  # restored = the decoded source, every pixel
BANDED = {"avif-bands": "avif", "jxl-bands": "jxl"}  # band layers and the image format of their bands
ORIGINAL_FORMATS = ("jxl-jpeg", "source")  # layers that hold the source file itself
_NAMES = {v: k for k, v in LAYER_FORMATS.items()}
AVIF_SUBSAMPLING = "4:2:0"
AVIF_SPEED = 6  # Pillow's default; `effort` (pipeline.codec.fidelity) picks another per run
AVIF_LEVELS = 63  # level = 63 - libaom cq-level: 0 coarsest ... 63 finest
# libaom's perceptual adaptive quantisation and quantisation matrices spend bits where the eye looks,
# not where the squared error is; tune=psnr aims at what the fidelity target measures (module docstring)
AVIF_ADVANCED = {"deltaq-mode": "0", "enable-qm": "0", "tune": "psnr", "end-usage": "q"}


def avif_settings(level: int | None = None, speed: int = AVIF_SPEED) -> dict:
    """Pillow's AVIF save options of the layer at `level` (benchmarks code the full image with the same)."""
    advanced = dict(AVIF_ADVANCED)
    if level is not None:
        if not 0 <= level <= AVIF_LEVELS:
            raise ValueError(f"AVIF level must be in 0..{AVIF_LEVELS}")
        advanced["cq-level"] = str(AVIF_LEVELS - int(level))
    # `quality` is overridden by cq-level; given so that Pillow does not pick its own default
    return {"quality": 50, "subsampling": AVIF_SUBSAMPLING, "speed": int(speed), "advanced": advanced,
            "max_threads": 1}


class LayerError(ValueError):
    """Bytes that are not an enhancement layer, or one that does not fit the prediction."""


def no_prediction(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-cost stand-in for the prediction of a prediction-free layer: apply_layer needs only its shape."""
    return np.broadcast_to(np.uint8(0), shape)


def layer_name(small_name: str) -> str:
    """Where the layer of a small file lives: beside it, the same name plus `.enh`."""
    return small_name + SUFFIX


def _image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr), "L" if arr.ndim == 2 else "RGB")


def encode_layer(source: np.ndarray, prediction: np.ndarray | None, fmt: str, level: int | None = None,
                 speed: int = AVIF_SPEED) -> bytes:
    """The layer that takes `prediction` towards `source` (same shape: H x W x 3 or H x W uint8);
    a prediction-free layer format needs no prediction. `level`: the AVIF level (0..63, higher is finer)."""
    if fmt == "jxl-jpeg":
        raise ValueError("a jxl-jpeg layer is made from the JPEG's bytes: encode_jpeg_layer")
    if fmt not in PREDICTION_FREE:
        if prediction is None or source.shape != prediction.shape:
            raise ValueError(f"source {source.shape} and prediction {getattr(prediction, 'shape', None)} differ")
    diff = None if fmt in PREDICTION_FREE else source.astype(np.int16) - prediction.astype(np.int16)
    buf = io.BytesIO()
    if fmt in ("avif", "avif-full"):
        if level is None:
            raise ValueError("an AVIF layer needs a level")
        img = source if fmt == "avif-full" else np.clip(diff + 128, 0, 255).astype(np.uint8)
        _image(img).save(buf, "AVIF", **avif_settings(level, speed))
    elif fmt in ("webp-lossless", "webp-lossless-full"):
        img = _image(source if fmt == "webp-lossless-full" else (diff % 256).astype(np.uint8))
        if img.mode == "L":  # WebP holds RGB only; a grey residual is repeated, and decoded back from one channel
            img = img.convert("RGB")
        img.save(buf, "WEBP", lossless=True, quality=100, method=4, exact=True)
    else:
        raise ValueError(f"unknown layer format {fmt!r} (choose from {tuple(LAYER_FORMATS)})")
    return MAGIC + bytes([VERSION]) + LAYER_FORMATS[fmt] + buf.getvalue()


def encode_avif(arr: np.ndarray, level: int, speed: int = AVIF_SPEED) -> bytes:
    """One AVIF file (no layer header) of `arr` (H x W x 3 or H x W uint8) at `level`."""
    buf = io.BytesIO()
    _image(arr).save(buf, "AVIF", **avif_settings(level, speed))
    return buf.getvalue()


# Perceptual targets (issue 29): AVIF with libaom's own eye-tuned defaults (its adaptive quantisation,
# quantisation matrices as libavif sets them), coded by Pillow's quality 0-100. On 768-px phone crops at
# SSIMULACRA2 80 it needed 0-30 % fewer bytes than tune=psnr; JPEG XL won at 90 (benchmarks/results/perceptual.md).


def encode_avif_eye(arr: np.ndarray, quality: int, speed: int = AVIF_SPEED) -> bytes:
    """One AVIF file of `arr` at Pillow's `quality` with libaom's perceptual defaults, 4:2:0 (4:0:0 grey)."""
    buf = io.BytesIO()
    _image(arr).save(buf, "AVIF", quality=int(quality), speed=int(speed), subsampling=AVIF_SUBSAMPLING, max_threads=1)
    return buf.getvalue()


JXL_EFFORT = 7  # libjxl's default; effort 5 (the `default` effort's): bytes within 1.1 % at half the CPU


def encode_jxl(arr: np.ndarray, quality: int, effort: int = JXL_EFFORT) -> bytes:
    """One JPEG XL file (VarDCT) of `arr` at libjxl's `quality` (90 = distance 1.0, each step 0.09)."""
    import pillow_jxl  # noqa: F401  (registers the JXL plugin)

    buf = io.BytesIO()
    _image(arr).save(buf, "JXL", quality=int(quality), effort=int(effort), num_threads=1)
    return buf.getvalue()


def decode_band(data: bytes, kind: str, grey: bool) -> np.ndarray:
    """H x W x 3 (or H x W for grey) uint8 pixels of one band (`kind`: "avif" or "jxl")."""
    if kind == "avif":
        return decode_avif(data, grey)
    import pillow_jxl  # noqa: F401  (registers the JXL plugin)

    return _decoded(data, "JXL", grey)


def pack_bands(bands: list[tuple[int, bytes]], fmt: str = "avif-bands") -> bytes:
    """A band layer (avif-bands b"g", jxl-bands b"k") of (height, image file) bands, top to bottom."""
    if fmt not in BANDED:
        raise ValueError(f"{fmt!r} is not a band layer format ({', '.join(BANDED)})")
    if not 1 <= len(bands) <= 255:
        raise ValueError("a band layer holds 1 to 255 bands")
    index = b"".join(struct.pack("<II", h, len(data)) for h, data in bands)
    return MAGIC + bytes([VERSION]) + LAYER_FORMATS[fmt] + bytes([len(bands)]) + index + b"".join(d for _, d in bands)


_SOURCE_FIRST_FRAME, _SOURCE_TO8BIT = 1, 2


def encode_source_layer(data: bytes, multi_frame: str = "skip", high_bit_depth: str = "skip") -> bytes:
    """A source layer (format b"s"): the file's own bytes, lzma-packed where that is smaller (an
    uncompressed TIFF or BMP), with the decode policies that made the pixels it was measured as."""
    import lzma

    packed = lzma.compress(data, preset=6)
    method, payload = (1, packed) if len(packed) < len(data) else (0, data)
    flags = (_SOURCE_FIRST_FRAME if multi_frame == "first" else 0) | (_SOURCE_TO8BIT if high_bit_depth == "to8bit" else 0)
    return MAGIC + bytes([VERSION]) + LAYER_FORMATS["source"] + bytes([method, flags]) + payload


def _source_payload(layer: bytes) -> tuple[bytes, dict]:
    """(the source file, its decode policies) of a source layer."""
    import lzma

    if len(layer) < 7:
        raise LayerError("source layer is truncated")
    method, flags, payload = layer[5], layer[6], layer[7:]
    if method == 1:
        try:
            payload = lzma.decompress(payload)
        except lzma.LZMAError as exc:
            raise LayerError(f"source layer does not unpack: {exc}") from exc
    elif method != 0:
        raise LayerError(f"source layer packing {method} is unknown")
    return payload, {"multi_frame": "first" if flags & _SOURCE_FIRST_FRAME else "skip",
                     "high_bit_depth": "to8bit" if flags & _SOURCE_TO8BIT else "skip"}


def _unpack_bands(payload: bytes) -> list[tuple[int, bytes]]:
    if not payload:
        raise LayerError("band layer without bands")
    n, pos = payload[0], 1
    if len(payload) < pos + 8 * n:
        raise LayerError("band layer index is truncated")
    sizes = [struct.unpack_from("<II", payload, pos + 8 * i) for i in range(n)]
    pos += 8 * n
    bands = []
    for h, length in sizes:
        if pos + length > len(payload):
            raise LayerError("band layer is truncated")
        bands.append((h, payload[pos:pos + length]))
        pos += length
    if pos != len(payload):
        raise LayerError("band layer has trailing bytes")
    return bands


def decode_avif(data: bytes, grey: bool) -> np.ndarray:
    """H x W x 3 (or H x W for grey) uint8 pixels of one AVIF file."""
    return _decoded(data, "AVIF", grey)


def _decoded(data: bytes, fmt: str, grey: bool) -> np.ndarray:
    try:
        im = Image.open(io.BytesIO(data), formats=(fmt,))
        im.load()
    except Exception as exc:
        raise LayerError(f"enhancement layer payload is unreadable: {type(exc).__name__}: {exc}") from exc
    arr = np.asarray(im.convert("RGB"))
    return arr[..., 0] if grey else arr


def encode_jpeg_layer(jpeg: bytes) -> bytes:
    """JPEG XL recompression of a JPEG file's own bytes (format b"j"). Raises ValueError where libjxl
    cannot transcode it (CMYK, arithmetic-coded, damaged...) or cannot give the same bytes back:
    the caller then stores exact pixels instead."""
    import hashlib

    import pillow_jxl

    try:
        with Image.open(io.BytesIO(jpeg), formats=("JPEG",)) as im:
            mode, size = im.mode, im.size
        payload = pillow_jxl.Encoder(mode=mode if mode in ("RGB", "L") else "RGB", lossless=True, effort=7,
                                     num_threads=1)(jpeg, size[0], size[1], jpeg_encode=True)
    except Exception as exc:
        raise ValueError(f"JPEG XL cannot recompress this JPEG: {type(exc).__name__}: {exc}") from exc
    layer = MAGIC + bytes([VERSION]) + LAYER_FORMATS["jxl-jpeg"] + payload
    if hashlib.sha256(original_bytes(layer)).digest() != hashlib.sha256(jpeg).digest():
        raise ValueError("JPEG XL recompression does not give this JPEG back byte for byte")
    return layer


def original_bytes(layer: bytes) -> bytes:
    """The source file a jxl-jpeg or source layer holds, byte for byte."""
    fmt = layer_format(layer)
    if fmt == "source":
        return _source_payload(layer)[0]
    if fmt != "jxl-jpeg":
        raise LayerError("only a jxl-jpeg or source layer holds the original file")
    import pillow_jxl

    try:
        is_jpeg, _, data, _, _ = pillow_jxl.Decoder()(layer[5:])
    except Exception as exc:
        raise LayerError(f"enhancement layer payload is unreadable: {type(exc).__name__}: {exc}") from exc
    if not is_jpeg:
        raise LayerError("the jxl-jpeg layer holds no JPEG reconstruction")
    return bytes(data)


def layer_format(layer: bytes) -> str:
    if len(layer) < 6 or layer[:3] != MAGIC:
        raise LayerError("not a TAID enhancement layer")
    if layer[3] != VERSION:
        raise LayerError(f"enhancement layer version {layer[3]} is not supported (this reader knows {VERSION})")
    fmt = _NAMES.get(layer[4:5])
    if fmt is None:
        raise LayerError(f"unknown enhancement layer format byte {layer[4:5]!r}")
    return fmt


def apply_layer(prediction: np.ndarray, layer: bytes) -> np.ndarray:
    """prediction (H x W x 3 or H x W uint8) + layer -> the restored pixels, same shape."""
    fmt = layer_format(layer)
    if fmt == "jxl-jpeg":
        return _decoded_source(original_bytes(layer), prediction, {})
    if fmt == "source":
        data, policies = _source_payload(layer)
        return _decoded_source(data, prediction, policies)
    if fmt in BANDED:
        grey = prediction.ndim == 2
        parts = [(h, decode_band(d, BANDED[fmt], grey)) for h, d in _unpack_bands(layer[5:])]
        if any(part.shape[0] != h for h, part in parts):
            raise LayerError(f"an {fmt} layer's band is not the height its index says")
        decoded = np.concatenate([part for _, part in parts], axis=0)
        if decoded.shape != prediction.shape:
            raise LayerError(f"enhancement layer is {decoded.shape}, the prediction {prediction.shape}")
        return np.ascontiguousarray(decoded)
    try:
        im = Image.open(io.BytesIO(layer[5:]), formats=("WEBP",) if fmt.startswith("webp") else ("AVIF",))
        im.load()
    except Exception as exc:
        raise LayerError(f"enhancement layer payload is unreadable: {type(exc).__name__}: {exc}") from exc
    grey = prediction.ndim == 2
    decoded = np.asarray(im.convert("RGB"))
    if grey:
        decoded = decoded[..., 0]
    if decoded.shape != prediction.shape:
        raise LayerError(f"enhancement layer is {decoded.shape}, the prediction {prediction.shape}")
    if fmt in PREDICTION_FREE:
        return np.ascontiguousarray(decoded)
    pred = prediction.astype(np.int16)
    if fmt == "avif":
        return np.clip(pred + decoded.astype(np.int16) - 128, 0, 255).astype(np.uint8)
    return ((pred + decoded) % 256).astype(np.uint8)


def _decoded_source(data: bytes, prediction: np.ndarray, policies: dict) -> np.ndarray:
    """The pixels the compressing side measured: the source file decoded by the same policies (image_io)."""
    from pipeline.codec import image_io

    try:
        dec = image_io.decode_image(data, max_pixels=prediction.shape[0] * prediction.shape[1] + 1, **policies)
    except image_io.DecodeFailure as exc:
        raise LayerError(f"the layer's source file does not decode: {exc.message}") from exc
    decoded = dec.rgb[..., 0] if prediction.ndim == 2 else dec.rgb
    if decoded.shape != prediction.shape:
        raise LayerError(f"enhancement layer is {decoded.shape}, the prediction {prediction.shape}")
    return np.ascontiguousarray(decoded)
