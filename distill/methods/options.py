"""One description of a method's options, read from its config dataclass, for the CLI and the app.

`fields(config_class)` turns each dataclass field (type, default, help metadata) into an
`OptionSpec`; `cli_command` makes `nesy train METHOD` from those specs, `to_argv` writes a config
back as the arguments of that command (the app's command preview and the job it starts), and
`from_options` builds a config from given values with the preset applied. Nothing here knows any
particular option: add a field to a config and it appears in `--help`, the Train page and the argv.

Named configs: `save_config(name, method, cfg)` writes $NESY_HOME/configs/<name>.yaml (`method:`
plus the options that differ from the preset's defaults, the same ones `to_argv` writes);
`nesy train METHOD --config FILE.yaml` (or a saved name) reads it, options given on the command
line win; the Train page saves and loads the same files.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer

LIST_SEPARATOR = ","


@dataclass(frozen=True)
class OptionSpec:
    name: str  # the field name
    flag: str  # --field-name
    kind: str  # bool | int | float | str | choice | list
    help: str
    default: Any  # the dataclass default (None: filled by the preset or unset)
    optional: bool  # None is allowed
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
    return OptionSpec(
        f.name,
        "--" + f.name.replace("_", "-"),
        kind,
        f.metadata.get("help", ""),
        default,
        optional,
        choices,
        bool(f.metadata.get("required")),
        f.metadata.get("widget"),
    )


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
        ref = values.pop(CONFIG_OPTION)
        given = {k: v for k, v in values.items() if v is not None and v is not False}
        run(from_options(method.config, {**(load_config(ref, method.name) if ref else {}), **given}))

    params = [
        inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=_typer_option(s), annotation=_annotation(s))
        for s in specs
    ]
    params.append(
        inspect.Parameter(
            CONFIG_OPTION,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=str | None,
            default=typer.Option(None, "--config", metavar="FILE.yaml", help=CONFIG_HELP),
        )
    )
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
        return Literal[spec.choices] | None  # type: ignore[valid-type]
    return {"int": int, "float": float}.get(spec.kind, str) | None


def _typer_option(spec: OptionSpec):
    shown = _shown_default(spec)
    text = spec.help + (f"  [default: {shown}]" if shown else "")
    if spec.kind == "list" and spec.choices:
        text += f"  (comma list of {', '.join(spec.choices)})"
    if spec.kind == "bool":
        return typer.Option(False, spec.flag, help=text)
    if spec.required:  # it may come from --config; the config's own check names it when missing
        text += "  [required, here or in --config]"
    return typer.Option(None, spec.flag, help=text)


def _shown_default(spec: OptionSpec) -> str:
    if spec.required or spec.default is None or spec.default == "":
        return ""
    return LIST_SEPARATOR.join(spec.default) if spec.kind == "list" else str(spec.default)


def check_list(name: str, values, allowed) -> None:
    """A list option's values are all allowed (raises the config's domain error otherwise)."""
    from distill.train import ConfigError

    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ConfigError(
            f"--{name.replace('_', '-')} takes a comma list of {', '.join(allowed)}"
            + (f"; not {', '.join(bad)}" if bad else "")
        )


# --- named configs (YAML) -------------------------------------------------------------------------

CONFIG_OPTION = "config"
CONFIG_AREA = "configs"
CONFIG_HELP = (
    "a YAML config (a file, or a name saved by the Train page: $NESY_HOME/configs/<name>.yaml) "
    "with `method:` and option values; options given here win"
)


def config_values(cfg) -> dict:
    """The options of a config worth writing down: data, output, preset and every option that
    differs from its preset default (what `to_argv` writes), lists as lists."""
    baseline = type(cfg)(data=cfg.data, output=cfg.output, preset=cfg.preset)
    out = {}
    for spec in fields(type(cfg)):
        value = getattr(cfg, spec.name)
        if spec.required or spec.name == "preset" or value != getattr(baseline, spec.name):
            out[spec.name] = list(value) if spec.kind == "list" and value is not None else value
    return out


def config_path(name: str) -> Path:
    """$NESY_HOME/configs/<name>.yaml for a validated name (InvalidName otherwise)."""
    from kb.workspace import check_name, named_path

    check_name(name, "config name")
    return named_path(CONFIG_AREA, f"{name}.yaml", "config name")


def list_configs() -> list[str]:
    from kb.workspace import subdir

    return sorted(p.name.removesuffix(".yaml") for p in subdir(CONFIG_AREA).glob("*.yaml") if not p.is_symlink())


def save_config(name: str, method_name: str, cfg) -> Path:
    """Write a method's config as $NESY_HOME/configs/<name>.yaml (replacing one of that name)."""
    import yaml

    path = config_path(name)
    text = yaml.safe_dump({"method": method_name, **config_values(cfg)}, sort_keys=False, allow_unicode=True)
    path.write_text(f"# nesy train {method_name} --config {path}\n" + text, encoding="utf-8")
    return path


def load_config(ref: str, method_name: str | None = None) -> dict:
    """Option values from a YAML config: a saved name, or (on the CLI) a file path. Checked against
    the method's fields; `method:` must match the command's method. Raises ConfigError."""
    return read_config(ref, method_name)[1]


def read_config(ref: str, method_name: str | None = None) -> tuple[str, dict]:
    """(method, option values) of a YAML config (see load_config)."""
    import yaml

    from distill.methods import get
    from distill.train import ConfigError

    path = Path(ref) if ("/" in ref or ref.endswith((".yaml", ".yml"))) else config_path(ref)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: no config {ref!r} ({path} does not exist)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"--config {path}: not readable YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected `method:` and option names with values")
    values = dict(raw)
    method = values.pop("method", None) or method_name
    if method is None:
        raise ConfigError(f"--config {path}: no `method:`")
    if method_name and method != method_name:
        raise ConfigError(
            f"--config {path} is a {method} config, not {method_name}: use `nesy train {method} --config {path}`"
        )
    specs = {s.name: s for s in fields(get(method).config)}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ConfigError(
            f"--config {path}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for {method}"
        )
    return method, {
        k: LIST_SEPARATOR.join(map(str, v)) if specs[k].kind == "list" and isinstance(v, list) else v
        for k, v in values.items()
        if v is not None
    }
