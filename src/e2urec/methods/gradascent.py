"""Gradient ascent: maximise the answer cross-entropy on the forget set (all parameters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from e2urec.backbones import Recommender
from e2urec.methods.base import Method, TrainParams, UnlearnContext, register
from e2urec.methods.gradient import GradientTask, Rows, train_original


@dataclass
class GradAscentParams(TrainParams):
    """loss = −CE(forget); full fine-tuning, no retained data.

    Stopping rule: `epochs` passes over the forget set, keep the last state.
    """


def make_task(recommender: Recommender, forget: Rows) -> GradientTask:
    """−CE(forget), the forget stream alone."""
    return GradientTask(recommender, {"forget": forget}, {"forget": -1.0})


def run(ctx: UnlearnContext) -> dict[str, Any]:
    """Run gradient ascent from the original model."""
    recommender = ctx.original(editable=True)
    return train_original(ctx, make_task(recommender, ctx.rows("forget")), recommender)


register(
    Method(
        name="gradascent",
        params=GradAscentParams,
        run=run,
        description="gradient ascent on the forget set only",
        source="this project",
        streams=("forget",),
    )
)
