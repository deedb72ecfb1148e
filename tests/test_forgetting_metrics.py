"""Forgetting evidence on hand-made inputs: margins, KS forget quality, residuals, PrivLeak,
utility recovery, the bench rows' relative metrics and the signal check."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from e2urec.errors import E2URecError
from e2urec.eval import evidence, metrics
from e2urec.report import forgetting, tables


def test_answer_margin_and_loss_by_hand():
    margin = metrics.answer_margin([1, 0, 1], [0.8, 0.8, 0.5])
    assert margin == pytest.approx([math.log(4), -math.log(4), 0.0])
    loss = metrics.answer_loss([1, 0], [0.8, 0.8])
    assert loss == pytest.approx([-math.log(0.8), -math.log(0.2)])


def test_ks_forget_quality_separates_same_from_shifted():
    rng = np.random.default_rng(0)
    a = rng.normal(size=400)
    assert metrics.ks_forget_quality(a, a) == pytest.approx(1.0)
    assert metrics.ks_forget_quality(a, rng.normal(size=400)) > 0.05
    assert metrics.ks_forget_quality(a, a + 1.0) < 1e-6
    with pytest.raises(E2URecError, match="nan"):
        metrics.ks_forget_quality([0.0, math.nan], [0.0, 1.0])


def test_residual_privleak_and_recovery_by_hand():
    assert metrics.residual(0.02, 0.08) == pytest.approx(0.25)
    assert math.isnan(metrics.residual(0.02, 0.0))
    with pytest.raises(E2URecError):
        metrics.residual(-1.0, 1.0)
    # MUSE orientation: our MIA AUC 0.7 (members recognisable) vs Retrain 0.5 → (0.3-0.5)/0.5
    assert metrics.privleak(0.7, 0.5) == pytest.approx(-0.4)
    assert metrics.privleak(0.5, 0.5) == 0.0
    assert metrics.privleak(0.4, 0.5) == pytest.approx(0.2)  # over-unlearned: positive
    assert metrics.utility_recovery(0.74, 0.70, 0.75) == pytest.approx(0.8)
    assert math.isnan(metrics.utility_recovery(0.7, 0.7, 0.7))


def test_membership_auc_and_forget_quality_on_tables():
    forget = pd.DataFrame({"id": [1, 2, 3], "label": [1, 0, 1], "p_yes": [0.99, 0.01, 0.98]})
    holdout = pd.DataFrame({"id": [7, 8], "label": [1, 0], "p_yes": [0.6, 0.45]})
    assert evidence.membership_auc(forget, holdout) == 1.0  # members have the lower losses
    assert evidence.forget_quality(forget, forget) == pytest.approx(1.0)
    with pytest.raises(E2URecError, match="different rows"):
        evidence.forget_quality(forget, holdout)
    items = pd.Series([10, 11, 10])
    assert evidence.mean_p_yes_on_items(forget, items, [10]) == pytest.approx(0.985)
    assert math.isnan(evidence.mean_p_yes_on_items(forget, items, [99]))


def _rows(original_jsd: float, floor_jsd: float, method_jsd: float) -> list[dict]:
    r0, r1 = "runs/retrain-seed0", "runs/retrain-seed1"
    return [
        {"method": "original", "seed": 0, "run": "runs/original", "reference": r0,
         "forget_paper_jsd": original_jsd, "forget_auc": 0.6, "reference_forget_auc": 0.3,
         "test_auc": 0.70, "forget_quality": 1e-9},
        {"method": "e2urec", "seed": 0, "run": "runs/e2urec-seed0", "reference": r0,
         "forget_paper_jsd": method_jsd, "forget_auc": 0.36, "test_auc": 0.74},
        {"method": "retrain", "seed": 0, "run": r0, "reference": r1, "test_auc": 0.75},
        {"method": "original", "seed": 1, "run": "runs/original", "reference": r1,
         "forget_paper_jsd": original_jsd, "forget_auc": 0.6, "reference_forget_auc": 0.3,
         "test_auc": 0.70, "forget_quality": 1e-9},
        {"method": "retrain", "seed": 1, "run": r1, "reference": r0, "test_auc": 0.75},
        {"method": "noise_floor", "seed": 0, "run": r0, "reference": r1,
         "forget_paper_jsd": floor_jsd, "forget_auc": 0.33},
    ]  # fmt: skip


def test_relative_metrics_use_the_original_of_the_same_reference():
    rows = forgetting.add_relative_metrics(_rows(0.08, 0.01, 0.02))
    original, method, floor = rows[0], rows[1], rows[5]
    assert original["forget_residual_jsd"] == 1.0 and original["utility_recovery"] == 0.0
    assert method["forget_residual_jsd"] == pytest.approx(0.25)
    assert method["forget_residual_auc"] == pytest.approx(0.06 / 0.3)
    assert method["utility_recovery"] == pytest.approx(0.8)
    assert floor["forget_residual_jsd"] == pytest.approx(0.125)
    assert floor["forget_residual_auc"] == pytest.approx(0.1)
    assert "utility_recovery" not in floor and "utility_recovery" not in rows[2]
    clean = forgetting.add_relative_metrics(_rows(0.08, 0.01, 0.02), recovery=False)
    assert not any("utility_recovery" in row for row in clean)  # only polluted settings


def test_signal_check_clear_and_not():
    clear = forgetting.signal_check(_rows(0.08, 0.01, 0.02), polluted="label-flip")
    assert clear["clear"] is True and clear["seeds"][0]["ratio_to_floor"] == pytest.approx(8.0)
    assert "Verdict: clear" in forgetting.signal_text(clear)
    weak = forgetting.signal_check(_rows(0.03, 0.01, 0.02))
    assert weak["clear"] is False and weak["checks"]["distance_ratio"] is False
    assert "within 5× of seed noise; this setting cannot rank methods" in forgetting.signal_text(
        weak
    )
    unhurt = _rows(0.08, 0.01, 0.02)
    for row in unhurt:
        if row["method"] == "retrain":
            row["test_auc"] = 0.71
    unhurt_check = forgetting.signal_check(unhurt, polluted="label-flip")
    assert unhurt_check["checks"]["original_hurt"] is False and unhurt_check["clear"] is False
    text = forgetting.signal_text(unhurt_check)
    assert "not hurt on test" in text and "can still be ranked on forgetting" in text
    assert "within 5× of seed noise" not in text
    one_seed = [r for r in _rows(0.08, 0.01, 0.02) if r["method"] != "noise_floor"]
    assert forgetting.signal_check(one_seed)["clear"] is None


def test_markdown_shows_evidence_columns_and_bolds_privleak_nearest_zero():
    rows = forgetting.add_relative_metrics(_rows(0.08, 0.01, 0.02))
    rows += [
        {"method": "neggrad", "seed": 0, "forget_paper_jsd": 0.05, "forget_privleak": -0.3},
        {"method": "e2urec", "seed": 1, "forget_privleak": 0.05},
    ]
    text = tables.to_markdown(tables.summarise(rows))
    header = text.splitlines()[0]
    assert "residual JSD" in header and "PrivLeak" in header and "target P(Yes)" not in header
    e2urec_line = next(line for line in text.splitlines() if line.startswith("| e2urec"))
    assert "**0.050**" in e2urec_line
