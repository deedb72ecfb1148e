"""Pure metric functions: utility (AUC, ACC, LogLoss), forgetting (paper-JSD, JSD, L2, residual,
KS forget quality), membership (MIA AUC, PrivLeak) and utility recovery.

Inputs may be numpy arrays, torch tensors (any device) or Python sequences; outputs are
numpy arrays or Python floats.

* Utility metrics take binary labels (0/1) and P(Yes), the softmax over the two answer-token
  logits (`p_yes_from_logits`).
* Forgetting metrics compare a reference distribution `p` (the Retrain run) with `q` (the
  unlearned run), row by row over a batch `[N, V]` given as logits *or* log-probabilities (a
  log-softmax is applied first, which leaves log-probabilities unchanged). They are computed
  in float64 in log space on the input's device and return one value per row. Callers state
  the scope: `vocab` = the full-vocabulary distribution at the first answer position (the
  paper's), `yes_no` = the two-way distribution over the Yes/No answer tokens (`[N, 2]`).
* `auc` is undefined when the labels hold one class only: it returns nan and emits a
  `RuntimeWarning` naming the reason, so a tiny test split does not abort a whole benchmark.
  Empty, mismatched or out-of-range inputs raise `E2URecError`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score

from e2urec.errors import E2URecError

SCOPES = ("vocab", "yes_no")


def _numpy(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise E2URecError(f"{name} is empty")
    return array


def _binary_inputs(labels: Any, p_yes: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _numpy(labels, "labels")
    p = _numpy(p_yes, "p_yes")
    if y.shape != p.shape:
        raise E2URecError(f"labels ({y.size}) and p_yes ({p.size}) differ in length")
    if not np.isin(y, (0.0, 1.0)).all():
        raise E2URecError("labels must be 0 or 1")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise E2URecError("p_yes must be probabilities in [0, 1]")
    return y.astype(np.int64), p


def p_yes_from_logits(yes_logit: Any, no_logit: Any) -> np.ndarray:
    """P(Yes) = softmax([yes, no])[0] = sigmoid(yes − no), elementwise."""
    yes = _numpy(yes_logit, "yes_logit")
    no = _numpy(no_logit, "no_logit")
    if yes.shape != no.shape:
        raise E2URecError(f"yes_logit ({yes.size}) and no_logit ({no.size}) differ in length")
    return 0.5 * (1.0 + np.tanh(0.5 * (yes - no)))


def auc(labels: Any, p_yes: Any) -> float:
    """ROC AUC of P(Yes) against 0/1 labels (scikit-learn); nan with a warning if one class."""
    y, p = _binary_inputs(labels, p_yes)
    if np.unique(y).size < 2:
        reason = f"all {y.size} labels are {int(y[0])}; AUC needs both classes, returning nan"
        warnings.warn(f"auc is undefined: {reason}", RuntimeWarning, stacklevel=2)
        return math.nan
    return float(roc_auc_score(y, p))


def acc(labels: Any, p_yes: Any, threshold: float = 0.5) -> float:
    """Accuracy of predicting Yes when P(Yes) ≥ threshold."""
    y, p = _binary_inputs(labels, p_yes)
    return float(((p >= threshold).astype(np.int64) == y).mean())


def logloss(labels: Any, p_yes: Any, eps: float = 1e-7) -> float:
    """Binary cross-entropy (natural log) with P(Yes) clipped to [eps, 1 − eps]."""
    y, p = _binary_inputs(labels, p_yes)
    return float(log_loss(y, np.clip(p, eps, 1.0 - eps), labels=[0, 1]))


def _log_probs(logits: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    tensor = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    if device is not None:
        tensor = tensor.to(device)
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise E2URecError(
            f"{name} must be a non-empty [N, V] batch, got shape {tuple(tensor.shape)}"
        )
    return torch.log_softmax(tensor.detach().to(torch.float64), dim=-1)


def _pair(p: Any, q: Any) -> tuple[torch.Tensor, torch.Tensor]:
    log_p = _log_probs(p, "p")
    log_q = _log_probs(q, "q", device=log_p.device)
    if log_p.shape != log_q.shape:
        raise E2URecError(f"p {tuple(log_p.shape)} and q {tuple(log_q.shape)} differ in shape")
    return log_p, log_q


def _rows(values: torch.Tensor) -> np.ndarray:
    return values.cpu().numpy()


def kl(p: Any, q: Any) -> np.ndarray:
    """KL(p‖q) per row, natural log; terms with p = 0 count as 0."""
    log_p, log_q = _pair(p, q)
    terms = torch.where(log_p.isneginf(), 0.0, log_p.exp() * (log_p - log_q))
    return _rows(terms.sum(-1))


def paper_jsd(p: Any, q: Any) -> np.ndarray:
    """0.5·KL(p‖q) + 0.5·KL(q‖p) per row: the symmetric KL the paper's code calls "JSD"."""
    return 0.5 * kl(p, q) + 0.5 * kl(q, p)


