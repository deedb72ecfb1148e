"""NegGrad: descend on the retained data, ascend on the forget set (all parameters)."""

from __future__ import annotations

from dataclasses import dataclass

from e2urec.backbones import Recommender
from e2urec.config import setting
from e2urec.methods.base import Method, TrainParams, register
from e2urec.methods.gradient import GradientTask, Rows, from_original, retain_and_forget


@dataclass
class NegGradParams(TrainParams):
    """loss = CE(retain) − forget_weight·CE(forget); full fine-tuning.

    Stopping rule: `epochs` passes over the forget set (a retain batch alongside each forget
    batch), keep the last state.
    """

    forget_weight: float = setting(0.2, "weight of the ascended forget CE", rule="non-negative")


def make_task(
    recommender: Recommender, forget: Rows, retain: Rows, params: NegGradParams
) -> GradientTask:
    """CE(retain) − forget_weight·CE(forget) over the two streams."""
    return retain_and_forget(recommender, forget, retain, -params.forget_weight)


register(
    Method(
        name="neggrad",
        params=NegGradParams,
        run=from_original(make_task),
        description="gradient descent on retain, ascent on forget (all parameters)",
        source="paper",
    )
)
