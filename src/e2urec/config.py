"""Typed configuration: defaults < preset YAML < --config file < --set a.b=c overrides."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

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


KEEP_CHOICES = ("best", "last")  # which weights a supervised fit keeps (train.loop.LoopConfig)
RANGES = {  # rule name → (test, what the value must be)
    "positive": (lambda v: v > 0, "positive"),
    "non-negative": (lambda v: v >= 0, "at least 0"),
    "count": (lambda v: v >= 1 and float(v).is_integer(), "an integer of at least 1"),
    "unit": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
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


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (for config.resolved.yaml)."""
    return dataclasses.asdict(obj)
