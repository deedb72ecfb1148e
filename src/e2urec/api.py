"""The library's entry points; the CLI is a thin layer over these functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from e2urec.data.prepare import PrepareConfig, PrepareResult


def describe(what: str) -> list[str]:
    """One line per registered dataset, method, backbone or preset."""
    if what == "datasets":
        from e2urec.data.readers import READERS as registry
    else:
        raise ValueError(what)
    return [f"{name:16s} {registry.meta(name).get('description', '')}" for name in registry]


def prepare(config: PrepareConfig, overwrite: bool = False) -> PrepareResult:
    """Prepare a dataset with the paper's protocol (see `e2urec.data.prepare`)."""
    from e2urec.data.prepare import prepare as run

    return run(config, overwrite=overwrite)