def jsd(p: Any, q: Any) -> np.ndarray:
    """True Jensen–Shannon divergence per row, natural log, so 0 ≤ jsd ≤ ln 2."""
    log_p, log_q = _pair(p, q)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    half_p = torch.where(log_p.isneginf(), 0.0, log_p.exp() * (log_p - log_m))
    half_q = torch.where(log_q.isneginf(), 0.0, log_q.exp() * (log_q - log_m))
    return _rows((0.5 * (half_p + half_q)).sum(-1).clamp(0.0, math.log(2.0)))


def l2(p: Any, q: Any) -> np.ndarray:
    """Euclidean distance ‖p − q‖₂ between the probability vectors, per row."""
    log_p, log_q = _pair(p, q)
    return _rows(torch.linalg.vector_norm(log_p.exp() - log_q.exp(), dim=-1))


FORGET_METRICS: dict[str, Callable[[Any, Any], np.ndarray]] = {
    "paper_jsd": paper_jsd,
    "jsd": jsd,
    "l2": l2,
}


def mean_divergences(p: Any, q: Any) -> dict[str, float]:
    """Batch means of every forgetting metric (paper_jsd, jsd, l2) between p and q."""
    return {name: float(fn(p, q).mean()) for name, fn in FORGET_METRICS.items()}


def mia_auc(member_losses: Any, nonmember_losses: Any) -> float:
    """Loss-based membership inference: AUC of score = −loss for members vs non-members.

    Members are the forget set, non-members held-out samples; 0.5 means no leakage.
    """
    members = _numpy(member_losses, "member_losses")
    nonmembers = _numpy(nonmember_losses, "nonmember_losses")
    labels = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    scores = -np.concatenate([members, nonmembers])
    if np.isnan(scores).any():
        raise E2URecError("losses contain nan")
    return float(roc_auc_score(labels, scores))


def answer_margin(labels: Any, p_yes: Any, eps: float = 1e-12) -> np.ndarray:
    """Per row, log P(trained answer) − log P(other answer) from the two-way P(Yes):
    logit(P(Yes)) for label 1, its negative for label 0 (P clipped to [eps, 1 − eps])."""
    y, p = _binary_inputs(labels, p_yes)
    p = np.clip(p, eps, 1.0 - eps)
    logit = np.log(p) - np.log1p(-p)
    return np.where(y == 1, logit, -logit)


def answer_loss(labels: Any, p_yes: Any) -> np.ndarray:
    """Per row, −log P(trained answer) under the two-way answer distribution (= softplus of
    the negative margin), the loss a membership attacker thresholds."""
    return np.logaddexp(0.0, -answer_margin(labels, p_yes))


def ks_forget_quality(margins: Any, reference_margins: Any) -> float:
    """TOFU's forget quality: the two-sample Kolmogorov–Smirnov p-value between a model's and
    the Retrain's per-row margins on the forget set; high = indistinguishable from Retrain."""
    from scipy.stats import ks_2samp

    a = _numpy(margins, "margins")
    b = _numpy(reference_margins, "reference_margins")
    if np.isnan(a).any() or np.isnan(b).any():
        raise E2URecError("margins contain nan")
    return float(ks_2samp(a, b).pvalue)


