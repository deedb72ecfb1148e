"""The checks run on every deletion request, before and after: forgetting and utility.

- Forgetting: loss-based membership inference (`scoring.membership_auc` with loss MIA_LOSS =
  "vocab": the cross-entropy of a row's answer's first token over the full vocabulary at the
  first answer position); members = the forgotten users' train rows, non-members = held-out
  test rows of the remaining users. An AUC near 0.5 after unlearning means the attack can no
  longer tell the forgotten rows from data the model never saw.
- Utility: AUC of P(Yes) on the remaining users' validation rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from e2urec.eval import metrics, scoring
from e2urec.eval.predict import model_device
from e2urec.runs import RunModel

MIA_LOSS = "vocab"  # the membership-inference loss of every check (see eval.scoring.LOSSES)


def losses_and_p_yes(
    run_model: RunModel, rows: Sequence[dict[str, Any]], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the MIA_LOSS loss (`scoring.loss_vocab`) and P(Yes) (by the run model's own
    `target_logits` when it has one, e.g. APA's adapter mixture)."""
    recommender = run_model.recommender
    own = getattr(run_model, "target_logits", None)
    stats = scoring.score_stats(
        recommender,
        own or (lambda batch: recommender.target_logits(batch, recommender.model)),
        rows,
        batch_size,
        model_device(run_model),
        by_length=True,
    )
    return stats[scoring.loss_column(MIA_LOSS)], stats["p_yes"]


def mia_or_none(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float | None:
    """Membership-inference AUC, or None without members or non-members."""
    if not len(member_losses) or not len(nonmember_losses):
        return None
    column = scoring.loss_column(MIA_LOSS)
    return scoring.membership_auc({column: member_losses}, {column: nonmember_losses}, MIA_LOSS)


def auc_or_none(labels: Sequence[int], p_yes: np.ndarray) -> float | None:
    """AUC of P(Yes), or None when undefined (no rows, or one class only)."""
    if not len(labels):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = metrics.auc(list(labels), p_yes)
    return None if math.isnan(value) else value
