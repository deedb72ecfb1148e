"""Typed configuration: defaults < preset YAML < --config file < --set a.b=c overrides."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from e2urec.errors import E2URecError


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """Turn ["a.b=3", "c=true"] into a nested dict, values parsed as YAML scalars."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise E2URecError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise E2URecError(f"--set {key}: {part!r} is both a value and a section")
        node[parts[-1]] = value
    return result


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or one clear error."""
    path = Path(path)
    if not path.is_file():
        raise E2URecError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise E2URecError(f"config file is not valid YAML: {path} ({exc})") from None
    if not isinstance(data, dict):
        raise E2URecError(f"config file must hold a mapping: {path}")
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `override` wins."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from `values`; unknown keys or wrong types give a clear error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise E2URecError(
            f"unknown {where} parameter(s): {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, fields[name], where)
    return cls(**kwargs)


def _coerce(value: Any, field: dataclasses.Field, where: str) -> Any:
    """Coerce YAML-parsed values to the field's default type (int→float, str→list for lists)."""
    default = field.default if field.default is not dataclasses.MISSING else None
    if default is None and field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = field.default_factory()  # type: ignore[misc]
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    elif isinstance(default, float) and isinstance(value, str) and _is_float(value):
        return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, str) and isinstance(value, (str, int, float)):
        return str(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
    elif isinstance(default, dict) and isinstance(value, dict):
        return value
    raise E2URecError(
        f"{where} parameter {field.name!r} expects {type(default).__name__}, got {value!r}"
    )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


RANGES = {  # rule name → (test, what the value must be)
    "positive": (lambda v: v > 0, "positive"),
    "non-negative": (lambda v: v >= 0, "at least 0"),
    "count": (lambda v: v >= 1 and float(v).is_integer(), "an integer of at least 1"),
    "unit": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "share": (lambda v: 0 < v < 1, "in (0, 1)"),
}


def check_ranges(values: Any, rules: dict[str, str], where: str = "") -> None:
    """One clear error for the first value out of its range. `values` is a mapping or an object
    with attributes; `rules` maps a name to a rule of RANGES; None values are not checked.
    The error reads "{where}{name} must be ..., got ..."."""
    for name, rule in rules.items():
        value = values.get(name) if isinstance(values, dict) else getattr(values, name)
        if value is None:
            continue
        test, wanted = RANGES[rule]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not test(value):
            raise E2URecError(f"{where}{name} must be {wanted}, got {value!r}")


# ---------------------------------------------------------------- declared settings
# A setting is a dataclass field declared once with `setting(...)`: its annotation carries the
# type (and `Literal[...]` the choices), its metadata the help text, the range rule of RANGES
# and, for the command line, an optional value parser and metavar. `check_settings` validates
# any settings object from these declarations, `add_settings` derives argparse options from
# them and `describe_settings` lists them (`e2urec list methods`, the docs).


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    rule: str | None = None,
    parse: Any = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field with its help text, range `rule` (a key of RANGES), and for the
    command line a value parser `parse` (str -> value, e.g. 'all' -> None) and `metavar`.
    No default: the setting is required (a required option on the command line)."""
    if rule is not None and rule not in RANGES:
        raise ValueError(f"unknown range rule {rule!r}")
    meta = {"help": help, "rule": rule, "parse": parse, "metavar": metavar}
    return dataclasses.field(default=default, metadata={k: v for k, v in meta.items() if v})


def override(cls: type, name: str, default: Any, help: str | None = None) -> Any:
    """Setting `name` of settings class `cls` with another default (its help and rule kept;
    `help` replaces the help when the default changes its meaning, e.g. None = "by family")."""
    meta = dict({f.name: f for f in dataclasses.fields(cls)}[name].metadata)
    if help is not None:
        meta["help"] = help
    return dataclasses.field(default=default, metadata=meta)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of `cls` (Any where one cannot be resolved, e.g. a name
    imported only for type checking: such a field is then no choice and parsed as text)."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {f.name: Any for f in dataclasses.fields(cls)}


def _unwrap(hint: Any) -> tuple[Any, tuple, bool]:
    """(the base type, its Literal choices or (), whether None is allowed) of an annotation."""
    args = typing.get_args(hint)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else Any
        args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return type(args[0]), args, optional
    return hint, (), optional


def check_settings(obj: Any, where: str = "", cls: type | None = None) -> None:
    """One clear error for the first setting of `obj` (the fields of `cls`, default its own
    class) outside its `Literal` choices or its range rule: "{where}{name} must be ..., got ..."."""
    cls = cls or type(obj)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        _, choices, optional = _unwrap(_hints(cls)[f.name])
        if choices and value not in choices and not (optional and value is None):
            wanted = ", ".join(map(str, choices))
            raise E2URecError(f"{where}{f.name} must be one of {wanted}, got {value!r}")
        if f.metadata.get("rule"):
            check_ranges(obj, {f.name: f.metadata["rule"]}, where)


def settings_of(cls: type, source: Any) -> dict[str, Any]:
    """The values of `cls`'s settings found in `source` (a mapping, an object with attributes
    or an argparse namespace); settings it lacks are left out (their defaults apply)."""
    names = [f.name for f in dataclasses.fields(cls)]
    if isinstance(source, dict):
        return {name: source[name] for name in names if name in source}
    return {name: getattr(source, name) for name in names if hasattr(source, name)}


def _default(f: dataclasses.Field) -> Any:
    """A field's default (from its factory if it has one), or MISSING when it is required."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_settings(
    parser: Any,
    cls: type,
    include: typing.Iterable[str] | None = None,
    exclude: typing.Iterable[str] = (),
) -> None:
    """Add the settings of dataclass `cls` to an argparse parser (or group) as `--kebab-case`
    options: type and choices from the annotation, the field's default (none: required),
    help from the declaration with the default shown. `include` / `exclude`: field names."""
    keep = None if include is None else set(include)
    for f in dataclasses.fields(cls):
        if f.name in exclude or (keep is not None and f.name not in keep):
            continue
        base, choices, _ = _unwrap(_hints(cls)[f.name])
        help_text = f.metadata.get("help", "").replace("%", "%%")
        option: dict[str, Any] = {"help": help_text, "metavar": f.metadata.get("metavar")}
        default = _default(f)
        if default is dataclasses.MISSING:
            option["required"] = True
        else:
            option["default"] = default
            option["help"] += f" (default {_shown(default)})"
        if base is bool:
            option.update(action=argparse.BooleanOptionalAction)
        else:
            option["type"] = f.metadata.get("parse") or (base if base in (int, float) else str)
            option["choices"] = choices or None
        parser.add_argument("--" + f.name.replace("_", "-"), **option)


