"""Metric functions against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from e2urec.errors import E2URecError
from e2urec.eval import metrics

P = np.log([[0.5, 0.5]])
Q = np.log([[0.9, 0.1]])
KL_PQ = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
KL_QP = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)


def test_p_yes_is_two_way_softmax() -> None:
    yes, no = np.array([2.0, -1.0, 0.0]), np.array([0.0, 1.0, 0.0])
    expected = torch.softmax(torch.tensor(np.stack([yes, no], 1)), dim=1)[:, 0].numpy()
    np.testing.assert_allclose(metrics.p_yes_from_logits(yes, no), expected)
    np.testing.assert_allclose(metrics.p_yes_from_logits(torch.tensor([1000.0]), [0.0]), [1.0])


def test_utility_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    p_yes = np.clip(0.3 * labels + 0.7 * rng.random(200), 0.0, 1.0)
    assert metrics.auc(labels, p_yes) == pytest.approx(roc_auc_score(labels, p_yes))
    assert metrics.logloss(labels, p_yes) == pytest.approx(
        log_loss(labels, np.clip(p_yes, 1e-7, 1 - 1e-7), labels=[0, 1])
    )
    assert metrics.auc(torch.tensor(labels), torch.tensor(p_yes)) == pytest.approx(
        roc_auc_score(labels, p_yes)
    )


def test_logloss_clips_and_handles_one_class() -> None:
    assert math.isfinite(metrics.logloss([1, 0], [0.0, 1.0]))
    assert metrics.logloss([1, 1], [0.5, 0.5]) == pytest.approx(math.log(2))


def test_acc_threshold() -> None:
    labels, p_yes = [1, 0, 1, 0], [0.5, 0.49, 0.7, 0.8]
    assert metrics.acc(labels, p_yes) == pytest.approx(0.75)
    assert metrics.acc(labels, p_yes, threshold=0.9) == pytest.approx(0.5)


def test_auc_single_class_is_nan_with_reason() -> None:
    with pytest.warns(RuntimeWarning, match="both classes"):
        assert math.isnan(metrics.auc([1, 1, 1], [0.2, 0.5, 0.9]))


@pytest.mark.parametrize(
    ("labels", "p_yes", "message"),
    [
        ([], [], "empty"),
        ([0, 1], [0.5], "differ"),
        ([0, 2], [0.1, 0.2], "0 or 1"),
        ([0, 1], [0.1, 1.5], r"\[0, 1\]"),
    ],
)
def test_bad_utility_inputs(labels, p_yes, message) -> None:
    with pytest.raises(E2URecError, match=message):
        metrics.acc(labels, p_yes)


def test_kl_and_paper_jsd_by_hand() -> None:
    assert metrics.kl(P, Q)[0] == pytest.approx(KL_PQ)
    assert metrics.paper_jsd(P, Q)[0] == pytest.approx(0.5 * KL_PQ + 0.5 * KL_QP)
    np.testing.assert_allclose(metrics.paper_jsd(P, Q), metrics.paper_jsd(Q, P))


def test_jsd_by_hand_and_bounds() -> None:
    # m = (p + q) / 2 = [0.7, 0.3]
    expected = 0.5 * (0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)) + 0.5 * (
        0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
    )
    assert metrics.jsd(P, Q)[0] == pytest.approx(expected)
    disjoint_p = torch.log(torch.tensor([[1.0, 0.0]]))
    disjoint_q = torch.log(torch.tensor([[0.0, 1.0]]))
    assert metrics.jsd(disjoint_p, disjoint_q)[0] == pytest.approx(math.log(2))
    assert math.isinf(metrics.paper_jsd(disjoint_p, disjoint_q)[0])
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0)) * 5
    values = metrics.jsd(logits, logits.flip(0))
    assert values.shape == (16,)
    assert (values >= 0).all() and (values <= math.log(2) + 1e-12).all()
    np.testing.assert_allclose(metrics.jsd(logits, logits), 0.0, atol=1e-12)
    np.testing.assert_allclose(metrics.paper_jsd(logits, logits), 0.0, atol=1e-12)


def test_l2_and_logits_equal_log_probs() -> None:
    assert metrics.l2(P, Q)[0] == pytest.approx(math.hypot(0.4, 0.4))
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    shifted = logits + 7.0  # softmax is shift-invariant: logits and log-probs agree
    np.testing.assert_allclose(metrics.l2(logits, shifted), 0.0, atol=1e-12)
    means = metrics.mean_divergences(P, Q)
    assert set(means) == {"paper_jsd", "jsd", "l2"}
    assert means["l2"] == pytest.approx(math.hypot(0.4, 0.4))


def test_divergence_shape_errors() -> None:
    with pytest.raises(E2URecError, match="differ in shape"):
        metrics.jsd(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(E2URecError, match=r"\[N, V\]"):
        metrics.l2(np.zeros((0, 3)), np.zeros((0, 3)))


def test_mia_auc() -> None:
    members, nonmembers = np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0])
    assert metrics.mia_auc(members, nonmembers) == pytest.approx(1.0)
    assert metrics.mia_auc(nonmembers, members) == pytest.approx(0.0)
    assert metrics.mia_auc(members, members) == pytest.approx(0.5)


def test_metric_info_directions() -> None:
    assert metrics.metric_info("test_auc").higher_is_better
    assert not metrics.metric_info("forget_paper_jsd").higher_is_better
    assert not metrics.metric_info("time_s").higher_is_better
    with pytest.raises(E2URecError, match="unknown metric"):
        metrics.metric_info("forget_bogus")
