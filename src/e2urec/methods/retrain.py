"""Retrain: the original's recipe from the base backbone on the retained data (exact)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from e2urec.methods.base import Method, UnlearnContext, register


@dataclass
class RetrainParams:
    """No settings: backbone, fine-tuning mode, loop settings (early stopping on valid) and
    max length come from the original run; the seed is `--seed` (default: the original's)."""


def run(ctx: UnlearnContext) -> dict[str, Any]:
    """Train on `retain` with `recipes.train` and the original's settings, in the run folder."""
    from e2urec.runs import CONFIG
    from e2urec.train.recipes import train

    base = ctx.base_manifest
    config = yaml.safe_load((ctx.base_run / CONFIG).read_text(encoding="utf-8")) or {}
    loop = base.get("loop", {})
    options = {
        k: loop[k]
        for k in ("epochs", "lr", "batch_size", "patience", "keep", "max_steps")
        if k in loop
    }
    manifest = train(
        ctx.data_dir,
        "retain",
        base["backbone"],
        ctx.run_dir,
        finetune=base.get("finetune", "full"),
        seed=ctx.seed,
        init_seed=base.get("init_seed", 0),
        max_length=config.get("max_length", 512),
        overwrite=True,
        **options,
    )
    return {
        "format": "single",
        "trained_on": "retain",
        "fit": manifest.get("fit"),
        "cost": manifest["cost"],
    }


register(
    Method(
        name="retrain",
        params=RetrainParams,
        run=run,
        description="train from the base backbone on the retained data with the original's "
        "recipe (the gold reference)",
        source="paper",
        streams=("retain",),
    )
)
