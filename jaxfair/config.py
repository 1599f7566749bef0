"""Typed configuration: TOML files parsed into frozen dataclasses, with errors that name the offending key.

Every section of a config file maps onto one dataclass; :func:`from_dict` checks that each key exists and that each
value has the field's type, so a typo fails at load time (``ConfigError: afrl.train.epochz: unknown key ...``)
instead of being silently ignored. A field whose type is itself a dataclass is a sub-table (``[afrl.train]``); keys
it leaves out keep the field's *default instance*'s values, so a method's own loop defaults survive a partial table.

Config files compose (:func:`read_toml`): ``extends = "base.toml"`` (relative to the file) merges the file over its
base, table by table (:func:`merge`), and :func:`apply_overrides` applies ``section.key=value`` overrides (the ``--set`` flag of every
command) on top. :func:`fingerprint` names a resolved config by content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import tomllib
import types
import typing
from typing import Any, Mapping


class ConfigError(ValueError):
    """An invalid configuration; the message starts with the dotted key at fault."""


def _check_value(value: Any, annotation: Any, where: str, default: Any = dataclasses.MISSING) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _check_value(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a valid {annotation}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected nothing, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        if dataclasses.is_dataclass(value) and isinstance(value, annotation):
            return value
        return from_dict(annotation, value, where, base=None if default is dataclasses.MISSING else default)
    raise ConfigError(f"{where}: unsupported type {annotation}")


def from_dict(cls, values: Mapping[str, Any] | None, where: str = "", base=None):
    """Build dataclass ``cls`` from ``values``, validating every key and type.

    Args:
      cls: a dataclass whose fields all have defaults or are given in ``values``.
      values: the parsed mapping (e.g. one TOML table); None means all defaults.
      where: dotted prefix used in error messages (e.g. ``"backbone"``).
      base: an instance of ``cls`` whose values stand for the keys ``values`` leaves out (default: the class
        defaults).

    Raises:
      ConfigError: unknown key, missing required key, wrong type, or a check in ``cls.__post_init__`` failed.
    """
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in values:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}{key}: unknown key (known keys: {known})")
    kwargs = {}
    for name, field in fields.items():
        default = _default_of(field) if base is None else getattr(base, name)
        if name in values:
            kwargs[name] = _check_value(values[name], hints[name], f"{prefix}{name}", default)
        elif base is not None:
            kwargs[name] = default
        elif default is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where or 'config'}: {err}") from err


def _default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def check_fields(config, *, at_least_one=(), non_negative=(), choices=None) -> None:
    """The checks a config's ``__post_init__`` runs on its fields, raising ValueError naming the first bad one (it
    reaches the user as a ConfigError under the section's name).

    Args:
      at_least_one: integer fields that must be ``>= 1``; non_negative: number fields that must be ``>= 0``;
      choices: field name -> the values it may take.
    """
    for name, allowed in (choices or {}).items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(config, name)!r}")
    for name in at_least_one:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}")
    for name in non_negative:
        if not getattr(config, name) >= 0:
            raise ValueError(f"{name} must be non-negative, got {getattr(config, name)}")


def to_dict(config) -> dict:
    """A dataclass config as plain JSON-serialisable values (nested dataclasses become tables)."""
    return dataclasses.asdict(config)


def merge(base: Mapping, override: Mapping) -> dict:
    """``override`` over ``base``: tables merge key by key (recursively), any other value replaces. A table whose
    ``name`` differs from its base table's (``[backbone] name = "lightgcn"`` over a PMF base) names another thing:
    it keeps its base's sub-tables (the loop ``[backbone.train]``) but none of the other thing's options."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            previous = out[key]
            if value.get("name", previous.get("name")) != previous.get("name"):
                previous = {k: v for k, v in previous.items() if isinstance(v, Mapping)}
            out[key] = merge(previous, value)
        else:
            out[key] = value
    return out


def read_toml(path: str | pathlib.Path, _seen: tuple[pathlib.Path, ...] = ()) -> dict:
    """Read a TOML config, resolving ``extends = "base.toml"`` (relative to the file; chains allowed) by
    :func:`merge`. The returned mapping has no ``extends`` key.

    Raises:
      ConfigError: a missing file, bad TOML, a base that is not a string, or a cycle of ``extends``.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p.name) for p in (*_seen, resolved))
        raise ConfigError(f"{path}: extends forms a cycle ({chain})")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err
    base_name = values.pop("extends", None)
    if base_name is None:
        return values
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}: extends: expected a file name, got {base_name!r}")
    base = read_toml(path.parent / base_name, (*_seen, resolved))
    return merge(base, values)


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax (``3``, ``1e-3``, ``true``, ``"x"``, ``[1, 2]``, ``{a = 1}``); anything that
    does not parse as TOML is taken as a bare string (``--set afrl.adversary=confusion``)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(values: Mapping, overrides: Mapping[str, Any] | list[str] | tuple[str, ...]) -> dict:
    """Set dotted keys in a config mapping: ``{"afrl.lam": 1.0}`` or ``["afrl.lam=1.0", ...]`` (values of the
    string form are parsed by :func:`parse_value`). A dotted key creates the tables on its path; a table value
    replaces the table it names.

    Raises:
      ConfigError: an override without ``=`` or with an empty key, or a key whose path runs through a non-table.
    """
    if not isinstance(overrides, Mapping):
        pairs = {}
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set {item!r}: expected section.key=value")
            pairs[key.strip()] = parse_value(text.strip())
        overrides = pairs
    out = json.loads(json.dumps(values))  # a deep copy of plain data
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if not all(parts):
            raise ConfigError(f"{dotted}: empty part in a dotted key")
        table = out
        for i, part in enumerate(parts[:-1]):
            node = table.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {'.'.join(parts[: i + 1])} is not a table")
            table = node
        table[parts[-1]] = value
    return out


def fingerprint(values: Any) -> str:
    """A short content hash of plain config data (key order does not matter)."""
    text = json.dumps(values, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(table: dict, prefix: str = "") -> dict:
    """Nested tables to dotted keys: ``{"afrl": {"lam": 1}}`` -> ``{"afrl.lam": 1}``."""
    out = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
