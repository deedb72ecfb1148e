"""E2URec's view of rows it does not train on: the holdout users (same-period non-members), the
membership stop rule (`stop=membership`, scored by `eval.scoring`) and the check of which way
the forgetting teacher pushes the forget set."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from e2urec.backbones import Recommender
from e2urec.eval import scoring
from e2urec.train.streams import sample_rows

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


NO_HOLDOUT = "needs a holdout split: prepare the data with --holdout-ratio"


def holdout_available(data_dir: Path) -> bool:
    """Whether the prepared data has a non-empty `holdout` split."""
    from e2urec.data.dataset import has_rows, read_manifest

    return has_rows(read_manifest(data_dir), "holdout")


def membership_stats(
    forget: dict[str, np.ndarray], holdout: dict[str, np.ndarray], loss: str
) -> dict:
    """Loss-based MIA AUC (`scoring.membership_auc` with the named loss) of forget (members) vs
    holdout rows, and the two-sample KS test of their answer margins (statistic and p-value)."""
    from scipy.stats import ks_2samp

    ks = ks_2samp(forget["margin"], holdout["margin"])
    return {
        "mia_auc": round(scoring.membership_auc(forget, holdout, loss), 4),
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


@dataclass(frozen=True)
class MembershipRule:
    """The settings of `stop=membership` (E2URecParams holds them under these names: check_every,
    check_rows, mia_tol, mia_target, ks_alpha, stop_needs as `needs`, batch_size) and the loss
    its membership inference uses (`scoring.LOSSES`)."""

    check_every: int
    check_rows: int
    mia_tol: float
    mia_target: str
    ks_alpha: float
    needs: str
    batch_size: int
    loss: str = "vocab"


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
        rule: MembershipRule,
        seed: int,
        device: Any,
    ):
        self.recommender = recommender
        self.rule = rule
        self.device = device
        self.forget = sample_rows(forget_rows, rule.check_rows, seed, "e2urec", "check-forget")
        self.holdout = sample_rows(holdout_rows, rule.check_rows, seed, "e2urec", "check-holdout")
        self.target = 0.5
        self.holdout_auc: float | None = None
        self.checks: list[dict[str, Any]] = []
        self.stopped: dict[str, Any] | None = None

    def _judge(self, step: int, forward: Callable[[Batch], Any]) -> bool:
        rule = self.rule
        forget, holdout = (
            scoring.score_stats(self.recommender, forward, rows, rule.batch_size, self.device)
            for rows in (self.forget, self.holdout)
        )
        if self.holdout_auc is None:
            half, column = len(self.holdout) // 2, scoring.loss_column(rule.loss)
            halves = ({column: holdout[column][:half]}, {column: holdout[column][half:]})
            self.holdout_auc = round(scoring.membership_auc(*halves, rule.loss), 4)
            if rule.mia_target == "holdout":
                self.target = self.holdout_auc
        stats = membership_stats(forget, holdout, rule.loss)
        reason = membership_verdict(
            stats["mia_auc"], stats["ks_p"], self.target, rule.mia_tol, rule.ks_alpha, rule.needs
        )
        self.checks.append({"step": step, **stats, "passed": reason is not None})
        if reason is not None and self.stopped is None:
            self.stopped = {"step": step, "reason": reason, **stats}
        return reason is not None

    def start(self, forward: Callable[[Batch], Any]) -> bool:
        """Measure the original (forward under eval mode, no gradients) as step 0."""
        return self._judge(0, forward)

    def __call__(self, model: nn.Module, step: int) -> bool:
        if step % self.rule.check_every:
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
            "mia_loss": self.rule.loss,
            "target_auc": self.target,
            "holdout_halves_auc": self.holdout_auc,
            "rows": {"forget": len(self.forget), "holdout": len(self.holdout)},
            "checks": self.checks,
        }
