"""`taid compress-file` and `taid rehydrate-file`: one image, no archive (pipeline.archive.files)."""

from __future__ import annotations

import argparse

from flows.commands.base import command, values
from pipeline.codec import formats  # constants only: no torch


def _compress_file(args: argparse.Namespace) -> int:
    from pipeline.archive import compress_file

    result = compress_file(**values(args))
    print("\n".join(result.summary(args.input_path)))
    return 0


def _rehydrate_file(args: argparse.Namespace) -> int:
    from pipeline.archive import rehydrate_file

    out = rehydrate_file(**values(args))
    print(f"{args.input_path} -> {args.output_path} ({len(out)} B)")
    return 0


def fidelity_args(p: argparse.ArgumentParser) -> None:
    """What the small files should be: a fidelity (or target), or one fixed layer (model, format...)."""
    # one of --fidelity, --target-score, --target-psnr: checked by pipeline.codec.presets (one line, exit 2)
    p.add_argument("--fidelity", metavar="NAME", help="preview (SSIMULACRA2 >= 60), standard (>= 80 in every region: "
                   "no difference side by side at 1:1; the default), high (>= 90: visually lossless), lossless (exact "
                   "pixels) or original (the source file back, byte for byte): each image gets the cheapest verified "
                   "representation reaching it, never more bytes than its source (docs/fidelity.md)")
    p.add_argument("--effort", choices=["fast", "default", "best"], help="how hard the fidelity search works for "
                   "bytes: CPU against storage (docs/fidelity.md#effort; default: default)")
    p.add_argument("--preview-long-side", dest="preview_long_side", type=int, metavar="PX",
                   help="long side of the small file where a layer carries the fidelity (default 768)")
    p.add_argument("--target-score", dest="target_score", type=float, metavar="S",
                   help="explicit SSIMULACRA2 floor of every image's worst region, in (0, 100), instead of a preset")
    p.add_argument("--target-psnr", dest="target_psnr", type=float, metavar="DB",
                   help="explicit Y-PSNR floor instead (the SR papers' measure: it does not guarantee what a person sees)")
    p.add_argument("--model", dest="model_id", help="zoo id, weights file or registered model id: with a fidelity, "
                   "the only base pair; without, exactly this pair's single small files (default taid-x2)")
    p.add_argument("--scale", type=int, help="2, 4, ... 128 (a power of the model's scale; default: the model's)")
    p.add_argument("--small-format", dest="small_format", choices=formats.SMALL_FORMATS,
                   help="default: the model's (a codec-aware model's lossy format, else png)")
    p.add_argument("--quality", type=int, help="for webp-lossy / jpeg small files (default: the model's, else 90)")


def add(sub) -> None:
    c = command(sub, "compress-file", _compress_file, "pipeline.archive.files:compress_file",
                help="shrink one image file into a TAID small file")
    c.add_argument("input_path", metavar="input", help="image file")
    c.add_argument("output_path", metavar="output", help="small file to write (atomically)")
    fidelity_args(c)
    c.add_argument("--max-pixels", dest="max_pixels", type=int, help="decompression-bomb limit (header check)")
    c.add_argument("--tile", type=int, help="tile side in full-resolution pixels")
    c.add_argument("--multi-frame", dest="multi_frame", choices=["skip", "first"])
    c.add_argument("--high-bit-depth", dest="high_bit_depth", choices=["skip", "to8bit"])
    c.add_argument("--rehydrate-format", dest="rehydrate_format", help="default output format when rehydrating")
    c.add_argument("--verify", action="store_true", default=None, help="rehydrate once and report round-trip PSNR")
    c.add_argument("--record", dest="record_path", help="also write the manifest record as JSON here")

    r = command(sub, "rehydrate-file", _rehydrate_file, "pipeline.archive.files:rehydrate_file",
                help="restore full resolution from a TAID small file")
    r.add_argument("input_path", metavar="input", help="TAID small file")
    r.add_argument("output_path", metavar="output", help="image file to write (atomically)")
    r.add_argument("--record", dest="record_path",
                   help="manifest record JSON (default: the metadata embedded in the small file)")
    r.add_argument("--model", help="model to load (default: the one recorded; a mismatch is refused)")
    r.add_argument("--format", dest="restored_format", type=formats.canonical, choices=formats.REHYDRATE_FORMATS,
                   help="default: the output name's extension, else the source's format")
    r.add_argument("--quality", type=int, help="for jpeg / lossy webp output")
    r.add_argument("--preview", action="store_true", help="leave out the enhancement layer (the small file's fidelity)")
