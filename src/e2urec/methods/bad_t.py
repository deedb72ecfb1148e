"""Bad-T: learn the flipped answers on the forget set while keeping the retained data."""

from __future__ import annotations

from dataclasses import dataclass

from e2urec.backbones import Recommender
from e2urec.config import setting
from e2urec.methods.base import Method, TrainParams, register
from e2urec.methods.gradient import (
    GradientTask,
    Rows,
    flip_answers,
    from_original,
    retain_and_forget,
)


@dataclass
class BadTParams(TrainParams):
    """loss = CE(retain) + forget_weight·CE(forget with Yes/No flipped), as the paper's code
    does (its "random" data); full fine-tuning.

    Stopping rule: `epochs` passes over the forget set, keep the last state.
    """

    forget_weight: float = setting(
        0.2, "weight of the CE towards the flipped answers on forget", rule="non-negative"
    )


def make_task(
    recommender: Recommender, forget: Rows, retain: Rows, params: BadTParams
) -> GradientTask:
    """CE(retain) + forget_weight·CE(forget with its answers flipped)."""
    return retain_and_forget(recommender, flip_answers(forget), retain, params.forget_weight)


register(
    Method(
        name="bad-t",
        params=BadTParams,
        run=from_original(make_task),
        description="retain CE plus CE towards flipped Yes/No answers on forget",
        source="paper's code",
    )
)
