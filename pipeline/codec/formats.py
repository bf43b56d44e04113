"""Every file format the codec writes, listed once: small files (what an archive stores), outputs
(what rehydration writes), their file suffixes and media types. Options, job parameters, the
server's query, the CLI and the rows derive their choices from here. Pure constants: no imports
beyond typing.

Small formats: png and webp are lossless; webp-lossy and jpeg take a quality (LOSSY_SMALL_FORMATS).
Output formats: png, jpeg, webp (lossless unless a quality is given), webp-lossy, tiff (deflate);
`original` (REHYDRATE_FORMATS) asks for the source file itself where the archive keeps it (a JPEG
under `--fidelity original`), else its exact pixels as PNG.
"""

from __future__ import annotations

from typing import Literal, get_args

SmallFormat = Literal["png", "webp", "webp-lossy", "jpeg"]
SMALL_FORMATS: tuple[str, ...] = get_args(SmallFormat)
LOSSY_SMALL_FORMATS = ("webp-lossy", "jpeg")  # take a quality; the others are lossless
SMALL_SUFFIX = {"png": ".png", "webp": ".webp", "webp-lossy": ".webp", "jpeg": ".jpg"}

OutputFormat = Literal["png", "jpeg", "webp", "webp-lossy", "tiff"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
LOSSLESS_OUTPUTS = ("png", "tiff")  # hold the restored pixels exactly (webp only without a quality)
ORIGINAL = "original"
RehydrateFormat = Literal["png", "jpeg", "webp", "webp-lossy", "tiff", "original"]  # OutputFormat + ORIGINAL
REHYDRATE_FORMATS: tuple[str, ...] = get_args(RehydrateFormat)
OUTPUT_SUFFIX = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "webp-lossy": ".webp", "tiff": ".tif"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "webp-lossy": "image/webp",
               "tiff": "image/tiff"}

# a file name's extension -> the output format it asks for (RESTORED.jpg is JPEG)
EXTENSIONS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp", "tif": "tiff", "tiff": "tiff"}
# Pillow's format of a source -> the output format that keeps it (rehydration's default: JPEG stays JPEG)
SOURCE_OUTPUT = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "TIFF": "tiff"}


def canonical(fmt: str) -> str:
    """An output format as the codec spells it: lower case, jpg -> jpeg, tif -> tiff."""
    fmt = fmt.lower()
    return EXTENSIONS.get(fmt, fmt)


def format_of_name(path: str) -> str | None:
    """The output format a file name asks for (RESTORED.png is PNG), None for other names."""
    name = path.rsplit("/", 1)[-1]
    return EXTENSIONS.get(name.rsplit(".", 1)[-1].lower()) if "." in name else None


assert set(LOSSY_SMALL_FORMATS) <= set(SMALL_FORMATS) and set(SMALL_SUFFIX) == set(SMALL_FORMATS)
assert set(OUTPUT_SUFFIX) == set(MEDIA_TYPES) == set(OUTPUT_FORMATS) == set(REHYDRATE_FORMATS) - {ORIGINAL}
