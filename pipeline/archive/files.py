"""Single files, no archive: one image in, a TAID small file (+ its enhancement layer) out, and back.

    result = compress_file("cat.jpg", "cat.webp", fidelity="high")   # writes cat.webp (+ cat.webp.enh)
    rehydrate_file("cat.webp", "cat.png")                            # finds cat.webp.enh by itself

What `taid compress-file` / `taid rehydrate-file` run. Writes are atomic (pipeline.storage.fs.atomic_write:
a temporary sibling renamed over the target, removed on any failure; usual file permissions). A
file that cannot be done (bad options, an unreadable path or image, a model that does not load, an
image the codec refuses) raises FileRefused, whose message is one line; nothing is written then,
except the record of a refused image when `record_path` asks for it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.storage import write_local


class FileRefused(UserError):
    """A single file that cannot be compressed or rehydrated: one line, exit 2."""


@dataclass
class CompressedFile:
    """What compress_file wrote: the small file (the record's output_*), and its layer if any."""

    record: object  # pipeline.codec.options.CompressRecord
    output_path: str
    layer_path: str | None = None
    layer_size: int = 0

    def summary(self, input_path: str) -> list[str]:
        """Lines saying what was written and at what fidelity (what `taid compress-file` prints)."""
        r = self.record
        lines = [f"{input_path} ({r.width}x{r.height}, {r.source_size} B) -> {self.output_path} "
                 f"({r.out_width}x{r.out_height} {r.output_format}{f' q{r.small_quality}' if r.small_quality else ''}, "
                 f"{r.output_size} B, x{r.scale} {r.model_id})"]
        if self.layer_path is not None:
            level = (f" level {r.enhancement_level}" if r.enhancement_level is not None else
                     f" quality {r.enhancement_quality}" if r.enhancement_quality is not None else "")
            lines.append(f"enhancement layer: {self.layer_path} ({r.enhancement_format}{level}, {self.layer_size} B)")
        if r.psnr_y is not None:
            total = r.output_size + self.layer_size
            if r.target_score is not None:
                asked = (f"SSIMULACRA2 {r.score_worst:.1f} in the worst region, {r.score_whole:.1f} whole (target "
                         f"{r.target_score:g}), Y-PSNR {r.psnr_y:.2f} dB")
            else:
                asked = f"Y-PSNR {r.psnr_y:.2f} dB (target {r.target_psnr:g})"
            lines.append(f"fidelity {r.fidelity}: {asked}, RGB {r.psnr_rgb:.2f} dB, thumbnail {r.thumbnail_psnr:.2f} dB; "
                         f"{total} B stored = {total / r.source_size:.3f} of the source")
        if r.notes:
            lines.append(f"notes: {r.notes}")
        if r.roundtrip_psnr is not None:
            lines.append(f"round-trip PSNR (RGB): {r.roundtrip_psnr:.2f} dB")
        return lines


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def compress_file(
    input_path: str,
    output_path: str,
    *,
    fidelity: str | None = None,
    target_psnr: float | None = None,
    target_score: float | None = None,
    effort: str | None = None,
    preview_long_side: int | None = None,
    model_id: str | None = None,
    scale: int | None = None,
    small_format: str | None = None,
    quality: int | None = None,
    max_pixels: int | None = None,
    tile: int | None = None,
    multi_frame: str | None = None,
    high_bit_depth: str | None = None,
    rehydrate_format: str | None = None,
    verify: bool | None = None,
    record_path: str | None = None,
) -> CompressedFile:
    """Compress one image file into `output_path` (+ its layer beside it, `layer_name(output_path)`,
    written first: a small file naming a layer is never there without it). A fidelity (preset or
    `target_score` / `target_psnr`; the default) or one fixed small file (`model_id` / `small_format` / `quality` /
    `scale` without a fidelity): pipeline.codec.fidelity.requested_fidelity. None = the codec's
    default (pipeline.codec.options.CodecOptions). `record_path`: also write the manifest record
    as JSON there (a refused image's too)."""
    from models.zoo import WeightsError, load_pair
    from pipeline.codec import Request, encode, layer_name

    try:
        request = Request.of(fidelity, target_psnr, model_id, small_format, quality, scale, effort, preview_long_side,
                             target_score=target_score, max_pixels=max_pixels, tile=tile, multi_frame=multi_frame, high_bit_depth=high_bit_depth,
                             rehydrate_format=rehydrate_format, verify=verify)
        small, layer, record = encode(read_file(input_path), request, {m: load_pair(m) for m in request.models})
    except (ValueError, OSError, WeightsError) as exc:  # bad options / model / unreadable path (pydantic's too)
        raise FileRefused(str(exc)) from exc
    if record_path:
        write_local(record_path, record.model_dump_json(indent=2).encode())
    if small is None:
        raise FileRefused(f"{input_path}: {record.status}: {record.error_message}")
    result = CompressedFile(record, output_path)
    if layer is not None:
        result.layer_path, result.layer_size = layer_name(output_path), len(layer)
        write_local(result.layer_path, layer)
    write_local(output_path, small)
    return result


def rehydrate_file(
    input_path: str,
    output_path: str,
    record_path: str | None = None,
    model: str | None = None,
    restored_format: str | None = None,
    quality: int | None = None,
    preview: bool = False,
) -> bytes:
    """Restore full resolution from a TAID small file into `output_path`; returns the bytes written.
    The record is the manifest record JSON at `record_path`, else the metadata embedded in the small
    file; its enhancement layer is read from beside it unless `preview` (the small file's own
    fidelity). `model`: load this one instead of the recorded (a mismatch is refused). Format:
    `restored_format`, else the output name's extension, else the recorded one."""
    from models.zoo import WeightsError, load_pair
    from pipeline.codec import RehydrateError, SmallFileError, formats, layer_name, read_small, rehydrate_image

    try:
        small = read_file(input_path)
        embedded = read_small(small)[1] or {}
        record = json.loads(read_file(record_path)) if record_path else None
        meta = record if record and record.get("model_id") else embedded
        if not meta:
            raise RehydrateError(f"{input_path} carries no TAID metadata and no record was given")
        layer = None
        if (meta.get("enhancement_sha256") or embedded.get("enhancement_sha256")) and not preview:
            try:
                layer = read_file(layer_name(input_path))
            except FileNotFoundError:
                raise RehydrateError(f"its enhancement layer {layer_name(input_path)} is missing "
                                     "(a preview rehydrates without it, at the small file's fidelity)") from None
        pair = load_pair(model or meta["model_id"])
        fmt = restored_format or formats.format_of_name(output_path)
        if fmt and fmt == (meta.get("rehydrate_format") or embedded.get("rehydrate_format") or "png"):
            fmt = None  # the recorded format: keep its recorded quality too
        out = rehydrate_image(small, record, pair, restored_format=fmt, quality=quality, layer=layer, preview=preview)
    except (RehydrateError, SmallFileError, WeightsError, OSError, ValueError) as exc:
        raise FileRefused(f"{input_path}: cannot rehydrate: {exc}") from exc
    write_local(output_path, out)
    return out
