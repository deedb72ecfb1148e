"""mkdocs hook: the build fails when a generated block in the docs is stale (see docgen.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docgen  # noqa: E402


def on_pre_build(config, **kwargs) -> None:
    """Refuse to build while any generated block differs from what its source renders."""
    stale = []
    for path in docgen.pages():
        name = path.relative_to(docgen.REPO)
        try:
            stale += [f"{name}: {spec}" for spec in docgen.refresh(path)[1]]
        except Exception as exc:  # a missing or malformed source: one line, not a traceback
            raise PluginError(f"{name}: cannot render a generated block: {exc}") from None
    if stale:
        raise PluginError("stale generated blocks (run `make docs`): " + "; ".join(stale))
