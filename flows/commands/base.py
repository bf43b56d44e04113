"""How a subcommand's flags reach the library: each subcommand names its target (a pydantic params
model or a library function, as "module:name", imported only when used) and the flags that are
not the target's fields (`cli_only`: read by name in its handler). `values(args)` gives the flags
that are fields; a flag that is neither is a programming error, raised (and caught by
tests/flows/test_cli_flags.py, which walks every subcommand), never a flag dropped silently.
Help shows a field's default from the model itself, so defaults are defined once."""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect

# dests of the top-level parser and of set_defaults: never fields
GLOBAL = frozenset({"help", "debug", "log_level", "command", "func", "target", "cli_only"})


def resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def field_names(target) -> set[str]:
    """The names a target takes: a pydantic model's fields, a function's parameters."""
    fields = getattr(target, "model_fields", None)
    if fields is not None:
        return set(fields)
    return {p.name for p in inspect.signature(target).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def unknown_flags(parser: argparse.ArgumentParser) -> list[str]:
    """The dests of a subcommand's parser that are neither fields of its target nor CLI-only."""
    target, cli_only = parser.get_default("target"), parser.get_default("cli_only") or frozenset()
    dests = {a.dest for a in parser._actions if a.dest not in GLOBAL and a.dest != argparse.SUPPRESS}
    names = field_names(resolve(target)) if target else set()
    return sorted(d for d in dests if d not in names and d not in cli_only)


def values(args: argparse.Namespace) -> dict:
    """The parsed flags that are fields of the subcommand's target, those given (not None)."""
    names = field_names(resolve(args.target))
    unknown = [k for k in vars(args) if k not in GLOBAL and k not in args.cli_only and k not in names]
    if unknown:  # a misspelt dest, or a field renamed: a bug here, not the user's
        raise TypeError(f"taid {args.command}: flags {unknown} are no fields of {args.target} and not CLI-only")
    return {k: v for k, v in vars(args).items() if k in names and k not in args.cli_only and v is not None}


def params(args: argparse.Namespace, **extra):
    """The subcommand's params model built from its flags (and `extra` fields); invalid values
    raise ParamsError, one line (pydantic's errors never echo the input here)."""
    from pydantic import ValidationError

    from pipeline.errors import UserError

    try:
        return resolve(args.target)(**{**values(args), **extra})
    except ValidationError as exc:
        raise UserError(value_error_line(exc)) from None


def value_error_line(exc: ValueError) -> str:
    """A parameter error in one line: pydantic's own text takes three lines per error."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    return "; ".join((f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
                     for e in exc.errors())


FROM_FIELD = "(from the field)"  # help of a flag added without any: its field's description


class FieldHelp(argparse.HelpFormatter):
    """Help whose defaults come from the target model's fields (imported only for --help); a flag
    without help text shows its field's description."""

    target: str | None = None

    def _get_help_string(self, action):
        text = "" if action.help == FROM_FIELD else action.help or ""
        field = self._field(action.dest)
        if field is None:
            return text
        text = text or (field.description or "").replace("%", "%%")
        from pydantic_core import PydanticUndefined

        default = field.default
        if not (default is None or default is PydanticUndefined or isinstance(default, bool) or "default" in text):
            text += f" (default: {default})".replace("%", "%%")
        return text

    def _format_action(self, action):
        if action.help == FROM_FIELD and not self._get_help_string(action):  # nothing to say: no help column
            action = copy.copy(action)
            action.help = None
        return super()._format_action(action)

    def _field(self, dest: str):
        if not self.target or dest in GLOBAL:
            return None
        fields = getattr(resolve(self.target), "model_fields", None) or {}
        return fields.get(dest)


class Command(argparse.ArgumentParser):
    """A subcommand's parser: its help formatter knows its target."""

    def add_argument(self, *args, **kwargs):
        if args and args[0].startswith("-") and kwargs.get("help") is None:
            kwargs["help"] = FROM_FIELD  # argparse formats only flags with help
        return super().add_argument(*args, **kwargs)

    def _get_formatter(self):
        formatter = FieldHelp(prog=self.prog)
        formatter.target = self.get_default("target")
        return formatter


def command(sub, name: str, func, target: str | None, cli_only=(), **kwargs) -> argparse.ArgumentParser:
    """Add subcommand `name`: handler `func`, its flags the fields of `target` but `cli_only`."""
    parser = sub.add_parser(name, **kwargs)
    parser.set_defaults(func=func, target=target, cli_only=frozenset(cli_only))
    return parser