def residual(distance: float, original_distance: float) -> float:
    """d(method, Retrain) / d(Original, Retrain): 1 = forgot nothing, 0 = exactly Retrain;
    nan when the Original already equals Retrain (nothing to forget)."""
    if original_distance < 0 or distance < 0:
        raise E2URecError("distances must be non-negative")
    return math.nan if original_distance == 0 else float(distance / original_distance)


def privleak(mia_auc_method: float, mia_auc_retrain: float) -> float:
    """MUSE's PrivLeak, (AUC_method − AUC_Retrain) / AUC_Retrain, with MUSE's orientation of the
    attack AUC (forget rows as the class scored lower, i.e. 1 − our `mia_auc`): 0 is ideal,
    negative = the forget rows still look like members, positive = over-unlearned.
    Takes our `mia_auc` values (higher = more recognisable as members)."""
    muse_method, muse_retrain = 1.0 - mia_auc_method, 1.0 - mia_auc_retrain
    if not 0 < muse_retrain <= 1:
        raise E2URecError(f"Retrain MIA AUC must lie in [0, 1), got {mia_auc_retrain}")
    return float((muse_method - muse_retrain) / muse_retrain)


def utility_recovery(auc_method: float, auc_original: float, auc_retrain: float) -> float:
    """(AUC_method − AUC_Original) / (AUC_Retrain − AUC_Original) on test: 1 = the clean
    Retrain's utility regained, 0 = the polluted Original's; nan when the two are equal."""
    gap = auc_retrain - auc_original
    return math.nan if gap == 0 else float((auc_method - auc_original) / gap)


@dataclass(frozen=True)
class MetricInfo:
    """What a metric measures and which direction is better (for bolding and plots)."""

    higher_is_better: bool
    description: str
    ideal: float | None = None  # best when closest to this value (overrides the direction)


METRIC_INFO: dict[str, MetricInfo] = {
    "auc": MetricInfo(True, "ROC AUC of P(Yes)"),
    "acc": MetricInfo(True, "accuracy of P(Yes) ≥ 0.5"),
    "logloss": MetricInfo(False, "binary cross-entropy of P(Yes)"),
    "paper_jsd": MetricInfo(False, "0.5·KL(p‖q) + 0.5·KL(q‖p) to Retrain (the paper's JSD)"),
    "jsd": MetricInfo(False, "Jensen–Shannon divergence to Retrain (≤ ln 2)"),
    "l2": MetricInfo(False, "‖p − q‖₂ to Retrain"),
    "mia_auc": MetricInfo(False, "loss-based membership-inference AUC (0.5 = no leakage)"),
    "residual_jsd": MetricInfo(False, "paper-JSD to Retrain ÷ the Original's (1 = forgot nothing)"),
    "residual_auc": MetricInfo(False, "|forget AUC − Retrain's| ÷ the Original's gap"),
    "forget_quality": MetricInfo(True, "KS p-value of forget margins vs Retrain (TOFU)"),
    "privleak": MetricInfo(False, "MUSE PrivLeak vs Retrain (0 ideal, < 0 still memorised)", 0.0),
    "utility_recovery": MetricInfo(True, "test AUC regained from Original to Retrain (1 = all)"),
    "target_p_yes": MetricInfo(False, "mean P(Yes) on test rows of the shilling targets"),
    "time_s": MetricInfo(False, "wall-clock seconds"),
    "time_ratio": MetricInfo(False, "wall-clock time ÷ Retrain's"),
    "trainable_params": MetricInfo(False, "parameters updated by the method"),
    "trainable_pct": MetricInfo(False, "trainable parameters as % of the model"),
    "peak_memory_mb": MetricInfo(False, "peak memory in MB (process RSS on a CPU)"),
}

_SPLIT_PREFIXES = ("forget_", "retain_", "test_", "valid_")


def metric_info(column: str) -> MetricInfo:
    """Metadata for a metric or a split-prefixed column such as `forget_paper_jsd`."""
    name = column
    for prefix in _SPLIT_PREFIXES:
        if name.startswith(prefix) and name[len(prefix) :] in METRIC_INFO:
            name = name[len(prefix) :]
            break
    if name not in METRIC_INFO:
        valid = ", ".join(sorted(METRIC_INFO))
        raise E2URecError(f"unknown metric {column!r}; valid: {valid} (optionally split-prefixed)")
    return METRIC_INFO[name]
