"""One description of a method's options, read from its config dataclass, for the CLI and the app.

`fields(config_class)` turns each dataclass field (type, default, help metadata) into an
`OptionSpec`; `cli_command` makes `nesy train METHOD` from those specs, `to_argv` writes a config
back as the arguments of that command (the app's command preview and the job it starts), and
`from_options` builds a config from given values with the preset applied. Nothing here knows any
particular option: add a field to a config and it appears in `--help`, the Train page and the argv.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Optional

import typer

LIST_SEPARATOR = ","


@dataclass(frozen=True)
class OptionSpec:
    name: str                 # the field name
    flag: str                 # --field-name
    kind: str                 # bool | int | float | str | choice | list
    help: str
    default: Any              # the dataclass default (None: filled by the preset or unset)
    optional: bool            # None is allowed
    choices: tuple[str, ...] = ()
    required: bool = False
    widget: str | None = None  # app hint: rationale_set | name | hf_model


def fields(config_class) -> list[OptionSpec]:
    """The options of a config class, in field order (shared options first)."""
    hints = typing.get_type_hints(config_class)
    return [_spec(f, hints[f.name]) for f in dataclasses.fields(config_class) if f.init]


def _spec(f: dataclasses.Field, hint) -> OptionSpec:
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    kind, choices = _kind(hint)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return OptionSpec(f.name, "--" + f.name.replace("_", "-"), kind, f.metadata.get("help", ""), default,
                      optional, choices, bool(f.metadata.get("required")), f.metadata.get("widget"))


def _kind(hint) -> tuple[str, tuple[str, ...]]:
    if typing.get_origin(hint) is Literal:
        return "choice", tuple(typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return "list", tuple(typing.get_args(item)) if typing.get_origin(item) is Literal else ()
    return {bool: "bool", int: "int", float: "float", str: "str"}[hint], ()


def parse_value(spec: OptionSpec, value):
    """A CLI/form value as the config field wants it (lists arrive as 'a,b,c')."""
    if value is None or value == "":
        return None if spec.optional or spec.kind != "str" else ""
    if spec.kind == "list":
        items = value.split(LIST_SEPARATOR) if isinstance(value, str) else value
        return tuple(v.strip() for v in items if v.strip())
    return value


def from_options(config_class, given: dict):
    """A config from the values given (the rest: the preset's, then the dataclass defaults)."""
    specs = {s.name: s for s in fields(config_class)}
    return config_class(**{k: parse_value(specs[k], v) for k, v in given.items() if k in specs})


def to_argv(method_name: str, cfg) -> list[str]:
    """`train METHOD --data … --output …` plus every option that differs from its preset default."""
    baseline = type(cfg)(data=cfg.data, output=cfg.output, preset=cfg.preset)
    argv = ["train", method_name]
    for spec in fields(type(cfg)):
        value = getattr(cfg, spec.name)
        if not spec.required and value == getattr(baseline, spec.name) and spec.name != "preset":
            continue
        if spec.name == "preset" and value == "cpu":
            continue
        if spec.kind == "bool":
            argv += [spec.flag] if value else []
        elif value is not None:
            argv += [spec.flag, LIST_SEPARATOR.join(value) if spec.kind == "list" else str(value)]
    return argv


def cli_command(method, run):
    """`nesy train <method>`: one option per config field; `run(config)` does the work.

    Typer reads a command's options from its function signature, so the signature is made from
    the config's fields (a list option is typed as a comma-separated string)."""
    specs = fields(method.config)

    def command(**values):
        given = {k: v for k, v in values.items() if v is not None and v is not False}
        run(from_options(method.config, given))

    params = [inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=_typer_option(s),
                                annotation=_annotation(s)) for s in specs]
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = method.summary
    app = typer.Typer(add_completion=False, rich_markup_mode=None)
    app.command(method.name, help=method.summary)(command)
    return typer.main.get_command(app)


def _annotation(spec: OptionSpec):
    if spec.kind == "bool":
        return bool
    if spec.kind == "choice":
        return Optional[Literal[spec.choices]]  # type: ignore[valid-type]
    return Optional[{"int": int, "float": float}.get(spec.kind, str)]


def _typer_option(spec: OptionSpec):
    shown = _shown_default(spec)
    text = spec.help + (f"  [default: {shown}]" if shown else "")
    if spec.kind == "list" and spec.choices:
        text += f"  (comma list of {', '.join(spec.choices)})"
    if spec.kind == "bool":
        return typer.Option(False, spec.flag, help=text)
    return typer.Option(... if spec.required else None, spec.flag, help=text)


def _shown_default(spec: OptionSpec) -> str:
    if spec.required or spec.default is None or spec.default == "":
        return ""
    return LIST_SEPARATOR.join(spec.default) if spec.kind == "list" else str(spec.default)


def check_list(name: str, values, allowed) -> None:
    """A list option's values are all allowed (raises the config's domain error otherwise)."""
    from distill.train import ConfigError

    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ConfigError(f"--{name.replace('_', '-')} takes a comma list of {', '.join(allowed)}"
                          + (f"; not {', '.join(bad)}" if bad else ""))
