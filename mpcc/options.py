"""Command options declared once, as dataclass fields; parsers, `--help` and `--config` files come from them.

A field is an option when it carries help text (`option(...)`); other fields are internal. Its flag is
`--field-name` (or `flag=`), its type comes from the annotation: str, int, float, Path, bool (`--x`,
`--x false`, and `--no-x` when the default is true), a comma-separated `tuple[str, ...]`, or any type
with `parse=`. A field whose type is a dataclass adds that dataclass's options (an argument group).

`--config FILE.yaml` sets options from a file with the strictness of recipes: every key must be an
option (named as its flag, with underscores), every value goes through the same conversion as the flag
would; flags on the command line override the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mpcc.errors import ConfigError, MpccError
from mpcc.inputs import read_yaml

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    flag: str | None = None,
    positional: bool = False,
    metavar: str | None = None,
    default_factory: Callable[[], Any] | Any = _MISSING,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
) -> Any:
    """A dataclass field that is a command-line option (see the module docstring). A number may be bound:
    `minimum` / `maximum` inclusive, `above` exclusive; values out of bounds stop the command at parse
    time with the option's name (None, for an optional number, is always allowed)."""
    metadata = {"help": help, "choices": choices, "parse": parse, "flag": flag, "positional": positional}
    metadata |= {"metavar": metavar, "bounds": (minimum, maximum, above)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "t", "y", "1"), ("false", "no", "f", "n", "0")


def to_bool(text: str) -> bool:
    """The words recipes take for true and false (transformers' `string_to_bool`, which TRL's parser
    uses), so an `mpcc` option and a recipe key read `yes` alike; not imported from it, to keep the CLI
    light."""
    value = str(text).strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(f"expected one of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}, got {text!r}")


def comma_list(text: str) -> tuple[str, ...]:
    """`a, b,c` -> ('a', 'b', 'c'); a YAML list arrives joined by commas."""
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


