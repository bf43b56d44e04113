"""The `taid` command line: the top of the stack, above the job layer (pipeline.jobs) and the
Prefect flows (flows/), which is why it lives here and not in pipeline/ (nothing below imports it).

Argument parsing and handlers of a few lines that call library entry points, one module per
command group in flows/commands/: models (train, eval), files (compress-file, rehydrate-file),
archive (compress-archive, compact, verify, rehydrate), serve. Flags reach the library through
flows.commands.base: a flag that is no field of its command's params model (and not CLI-only) is
an error, never dropped. Here: the parser, logging set-up and the one-line error mapping.

`compress-archive` and batch `rehydrate` call the job layer directly, unless a Prefect API is
configured (PREFECT_API_URL, a Prefect profile) or --prefect asks: then they run the flow, so the
run shows in that server's UI with its logs and artifacts. A local run thus starts no Prefect server
and prints no Prefect lines (docs/architecture.md). Each subcommand imports what it needs, so
`taid train` runs on a machine that has only torch (a GPU box) and `taid eval` never starts Ray or
Prefect."""

from __future__ import annotations

import argparse
import sys

from flows.commands import archive, files, models, serve
from flows.commands.base import Command, value_error_line

LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taid", description="Task-Aware Image Downscaling archive tools")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--log-level", dest="log_level", type=str.upper, choices=LEVELS,
                        help="level of the taid loggers on stderr (default: TAID_LOG_LEVEL, else INFO)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Command)
    for group in (models, files, archive, serve):
        group.add(sub)
    for command in sub.choices.values():  # --log-level before or after the subcommand
        command.add_argument("--log-level", dest="log_level", type=str.upper, default=argparse.SUPPRESS,
                             choices=LEVELS, help=argparse.SUPPRESS)
    return parser


def setup(args: argparse.Namespace) -> None:
    """Before any job: local Ray / Prefect without usage stats or telemetry (values already in the
    environment win), and our loggers on stderr at the asked level (libraries at WARNING)."""
    import logging

    from pipeline.runtime import set_local_env_defaults
    from pipeline.settings import LOGGERS, get_settings

    set_local_env_defaults()
    level = args.log_level or get_settings().log_level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(getattr(h, "taid_cli", False) for h in logger.handlers):
            handler.taid_cli = True
            logger.addHandler(handler)
    logging.captureWarnings(True)


def one_line(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for an error a user can act on; None for a bug (its traceback shows).
    UserError (pipeline.errors): its message and code; storage misconfiguration (pipeline.storage.s3.explain):
    what to set, 2; a corrupt Parquet file: 2; disk full, read-only or denied: 1 (a run may have done work)."""
    from pipeline.errors import UserError, os_error_line
    from pipeline.storage import explain

    if isinstance(exc, UserError):
        return str(exc), exc.exit_code
    line = explain(exc)
    if line is not None:
        return line, 2
    import pyarrow as pa

    if isinstance(exc, pa.ArrowInvalid):  # a manifest or index file that is not valid Parquet
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"a manifest or index file is corrupt: {first} (taid --debug shows the traceback)", 2
    line = os_error_line(exc)
    return (line, 1) if line is not None else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup(args)
    try:
        return args.func(args)
    except Exception as exc:
        known = None if args.debug else one_line(exc)
        if known is None:  # --debug, or a bug: the traceback
            raise
        line, code = known
        print(f"taid {args.command}: {line}", file=sys.stderr)
        return code


__all__ = ["build_parser", "main", "one_line", "setup", "value_error_line"]  # value_error_line: tests import it here

if __name__ == "__main__":
    sys.exit(main())
