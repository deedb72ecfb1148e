"""Relative forgetting metrics across bench rows, and the setting's signal check.

Rows are the bench's (one per method × seed, plus Original, Retrain and noise-floor rows); each
holds `reference` (the Retrain run it was compared with), `forget_paper_jsd`, `forget_auc`,
`reference_forget_auc` and `test_auc`. This module adds what needs two rows at once:

* `forget_residual_jsd` = d(row, Retrain) / d(Original, Retrain), with the Original's row of the
  same reference; on the noise-floor row this is the floor d(Retrain_a, Retrain_b) / d(O, R).
* `forget_residual_auc` = |AUC_f(row) − AUC_f(Retrain)| / |AUC_f(Original) − AUC_f(Retrain)|.
* `utility_recovery` = (AUC(row) − AUC(Original)) / (AUC(Retrain) − AUC(Original)) on test.

The signal check says whether the setting can rank methods at all: the Original must sit
clearly further from Retrain than two Retrains sit from each other (distance ratio ≥ 5, KS test
rejecting at 0.05 in every seed) and, in polluted settings, be measurably hurt on test
(AUC(Original) ≤ AUC(Retrain) − 0.02).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from e2urec.eval import metrics
from e2urec.report.tables import NOISE_FLOOR, ORIGINAL, RETRAIN, method_key

MIN_DISTANCE_RATIO = 5.0
KS_ALPHA = 0.05
MIN_AUC_HURT = 0.02


def add_relative_metrics(rows: list[dict[str, Any]], recovery: bool = True) -> list[dict[str, Any]]:
    """The rows with residuals (and, when `recovery`, utility recovery: meaningful only where
    the Original is polluted) added; new dicts, the inputs untouched."""
    originals = {r["reference"]: r for r in rows if method_key(r["method"]) == ORIGINAL}
    retrain_test_auc = {r["run"]: r.get("test_auc") for r in rows if _is(r, RETRAIN)}
    out = []
    for row in rows:
        row = dict(row)
        original = originals.get(row.get("reference"))
        if original is not None:
            d, d_orig = row.get("forget_paper_jsd"), original.get("forget_paper_jsd")
            if d is not None and d_orig is not None:
                row["forget_residual_jsd"] = metrics.residual(d, d_orig)
            ref_auc = original.get("reference_forget_auc")
            if _finite(row.get("forget_auc"), original.get("forget_auc"), ref_auc):
                row["forget_residual_auc"] = metrics.residual(
                    abs(row["forget_auc"] - ref_auc), abs(original["forget_auc"] - ref_auc)
                )
            auc_retrain = retrain_test_auc.get(row["reference"])
            if (
                recovery
                and not (_is(row, NOISE_FLOOR) or _is(row, RETRAIN))
                and _finite(row.get("test_auc"), original.get("test_auc"), auc_retrain)
            ):
                row["utility_recovery"] = metrics.utility_recovery(
                    row["test_auc"], original["test_auc"], auc_retrain
                )
        out.append(row)
    return out


def signal_check(rows: list[Mapping[str, Any]], polluted: str = "none") -> dict[str, Any]:
    """Whether the Original differs from Retrain beyond seed noise (and, if polluted, is hurt).

    Per seed: distance ratio d(Original, Retrain) / floor and the KS p-value of their forget
    margins; the floor is the mean noise-floor distance. `clear` needs every criterion to hold;
    without two Retrain seeds there is no floor and `clear` is None (unknown).
    """
    floors = [r["forget_paper_jsd"] for r in rows if _is(r, NOISE_FLOOR)]
    originals = [r for r in rows if _is(r, ORIGINAL)]
    floor = float(np.mean(floors)) if floors else None
    seeds = []
    for row in originals:
        ratio = row["forget_paper_jsd"] / floor if floor else None
        seeds.append(
            {
                "seed": row["seed"],
                "distance": row["forget_paper_jsd"],
                "ratio_to_floor": ratio,
                "ks_p": row.get("forget_quality"),
                "test_auc_gap": _auc_gap(row, rows),
            }
        )
    checks: dict[str, bool | None] = {
        "distance_ratio": None
        if floor is None
        else all(s["ratio_to_floor"] >= MIN_DISTANCE_RATIO for s in seeds),
        "ks_rejects": all(s["ks_p"] is not None and s["ks_p"] < KS_ALPHA for s in seeds),
    }
    if polluted != "none":
        checks["original_hurt"] = all(
            s["test_auc_gap"] is not None and s["test_auc_gap"] >= MIN_AUC_HURT for s in seeds
        )
    clear = None if None in checks.values() else all(checks.values())
    return {"floor": floor, "polluted": polluted, "seeds": seeds, "checks": checks, "clear": clear}


def signal_text(signal: Mapping[str, Any]) -> str:
    """One paragraph for results.md stating the signal check and what it means."""
    parts = []
    for s in signal["seeds"]:
        ratio = "–" if s["ratio_to_floor"] is None else f"{s['ratio_to_floor']:.1f}×"
        text = f"seed {s['seed']}: Original {s['distance']:.4g} ({ratio} the floor), KS p "
        text += "–" if s["ks_p"] is None else f"{s['ks_p']:.2g}"
        if signal["polluted"] != "none" and s["test_auc_gap"] is not None:
            text += f", test AUC {s['test_auc_gap']:.3f} below Retrain"
        parts.append(text)
    floor = "none (one seed)" if signal["floor"] is None else f"{signal['floor']:.4g}"
    verdict = {
        True: "clear: the Original differs from Retrain beyond seed noise, so this setting can "
        "rank methods",
        False: f"NOT clear: {_failures(signal['checks'])}",
        None: "unknown: a noise floor needs two Retrain seeds",
    }[signal["clear"]]
    return (
        f"Signal check (paper-JSD on the forget set; floor = Retrain vs Retrain {floor}; needs "
        f"≥ {MIN_DISTANCE_RATIO:g}× the floor and KS p < {KS_ALPHA:g}"
        + (
            f" and test AUC ≥ {MIN_AUC_HURT:g} below Retrain"
            if signal["polluted"] != "none"
            else ""
        )
        + f"): {'; '.join(parts)}. Verdict: {verdict}.\n"
    )


def _failures(checks: Mapping[str, bool | None]) -> str:
    """What a failed signal check means, by which checks failed: without distance or KS the
    setting cannot rank forgetting; an Original that is only not hurt still can."""
    failed = [name for name, ok in checks.items() if ok is False]
    reasons = {
        "distance_ratio": f"the Original is within {MIN_DISTANCE_RATIO:g}× of seed noise",
        "ks_rejects": "the KS test does not tell the Original's forget margins from Retrain's",
        "original_hurt": f"the polluted Original is not hurt on test (AUC gap < {MIN_AUC_HURT:g}), "
        "so utility recovery means little",
    }
    text = "; ".join(reasons[name] for name in failed)
    if failed == ["original_hurt"]:
        return text + "; the forgetting signal holds, so methods can still be ranked on forgetting"
    return text + "; this setting cannot rank methods on forgetting"


def _auc_gap(original: Mapping[str, Any], rows: list[Mapping[str, Any]]) -> float | None:
    retrain = next((r for r in rows if _is(r, RETRAIN) and r["run"] == original["reference"]), None)
    if retrain is None or not _finite(retrain.get("test_auc"), original.get("test_auc")):
        return None
    return float(retrain["test_auc"] - original["test_auc"])


def _is(row: Mapping[str, Any], kind: str) -> bool:
    return method_key(row["method"]) == kind


def _finite(*values: Any) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)
