"""The gradient-based baselines' shared shape: full fine-tuning of the original on a weighted sum
of answer cross-entropies over named streams (a negative weight ascends), plus optional extra
terms (NPO). Epoch = one pass over the forget set; other streams are drawn alongside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from e2urec.backbones import IGNORE, Recommender, save_recommender
from e2urec.methods.base import TrainParams, UnlearnContext

Batch = dict[str, torch.Tensor]
Rows = Sequence[dict[str, Any]]


def flip_answers(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with Yes./No. swapped (label and target): Bad-T's incompetent teacher data."""
    swap = {"Yes.": "No.", "No.": "Yes."}
    return [{**r, "target": swap[r["target"]], "label": 1 - int(r["label"])} for r in rows]


def sequence_logp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row log-likelihood of the answer tokens [B] (IGNORE positions skipped)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (labels != IGNORE)).sum(dim=1)


class GradientTask:
    """loss = Σ_s weights[s] · CE(stream s) (+ `extra(model, batches)` terms)."""

    main = "forget"

    def __init__(
        self,
        recommender: Recommender,
        streams: dict[str, Sequence[dict[str, Any]]],
        weights: dict[str, float],
    ):
        self.recommender = recommender
        self.streams = streams
        self.weights = weights

    def extra(self, model: nn.Module, batches: dict[str, Batch]) -> dict[str, torch.Tensor]:
        """Further named loss terms (none here; NPO adds one)."""
        return {}

    def loss(
        self, model: nn.Module, batches: dict[str, Batch], epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted objective on one batch of every stream."""
        from e2urec.train.losses import answer_ce

        total = torch.zeros(())
        logs = {}
        for name, weight in self.weights.items():
            ce = answer_ce(*self.recommender.target_logits(batches[name], model))
            total = total.to(ce.device) + weight * ce
            logs[f"ce_{name}"] = float(ce.detach())
        for name, term in self.extra(model, batches).items():
            total = total.to(term.device) + term
            logs[name] = float(term.detach())
        return total, logs


def retain_and_forget(
    recommender: Recommender, forget: Rows, retain: Rows, forget_weight: float
) -> GradientTask:
    """CE(retain) + forget_weight·CE(forget): NegGrad's (negative weight) and Bad-T's (flipped
    forget rows) objective."""
    streams = {"retain": retain, "forget": forget}
    return GradientTask(recommender, streams, {"retain": 1.0, "forget": forget_weight})


def from_original(
    make_task: Callable[[Recommender, Rows, Rows, Any], GradientTask],
) -> Callable[[UnlearnContext], dict[str, Any]]:
    """A method's `run`: `make_task(recommender, forget rows, retain rows, params)` trained from
    the original model by `train_original`."""

    def run(ctx: UnlearnContext) -> dict[str, Any]:
        recommender = ctx.original(editable=True)
        task = make_task(recommender, ctx.rows("forget"), ctx.rows("retain"), ctx.params)
        return train_original(ctx, task, recommender)

    return run


def train_original(ctx: UnlearnContext, task: GradientTask, recommender: Recommender) -> dict:
    """Fine-tune the original's trainable parameters on `task` (every weight, or a LoRA
    Original's adapter); save it as a single-format run."""
    from e2urec.runs import MODEL_DIR
    from e2urec.train.loop import fit

    params: TrainParams = ctx.params
    fit(
        recommender,
        recommender.model,
        task,
        params.loop_config(ctx.seed),
        ctx.run_dir,
        meter=ctx.meter,
        desc="unlearn",
    )
    with ctx.meter.phase("save"):
        save_recommender(recommender, ctx.run_dir / MODEL_DIR)
    return {"format": "single", "cost": ctx.meter.summary(recommender.model)}