def _optional(annotation) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (annotation, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


@dataclasses.dataclass(frozen=True)
class _Option:
    owner: type
    field: dataclasses.Field
    annotation: Any

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def key(self) -> str:
        """Its name in a config file: the flag with underscores."""
        return (self.field.metadata.get("flag") or self.name).replace("-", "_")

    @property
    def dest(self) -> str:
        return f"{self.owner.__qualname__}.{self.name}"

    @property
    def convert(self) -> Callable[[str], Any]:
        meta = self.field.metadata
        if meta.get("parse"):
            return meta["parse"]
        kind, _ = _optional(self.annotation)
        if kind is bool:
            return to_bool
        if typing.get_origin(kind) is tuple:
            return comma_list
        return kind if kind in (str, int, float, Path) else str

    @property
    def default(self) -> Any:
        f = self.field
        if f.default is not _MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not _MISSING else _MISSING


def options_of(cls: type) -> list[_Option]:
    """Every option of `cls`, nested dataclasses' included."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, _ = _optional(hints[f.name])
        if dataclasses.is_dataclass(kind):
            out += options_of(kind)
        elif f.metadata.get("help"):
            out.append(_Option(cls, f, hints[f.name]))
    return out


def _help(opt: _Option) -> str:
    text, default = opt.field.metadata["help"], opt.default
    # identity for False/None: `0 in (False,)` is true, and a default of 0 is worth showing
    hidden = default is _MISSING or default is None or default is False or default in ("", ())
    if hidden or opt.field.metadata.get("positional"):
        return text.replace("%", "%%")
    shown = ",".join(default) if isinstance(default, tuple) else default
    return f"{text} (default: {shown})".replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, *classes: type) -> None:
    """Add the options of `classes` to `parser`, and `--config`; a dataclass with an `options_group` title
    gets an argument group.
    Options not given on the command line stay out of the parsed namespace, so a file can set them."""
    _keyed(classes)  # refuses two options of one name
    groups: dict[str, Any] = {}
    for cls in classes:
        for opt in options_of(cls):
            meta = opt.field.metadata
            title = getattr(opt.owner, "options_group", None)
            target = parser if title is None else groups.setdefault(title, parser.add_argument_group(title))
            metavar = meta.get("metavar") or (None if meta.get("choices") else opt.key.upper())
            kwargs: dict[str, Any] = {"help": _help(opt), "dest": opt.dest, "metavar": metavar}
            kwargs["default"] = argparse.SUPPRESS
            if meta.get("choices"):
                kwargs["choices"] = list(meta["choices"])
            if meta.get("positional"):
                kind, _ = _optional(opt.annotation)
                many = typing.get_origin(kind) in (list, tuple) and not meta.get("parse")
                kwargs.pop("dest")
                nargs = ("*" if opt.default is not _MISSING else "+") if many else None
                target.add_argument(opt.dest, nargs=nargs, type=_element(opt), **kwargs)
                continue
            names = [f"--{(meta.get('flag') or opt.name).replace('_', '-')}"]
            if opt.convert is to_bool:
                kwargs["metavar"] = "true|false"
                target.add_argument(*names, nargs="?", const=True, type=to_bool, **kwargs)
                if opt.default is True:
                    no = f"--no-{names[0][2:]}"
                    no_help = f"same as {names[0]} false"
                    target.add_argument(
                        no, dest=opt.dest, action="store_false", default=argparse.SUPPRESS, help=no_help
                    )
            else:
                # builtin types are checked by argparse; a `parse=` function's own message (ConfigError)
                # is kept by converting in parse_options: argparse would replace it with its own
                target.add_argument(*names, type=opt.convert if _builtin(opt) else str, **kwargs)
    parser.add_argument(
        "--config", type=Path, metavar="FILE.yaml", help="options from a YAML file (flags override it)"
    )


def _builtin(opt: _Option) -> bool:
    return opt.convert in (str, int, float, Path, to_bool)


def _element(opt: _Option) -> Callable[[str], Any]:
    kind, _ = _optional(opt.annotation)
    if typing.get_origin(kind) in (list, tuple) and not opt.field.metadata.get("parse"):
        return typing.get_args(kind)[0]
    return opt.convert


def _convert(opt: _Option, text: str) -> Any:
    """A `parse=` function's value; its own ConfigError names the input, other errors get the flag's name."""
    try:
        return opt.convert(text)
    except MpccError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--{opt.key.replace('_', '-')} {text!r}: {e}") from e


def _from_file(path: Path, options: dict[str, _Option]) -> dict[str, Any]:
    """Values from a YAML config file, converted as their flags would be; errors name the key."""
    try:
        data = read_yaml(path) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping of option: value")
    values = {}
    for key, value in data.items():
        opt = options.get(str(key))
        if opt is None:
            raise ConfigError(f"{path}: unknown option {key!r} (known: {', '.join(sorted(options))})")
        if value is None:
            values[opt.dest] = None
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        try:
            values[opt.dest] = opt.convert(text)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: option {key!r}: invalid value {value!r} ({e})") from e
        choices = opt.field.metadata.get("choices")
        if choices and values[opt.dest] not in choices:
            raise ConfigError(
                f"{path}: option {key!r}: invalid value {value!r} (choose from {', '.join(choices)})"
            )
    return values


def _keyed(classes: Sequence[type]) -> dict[str, _Option]:
    options: dict[str, _Option] = {}
    for opt in (o for c in classes for o in options_of(c)):
        if options.setdefault(opt.key, opt) is not opt:
            raise TypeError(f"two options named {opt.key!r}: {options[opt.key].dest} and {opt.dest}")
    return options


def parse_options(args: argparse.Namespace, *classes: type) -> list[Any]:
    """Instances of `classes` from parsed `args`: flags, else the `--config` file, else the defaults."""
    options = _keyed(classes)
    given = {}
    for opt in options.values():
        if hasattr(args, opt.dest):
            value = getattr(args, opt.dest)
            given[opt.dest] = value if _builtin(opt) or not isinstance(value, str) else _convert(opt, value)
    in_files = {k: o for k, o in options.items() if not o.field.metadata.get("positional")}
    values = (_from_file(args.config, in_files) if args.config else {}) | given
    return [_build(cls, values) for cls in classes]


def check_bounds(opt: _Option, value: Any) -> None:
    """A ConfigError naming the option when `value` is out of its declared bounds."""
    minimum, maximum, above = opt.field.metadata.get("bounds", (None, None, None))
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    flag = f"--{opt.key.replace('_', '-')}"
    if minimum is not None and value < minimum:
        raise ConfigError(f"{flag} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{flag} must be <= {maximum}, got {value}")
    if above is not None and value <= above:
        raise ConfigError(f"{flag} must be > {above}, got {value}")


def validate_bounds(instance: Any) -> None:
    """Check an instance's own numbers against their options' bounds (for dataclasses also built in
    Python, from their __post_init__)."""
    for opt in options_of(type(instance)):
        if opt.owner is type(instance):
            check_bounds(opt, getattr(instance, opt.name))


def _build(cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        kind, _ = _optional(hints[f.name])
        if dataclasses.is_dataclass(kind):
            kwargs[f.name] = _build(kind, values)
        elif f"{cls.__qualname__}.{f.name}" in values:
            kwargs[f.name] = values[f"{cls.__qualname__}.{f.name}"]
    for opt in options_of(cls):
        if opt.owner is cls and opt.default is _MISSING and opt.name not in kwargs:
            raise ConfigError(f"missing option --{opt.key.replace('_', '-')} (or {opt.key!r} in --config)")
        if opt.owner is cls and opt.name in kwargs:
            check_bounds(opt, kwargs[opt.name])
    return cls(**kwargs)
