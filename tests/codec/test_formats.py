"""Formats listed once (pipeline.codec.formats): every list of choices derives from it."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from pipeline.codec import formats
from pipeline.codec.options import CodecOptions


def _choices(model, field: str) -> set:
    ann = model.model_fields[field].annotation
    return {a for arg in get_args(ann) for a in get_args(arg)}


def test_choices_derive_from_formats():
    from pipeline.jobs.params import CompressArchiveParams, RehydrateParams
    from pipeline.serving.config import ImageQuery

    assert _choices(CodecOptions, "small_format") == set(formats.SMALL_FORMATS)
    assert _choices(CompressArchiveParams, "small_format") == set(formats.SMALL_FORMATS)
    assert _choices(CodecOptions, "rehydrate_format") == set(formats.OUTPUT_FORMATS)
    assert _choices(RehydrateParams, "restored_format") == set(formats.REHYDRATE_FORMATS)
    assert _choices(ImageQuery, "format") == set(formats.REHYDRATE_FORMATS)
    assert set(formats.REHYDRATE_FORMATS) == set(formats.OUTPUT_FORMATS) | {formats.ORIGINAL}


def test_names_and_aliases():
    from pipeline.jobs.params import RehydrateParams

    assert formats.format_of_name("out/RESTORED.JPG") == "jpeg" and formats.format_of_name("a.tif") == "tiff"
    assert formats.format_of_name("dir.v2/noext") is None and formats.format_of_name("a.gif") is None
    assert RehydrateParams(archive="a", to="b", output_format="JPG").restored_format == "jpeg"
    with pytest.raises(ValidationError):
        RehydrateParams(archive="a", to="b", output_format="gif")


def test_cli_offers_the_same_choices():
    import argparse

    from flows.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    small = next(a for a in sub.choices["compress-file"]._actions if a.dest == "small_format")
    assert tuple(small.choices) == formats.SMALL_FORMATS


def test_cli_choices_derive_from_formats():
    from flows.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    by_dest = {(name, a.dest): a for name, p in sub.items() for a in p._actions}
    assert list(by_dest["compress-file", "small_format"].choices) == list(formats.SMALL_FORMATS)
    assert list(by_dest["compress-archive", "small_format"].choices) == list(formats.SMALL_FORMATS)
    for name in ("rehydrate-file", "rehydrate"):
        action = by_dest[name, "restored_format"]
        assert list(action.choices) == list(formats.REHYDRATE_FORMATS)
        assert action.type("JPG") == "jpeg"  # --format jpg still works
