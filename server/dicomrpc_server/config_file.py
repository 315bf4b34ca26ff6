"""The ``serve`` config file: a TOML file whose keys are the settings' names.

A key is an option's name in :data:`~dicomrpc_server.config.OPTIONS` (``grpc_port``,
``shutdown_grace_s``), the same table that gives its flag and variable, so that no option is
settable one way and not another. Values have TOML's types: strings, integers, floats,
booleans and, for list options, arrays of strings; an empty string sets an optional path to
none (TOML has no null). Relative paths are relative to the working directory, as those of
flags and variables are. Anything else (an unknown key, a table, a value of the wrong type)
is refused with the file and the key named, so that a typo fails at start-up instead of
silently leaving a default in place.
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from pathlib import Path

from dicomrpc_server.config import OPTIONS, Option, Settings

# What a file's value is called in an error, by the Python type its setting takes.
_TYPE_NAMES: dict[object, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean (true or false)",
    Path: "a path (a string)",
}


def read_config_file(path: Path) -> dict[str, object]:
    """The settings a config file sets, each checked and made its setting's type.

    Raises
    ------
    ValueError
        Naming the file, and the key and the value when one is unknown or cannot be used;
        or the file when it cannot be read or is not TOML.
    """
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ValueError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not TOML: {exc}") from None
    options = {option.name: option for option in OPTIONS}
    hints = typing.get_type_hints(Settings)
    values: dict[str, object] = {}
    for key, value in document.items():
        option = options.get(key)
        if option is None:
            raise ValueError(f"config file {path}: unknown setting {key!r}{_suggest(key, options)}")
        try:
            values[key] = convert(option, hints[key], value)
        except ValueError as exc:
            raise ValueError(f"config file {path}: {key}: {exc}") from None
    return values


def convert(option: Option, kind: object, value: object) -> object:
    """``value`` of a TOML file as setting ``option`` (annotated ``kind``) takes it.

    Numbers and strings then go through the option's own parser (that of its variable), so
    that a range or a format is checked as for the variable.

    Raises
    ------
    ValueError
        Saying what type was expected and quoting the value.
    """
    optional = False
    if isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind):
        optional = True
        (kind,) = (arg for arg in typing.get_args(kind) if arg is not type(None))
    if typing.get_origin(kind) is tuple:
        assert option.item is not None, f"list setting {option.name} names no item parser"
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected an array of strings, got {_shown(value)}")
        return tuple(option.item(v) for v in value if v.strip())
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected {_TYPE_NAMES[bool]}, got {_shown(value)}")
        return value
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected {_TYPE_NAMES[int]}, got {_shown(value)}")
        return option.parse(str(value))
    if kind is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"expected {_TYPE_NAMES[float]}, got {_shown(value)}")
        return option.parse(str(value))
    if kind in (str, Path):
        if not isinstance(value, str):
            raise ValueError(f"expected {_TYPE_NAMES[kind]}, got {_shown(value)}")
        if optional and not value:
            return None
        return option.parse(value)
    raise AssertionError(f"setting {option.name} has a type the config file cannot give: {kind}")


def _shown(value: object) -> str:
    """A value as the file wrote it and what TOML made of it, for an error message."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    kind = kinds.get(type(value), "an array" if isinstance(value, list) else "a table")
    return f"{value!r} ({kind})"


def _suggest(key: str, options: dict[str, Option]) -> str:
    """What a mistyped key may have meant: the names of the flag or variable given, or near."""
    for option in options.values():
        if key in (option.flag, (option.flag or "")[2:], option.variable):
            return f" (did you mean {option.name!r}? keys are the settings' names)"
    near = difflib.get_close_matches(key.replace("-", "_").lower(), list(options), n=1)
    return f" (did you mean {near[0]!r}?)" if near else " (see docs/dicomrpc.example.toml)"
