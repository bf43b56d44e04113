"""The archive codec: one image file to a small file, an optional enhancement layer and a record,
and back. Pure functions: no Ray, no Prefect, no storage.

    from pipeline.codec import Request, encode, rehydrate_image
    request = Request.of(fidelity="standard")              # or Request.of(model_id="taid-x4") for one fixed file
    small, layer, record = encode(data, request, {m: load_pair(m) for m in request.models})
    restored = rehydrate_image(small, record, pairs[record.model_id], layer=layer)

Modules:
- formats: every small-file and output format, suffix and media type, listed once.
- options: CodecOptions, CompressRecord, the Encoded result, RehydrateError, the limits (no torch).
- presets: fidelity specs: PRESETS, EFFORTS, resolve_fidelity, requested_fidelity (no torch).
- request: Request (a fixed small file or a fidelity target) and encode(), the one entry (no torch).
- image: compress_image (one fixed small file) and rehydrate_image, TAU's prediction, the layer applied.
- fidelity: compress_to_target, the per-image search for the fewest bytes that reach a fidelity.
- measure: the measure contract (Score, Measure): SSIMULACRA2 and Y-PSNR, whole and per region (torch).
- layer: enhancement layers (AVIF bands, lossless, JPEG XL of a JPEG source).
- small_file: the small file's formats and its embedded metadata.
- image_io: decoding sources (the real-world policies) and encoding rehydrated outputs.
- tiling: the networks over tiles and recursion (torch).
- inference: device, precision and backend settings of the networks (torch).

The names below are imported when first used (PEP 562), so `import pipeline.codec` costs nothing
and the light ones (formats, options, presets, request) never load torch.
"""

from __future__ import annotations

from pipeline.face import lazy_face

_EXPORTS = {
    # the public face: a request, the one entry, its result
    "Request": "request", "encode": "request", "Encoded": "options",
    "CodecOptions": "options", "CompressRecord": "options", "RehydrateError": "options",
    "compress_image": "image", "rehydrate_image": "image", "check_options": "image", "decode_output": "image",
    "compress_to_target": "fidelity",
    "Score": "measure", "Measure": "measure", "Ssimulacra2": "measure", "PsnrY": "measure",
    "MEASURES": "measure", "rgb_psnr": "measure",
    "Fidelity": "presets", "PRESETS": "presets", "EFFORTS": "presets", "DEFAULT_FIDELITY": "presets",
    "resolve_fidelity": "presets", "requested_fidelity": "presets",
    "SmallFormat": "formats", "OutputFormat": "formats", "RehydrateFormat": "formats",
    "SMALL_FORMATS": "formats", "OUTPUT_FORMATS": "formats", "REHYDRATE_FORMATS": "formats",
    # what the other packages use
    "MEDIA_TYPES": "formats",
    "OUTPUT_SUFFIX": "formats",
    "SOURCE_OUTPUT": "formats",
    "canonical": "formats",
    "formats": "formats",
    "small_file_settings": "image",
    "needs_prediction": "image", "alpha_stored_in": "image",
    "encode_output": "image_io",
    "InferenceOptions": "inference",
    "configure": "inference",
    "layer_name": "layer",
    "CODEC_VERSION": "options",
    "DEFAULT_MAX_PIXELS": "options",
    "DEFAULT_MODEL": "options",
    "Effort": "presets",
    "SUFFIX": "small_file",
    "SmallFileError": "small_file",
    "read_small": "small_file",
    "tiling": "tiling",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS, globals())
