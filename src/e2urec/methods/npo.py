"""NPO (Negative Preference Optimization, Zhang et al. 2024) with a retain CE term."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2urec.backbones import Recommender
from e2urec.config import setting
from e2urec.methods.base import Method, TrainParams, UnlearnContext, register
from e2urec.methods.gradient import GradientTask, sequence_logp, train_original


@dataclass
class NPOParams(TrainParams):
    """loss = (2/β)·mean softplus(β·(log π_θ(y|x) − log π_ref(y|x)))_forget
    + retain_weight·CE(retain); π_ref = the original (answer log-likelihoods computed once before
    training); full fine-tuning.

    Stopping rule: `epochs` passes over the forget set, keep the last state.
    """

    beta: float = setting(0.1, "β: the NPO term's inverse temperature", rule="positive")
    retain_weight: float = setting(1.0, "weight of the retain CE", rule="non-negative")


class NPOTask(GradientTask):
    """GradientTask over retain CE plus the NPO term on forget."""

    def __init__(
        self,
        recommender: Recommender,
        forget_rows: Sequence[dict[str, Any]],
        retain_rows: Sequence[dict[str, Any]],
        reference: torch.Tensor,
        params: NPOParams,
    ):
        streams = {"forget": forget_rows, "retain": retain_rows}
        super().__init__(recommender, streams, {"retain": params.retain_weight})
        self.reference = reference
        self.beta = params.beta

    def extra(self, model: nn.Module, batches: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        forget = batches["forget"]
        logp = sequence_logp(*self.recommender.target_logits(forget, model))
        ref = self.reference[forget["index"].cpu()].to(logp.device)
        return {"npo": 2.0 / self.beta * F.softplus(self.beta * (logp - ref)).mean()}


@torch.no_grad()
def reference_logp(
    recommender: Recommender, rows: Sequence[dict[str, Any]], batch_size: int
) -> torch.Tensor:
    """The model's answer log-likelihood of every row [N] (eval mode, on the model's device)."""
    model = recommender.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        batch = recommender.collate(rows[start : start + batch_size])
        batch = {key: value.to(device) for key, value in batch.items()}
        out.append(sequence_logp(*recommender.target_logits(batch, model)).cpu())
    model.train(was_training)
    return torch.cat(out)


def run(ctx: UnlearnContext) -> dict[str, Any]:
    """Run NPO from the original model."""
    from e2urec.train.runner import process_state

    recommender = ctx.original(editable=True)
    recommender.model.to(process_state().device)  # the reference pass runs where training will
    forget = ctx.rows("forget")
    with ctx.meter.phase("reference"):
        reference = reference_logp(recommender, forget, ctx.params.batch_size)
    task = NPOTask(recommender, forget, ctx.rows("retain"), reference, ctx.params)
    return train_original(ctx, task, recommender)


register(
    Method(
        name="npo",
        params=NPOParams,
        run=run,
        description="negative preference optimisation on forget (reference = original) "
        "plus retain CE",
        source="this project",
    )
)
