"""NegGrad: descend on the retained data, ascend on the forget set (all parameters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from e2urec.methods.base import Method, TrainParams, UnlearnContext, register
from e2urec.methods.gradient import GradientTask, train_original


@dataclass
class NegGradParams(TrainParams):
    """loss = CE(retain) − forget_weight·CE(forget); full fine-tuning.

    Stopping rule: `epochs` passes over the forget set (a retain batch alongside each forget
    batch), keep the last state.
    """

    RANGES: ClassVar[dict[str, str]] = {"forget_weight": "non-negative"}

    forget_weight: float = 0.2


def run(ctx: UnlearnContext) -> dict[str, Any]:
    """Run NegGrad from the original model."""
    recommender = ctx.original()
    streams = {"retain": ctx.rows("retain"), "forget": ctx.rows("forget")}
    weights = {"retain": 1.0, "forget": -ctx.params.forget_weight}
    return train_original(ctx, GradientTask(recommender, streams, weights), recommender)


register(
    Method(
        name="neggrad",
        params=NegGradParams,
        run=run,
        description="gradient descent on retain, ascent on forget (all parameters)",
        source="paper",
    )
)
