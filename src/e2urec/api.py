"""The library's entry points; the CLI is a thin layer over these functions."""

from __future__ import annotations


def describe(what: str) -> list[str]:
    """One line per registered dataset, method, backbone or preset."""
    if what == "datasets":
        from e2urec.data.readers import READERS as registry
    else:
        raise ValueError(what)
    return [f"{name:16s} {registry.meta(name).get('description', '')}" for name in registry]
