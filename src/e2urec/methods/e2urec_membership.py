"""E2URec's view of rows it does not train on: answer statistics of a model over rows, the
holdout users (same-period non-members), the membership stop rule (`stop=membership`) and the
check of which way the forgetting teacher pushes the forget set."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from e2urec.backbones import Recommender
from e2urec.methods.e2urec_teachers import answer_margin, answer_tokens

if TYPE_CHECKING:
    from e2urec.methods.e2urec import E2URecParams

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the block; the previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch's tensors on `device`."""
    return {k: v.to(device) for k, v in batch.items()}


def row_batches(
    recommender: Recommender, rows: Sequence[dict[str, Any]], batch_size: int, device: Any
) -> Iterator[Batch]:
    """Consecutive batches of `rows` on `device`, each with its rows' positions as `index`."""
    for start in range(0, len(rows), batch_size):
        batch = recommender.collate(rows[start : start + batch_size])
        batch["index"] = torch.arange(start, start + len(batch["input_ids"]))
        yield to_device(batch, device)


NO_HOLDOUT = "needs a holdout split: prepare the data with --holdout-ratio"


def holdout_available(data_dir: Path) -> bool:
    """Whether the prepared data has a non-empty `holdout` split."""
    from e2urec.data.dataset import read_manifest
    from e2urec.data.prepare import split_file

    manifest = read_manifest(data_dir)
    files = manifest.get("files", {})
    return "holdout" in manifest.get("splits", []) and bool(
        files.get(split_file("holdout"), {}).get("samples")
    )


def answer_stats(
    logits: torch.Tensor, labels: torch.Tensor, yes_id: int, no_id: int
) -> dict[str, torch.Tensor]:
    """Per row at the first answer position: `loss` = −log P(trained answer) over the full
    vocabulary, `margin` = log P(trained answer) − log P(other answer), `p_yes` = P(Yes) of the
    softmax over the two answer tokens."""
    trained, other = answer_tokens(labels, yes_id, no_id)
    first = logits[:, 0].float()
    log_p = torch.log_softmax(first, dim=-1)
    return {
        "loss": -log_p.gather(1, trained[:, None])[:, 0],
        "margin": answer_margin(logits, trained, other),
        "p_yes": torch.sigmoid(first[:, yes_id] - first[:, no_id]),
    }


def score_rows(
    recommender: Recommender,
    forward: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
    rows: Sequence[dict[str, Any]],
    batch_size: int,
    device: Any,
) -> dict[str, np.ndarray]:
    """`answer_stats` of `forward(batch) -> (logits, labels)` over every row (numpy, float64);
    the caller sets eval mode and no gradients."""
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in row_batches(recommender, rows, batch_size, device):
        logits, labels = forward(batch)
        for name, values in answer_stats(
            logits, labels, recommender.yes_id, recommender.no_id
        ).items():
            parts.setdefault(name, []).append(values.detach().cpu())
    return {name: torch.cat(values).double().numpy() for name, values in parts.items()}


def membership_stats(forget: dict[str, np.ndarray], holdout: dict[str, np.ndarray]) -> dict:
    """Loss-based MIA AUC of forget (members) vs holdout rows, and the two-sample KS test of
    their answer margins (statistic and p-value)."""
    from scipy.stats import ks_2samp

    from e2urec.eval.metrics import mia_auc

    ks = ks_2samp(forget["margin"], holdout["margin"])
    return {
        "mia_auc": round(mia_auc(forget["loss"], holdout["loss"]), 4),
        "ks_stat": round(float(ks.statistic), 4),
        "ks_p": round(float(ks.pvalue), 4),
    }


def membership_verdict(
    mia: float, ks_p: float, target: float, tol: float, ks_alpha: float, needs: str = "any"
) -> str | None:
    """Why the forget rows count as no more recognisable than holdout rows (None: they do not):
    |MIA AUC − target| ≤ tol, the KS test not rejecting (p ≥ ks_alpha); `needs` any or all."""
    passed = []
    if abs(mia - target) <= tol:
        passed.append(f"MIA AUC {mia:.3f} within {tol:g} of {target:.3f}")
    if ks_p >= ks_alpha:
        passed.append(f"KS p {ks_p:.3f} ≥ {ks_alpha:g}")
    enough = len(passed) == 2 if needs == "all" else bool(passed)
    return "; ".join(passed) if enough else None


def direction_warning(teacher: str, forget_p_yes: dict[str, float], holdout: float) -> str | None:
    """A warning when the forgetting teacher moves the forget set's mean P(Yes) further from the
    holdout users' mean (under the original) than the original has it; None otherwise."""
    original, forced = forget_p_yes.get("original"), forget_p_yes.get("forgetting_teacher")
    if original is None or forced is None or abs(forced - holdout) <= abs(original - holdout):
        return None
    return (
        f"the {teacher} forgetting teacher moves the forget set's mean P(Yes) away from the "
        f"holdout users' mean ({original:.3f} -> {forced:.3f}; holdout users {holdout:.3f} "
        "under the original)"
    )