SHORT = {  # RANGES rules as a type's suffix, e.g. "int ≥ 1"
    "positive": "> 0",
    "non-negative": "≥ 0",
    "count": "≥ 1",
    "unit": "in [0, 1]",
    "fraction": "in [0, 1)",
    "share": "in (0, 1)",
}


def setting_rows(cls: type, exclude: typing.Iterable[str] = ()) -> list[tuple[str, ...]]:
    """(name, kind, default, help) of each setting of `cls`: kind names the type or the
    choices, "or none" when None is allowed, and the range rule."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        base, choices, optional = _unwrap(_hints(cls)[f.name])
        kind = " | ".join(map(str, choices)) if choices else getattr(base, "__name__", str(base))
        kind += f" {SHORT[f.metadata['rule']]}" if f.metadata.get("rule") else ""
        kind += " or none" if optional else ""
        default = _default(f)
        default = "required" if default is dataclasses.MISSING else _shown(default)
        rows.append((f.name, kind, default, f.metadata.get("help", "")))
    return rows


def describe_settings(cls: type, exclude: typing.Iterable[str] = ()) -> list[str]:
    """One line per setting of `cls`: "name = default (kind): help"."""
    return [
        f"{name} = {default} ({kind}): {text}"
        for name, kind, default, text in setting_rows(cls, exclude)
    ]


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (for config.resolved.yaml)."""
    return dataclasses.asdict(obj)
