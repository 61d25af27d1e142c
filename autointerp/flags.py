"""Command-line flags built from the config dataclasses' fields (config.py), and configs built back
from parsed flags: a setting's default and help text are written once, on its field.

Every flag parses to None unless given, so that a config file (--config) and the dataclass
default can fill what the command line leaves open, in that order. Standard library only: the
CLI and `serve` import this before anything heavy.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, fields
from typing import Any


def _flag_name(f: Field) -> str:
    return (f.metadata.get("flag") or f.name).replace("_", "-")


def _options(f: Field) -> tuple[str, ...]:
    """--long-name; a one-letter name is also -n."""
    name = _flag_name(f)
    return (f"-{name}", f"--{name}") if len(name) == 1 else (f"--{name}",)


def dest_of(f: Field) -> str:
    return _flag_name(f).replace("-", "_")


def _default(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def _parser_of(f: Field):
    """The callable turning the flag's text into the field's value."""
    if f.metadata.get("parse"):
        return _usage_errors(f.metadata["parse"])
    kind = str(f.type).split("|")[0].strip()
    return {"int": int, "float": float}.get(kind, str)


def _usage_errors(parse):
    """argparse shows an ArgumentTypeError's text as the usage error; a ValueError would lose it."""

    def run(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    run.__name__ = getattr(parse, "__name__", "value")
    return run


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, str) and " " in value else str(value)


def settings_of(cls: type, names: tuple[str, ...] | None = None) -> list[Field]:
    """The fields of cls that are flags (made with config.setting), optionally only these names."""
    chosen = [f for f in fields(cls) if "help" in f.metadata]
    if names is not None:
        unknown = set(names) - {f.name for f in chosen}
        assert not unknown, f"{cls.__name__} has no settings {unknown}"
        chosen = [f for f in chosen if f.name in names]
    return chosen


class Command:
    """One subcommand's parser and the flags it takes (dest → allowed values, None for any), which
    a --config file is checked against."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.flags: dict[str, tuple | None] = {}

    def add(self, *names: str, group=None, **kwargs: Any) -> None:
        """A flag that is not a config field (a command's own argument, such as show's feature)."""
        action = (group or self.parser).add_argument(*names, **kwargs)
        self.flags[action.dest] = action.choices

    def settings(
        self, cls: type, names: tuple[str, ...] | None = None, *, group=None, required: tuple[str, ...] = ()
    ) -> None:
        """Add cls's settings (or the named ones) as flags. A flag the command has already (two
        configs reading one flag, such as --seed) is added once; both configs read it."""
        for f in settings_of(cls, names):
            dest = dest_of(f)
            if dest in self.flags:
                continue
            default = _default(f)
            help_text = f.metadata["help"]
            if default not in (None, "", False) and "unset:" not in help_text:
                help_text += f" (default: {_shown(default)})"
            choices = f.metadata.get("choices")
            choices = tuple(choices()) if callable(choices) else choices
            kwargs: dict[str, Any] = {"dest": dest, "default": None, "help": help_text}
            if str(f.type).startswith("bool"):
                kwargs["action"] = "store_true"
            else:
                kwargs.update(type=_parser_of(f), choices=choices, metavar=f.metadata.get("metavar"))
            if f.name in required:
                kwargs["required"] = True
            self.add(*_options(f), group=group, **kwargs)


def given(cls: type, args: argparse.Namespace, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The settings of cls that the command line (or a --config file) gave, by field name."""
    out = {}
    for f in settings_of(cls, names):
        value = getattr(args, dest_of(f), None)
        if value is not None and value is not False:
            out[f.name] = value
    return out


def build(cls: type, args: argparse.Namespace, names: tuple[str, ...] | None = None, **fixed: Any):
    """cls from the given flags, the rest from its defaults."""
    return cls(**given(cls, args, names), **fixed)