def check_direction(
    fields: dict[str, Any], forget_p_yes: dict[str, float], teacher: str, holdout: dict | None
) -> None:
    """Record the forget set's mean P(Yes) per model (`Teachers.forget_p_yes`) and whether the
    teacher pushes them away from the holdout users' mean; log the warning as soon as known."""
    fields["forget_p_yes"] = forget_p_yes
    if holdout is None:
        fields["direction_check"] = f"skipped: {NO_HOLDOUT}"
        return
    warning = direction_warning(teacher, fields["forget_p_yes"], float(holdout["p_yes"].mean()))
    fields["direction_check"] = "away from the holdout users" if warning else "ok"
    if warning:
        fields["warnings"] = [warning]
        log.warning(warning)


def sample_rows(
    rows: Sequence[dict[str, Any]], size: int, seed: int, name: str
) -> list[dict[str, Any]]:
    """A seeded sample of `size` rows (all rows, shuffled, when there are fewer)."""
    from e2urec.train.loop import permutation

    return [rows[i] for i in permutation(len(rows), seed, "e2urec", name)[:size]]


class MembershipMonitor:
    """`stop=membership`: are the forget rows still more recognisable than holdout users' rows?

    `start(forward)` measures the original (step 0) on seeded samples of `check_rows` forget
    and holdout rows and fixes the target AUC (0.5, or with `mia_target=holdout` the original's
    AUC of the holdout sample's first half against its second); it returns True when the
    forget rows already pass. As fit's `stop` hook it measures the student every `check_every`
    steps and returns True when `membership_verdict` passes. `summary(steps)` is the manifest's
    record of why and when training stopped, with every check.
    """

    def __init__(
        self,
        recommender: Recommender,
        forget_rows: Sequence[dict[str, Any]],
        holdout_rows: Sequence[dict[str, Any]],
        params: E2URecParams,
        seed: int,
        device: Any,
    ):
        self.recommender = recommender
        self.params = params
        self.device = device
        self.forget = sample_rows(forget_rows, params.check_rows, seed, "check-forget")
        self.holdout = sample_rows(holdout_rows, params.check_rows, seed, "check-holdout")
        self.target = 0.5
        self.holdout_auc: float | None = None
        self.checks: list[dict[str, Any]] = []
        self.stopped: dict[str, Any] | None = None

    def _judge(self, step: int, forward: Callable[[Batch], Any]) -> bool:
        size = self.params.batch_size
        forget = score_rows(self.recommender, forward, self.forget, size, self.device)
        holdout = score_rows(self.recommender, forward, self.holdout, size, self.device)
        if self.holdout_auc is None:
            from e2urec.eval.metrics import mia_auc

            half = len(self.holdout) // 2
            losses = holdout["loss"]
            self.holdout_auc = round(mia_auc(losses[:half], losses[half:]), 4)
            if self.params.mia_target == "holdout":
                self.target = self.holdout_auc
        stats = membership_stats(forget, holdout)
        p = self.params
        reason = membership_verdict(
            stats["mia_auc"], stats["ks_p"], self.target, p.mia_tol, p.ks_alpha, p.stop_needs
        )
        self.checks.append({"step": step, **stats, "passed": reason is not None})
        if reason is not None and self.stopped is None:
            self.stopped = {"step": step, "reason": reason, **stats}
        return reason is not None

    def start(self, forward: Callable[[Batch], Any]) -> bool:
        """Measure the original (forward under eval mode, no gradients) as step 0."""
        return self._judge(0, forward)

    def __call__(self, model: nn.Module, step: int) -> bool:
        if step % self.params.check_every:
            return False
        with inference(model):
            return self._judge(step, lambda b: self.recommender.target_logits(b, model))

    def finish(self, model: nn.Module, steps: int) -> None:
        """After a run the budget ended, measure the final student once (if not yet)."""
        if self.stopped is None and self.checks[-1]["step"] != steps:
            with inference(model):
                self._judge(steps, lambda b: self.recommender.target_logits(b, model))
            if self.stopped is not None and self.stopped["step"] == steps:
                self.stopped = None  # passing at the very end is the budget's stop, not the rule's

    def summary(self, steps: int) -> dict[str, Any]:
        """Why and when training stopped, the target, the sample sizes and every check."""
        last = self.stopped or {k: v for k, v in self.checks[-1].items() if k != "passed"}
        return {
            "rule": "membership",
            "stopped_by": "membership" if self.stopped else "budget",
            "reason": self.stopped["reason"] if self.stopped else "step budget reached",
            **{k: v for k, v in last.items() if k != "step"},
            "step": self.stopped["step"] if self.stopped else steps,
            "target_auc": self.target,
            "holdout_halves_auc": self.holdout_auc,
            "rows": {"forget": len(self.forget), "holdout": len(self.holdout)},
            "checks": self.checks,
        }
