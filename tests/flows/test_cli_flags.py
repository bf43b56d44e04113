"""Every flag of every `taid` subcommand reaches its params model (or library function) by name,
or is declared CLI-only: a misspelt dest is an error, never a flag dropped silently. Help shows
the model's own defaults."""

from __future__ import annotations

import argparse

import pytest

from flows.cli import build_parser, main
from flows.commands.base import GLOBAL, field_names, resolve, unknown_flags, values


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_dest_is_a_field_or_cli_only():
    commands = subcommands()
    assert set(commands) == {"train", "eval", "compress-file", "rehydrate-file", "compress-archive", "compact",
                             "verify", "rehydrate", "serve"}
    for name, parser in commands.items():
        target = parser.get_default("target")
        assert target, name
        names = field_names(resolve(target))
        assert unknown_flags(parser) == [], name
        cli_only = parser.get_default("cli_only")
        assert not (cli_only & names), (name, cli_only & names)  # CLI-only means: not a field
        dests = {a.dest for a in parser._actions} - GLOBAL
        assert cli_only <= dests, (name, cli_only - dests)  # no stale CLI-only names


def test_a_misspelt_dest_is_a_programming_error():
    args = build_parser().parse_args(["compress-archive", "src", "dest", "--workers", "3"])
    assert values(args)["workers"] == 3
    args.wokers = 3  # a dest with a typo: a field name nowhere
    with pytest.raises(TypeError, match="wokers"):
        values(args)
    parser = subcommands()["rehydrate"]
    parser.add_argument("--ednpoint-url", dest="ednpoint_url")
    assert unknown_flags(parser) == ["ednpoint_url"]


def test_flags_build_the_params(tmp_path):
    from flows.commands.base import params

    args = build_parser().parse_args(["rehydrate", "s3://b/a", "--prefix", "p/", "--to", str(tmp_path),
                                      "--endpoint-url", "http://127.0.0.1:9", "--format", "png", "--preview",
                                      "--actor-resource", "taid_model=1", "--actor-resource", "big",
                                      "--batch-size", "5"])
    p = params(args)
    assert (p.endpoint_url, p.restored_format, p.preview, p.batch_size) == ("http://127.0.0.1:9", "png", True, 5)
    assert p.actor_resources == {"taid_model": 1.0, "big": 1.0}


def test_bad_values_are_one_line(capsys):
    assert main(["compress-archive", "src", "dest", "--workers", "0", "--no-prefect"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("taid compress-archive: workers:"), err


def test_help_of_every_subcommand_shows_the_models_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    for name in subcommands():
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0, name
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["rehydrate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "items per actor call" in text and "when an actor crashes) (default: 2)" in text and "--endpoint-url" in text
