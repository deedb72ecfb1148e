"""The choose-a-method table: for each setting, the approximate method nearest Retrain, the exact
option, what to avoid, and the seeds and signal verdict behind them, read from committed bench
results (results.json + signal.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

# (setting, results folder relative to the repository root, or None when no run is committed)
SETTINGS = (
    ("random users (privacy requests)", "docs/results/cpu-ml100k"),
    ("label-flipped users (pollution), tiny T5", "docs/results/demo"),
    ("label-flipped users (pollution), two seeds", "docs/results/cpu-ml100k-flip-influence"),
    ("pretrained base (MiniLM), label-flipped users", "docs/results/minilm"),
    ("core users (the most active)", "docs/results/cpu-ml100k-core-influence"),
    ("a real LLM (SmolLM2, LoRA), label-flipped users", "docs/results/smollm2"),
    ("shilling (fake) accounts", None),
)
EXACT = ("retrain", "sisa", "receraser", "apa")
UTILITY_LOSS = 0.02  # test AUC below the Original's by more than this counts as broken

HEADER = (
    "| setting | nearest Retrain (approximate): residual, test AUC, time ÷ Retrain "
    "| exact option: test AUC, time ÷ Retrain | avoid | seeds, signal |\n"
    "|---|---|---|---|---|\n"
)


def render_choose(root: Path) -> str:
    """One row per setting, then where the numbers come from."""
    rows = [_row(name, folder and root / folder) for name, folder in SETTINGS]
    sources = ", ".join(f"`{folder}`" for _, folder in SETTINGS if folder)
    return HEADER + "\n".join(rows) + f"\n\n*Rendered from {sources} by `tools/choose.py`.*\n"


def _row(name: str, folder: Path | None) -> str:
    if folder is None:
        return f"| {name} | no committed run | – | – | – |"
    from e2urec.report.tables import is_reference, summarise

    summary = summarise(json.loads((folder / "results.json").read_text(encoding="utf-8")))
    signal = json.loads((folder / "signal.json").read_text(encoding="utf-8"))
    methods = [m for m in summary.index if not is_reference(m)]
    exact = [m for m in methods if m.split("-")[0] in EXACT]
    approx = [m for m in methods if m not in exact]
    verdict = _verdict(signal)
    seeds = int(summary.at["original", "n_seeds"])
    return (
        f"| {name} | {_nearest(summary, approx)} | {_exact(summary, exact)} "
        f"| {_avoid(summary, approx)} | {seeds}, {verdict} |"
    )


FAILED = {
    "distance_ratio": "Original within 5 noise floors of Retrain",
    "ks_rejects": "KS test does not tell Original from Retrain",
    "original_hurt": "Original not hurt on test: utility cannot rank",
}


def _verdict(signal: dict) -> str:
    if signal["clear"] is None:
        return "unknown (one Retrain seed)"
    failed = [FAILED[name] for name, ok in signal["checks"].items() if ok is False]
    return "clear" if signal["clear"] else "**not clear**: " + "; ".join(failed)


def _mean(summary: pd.DataFrame, method: str, column: str) -> float:
    value = summary.get(f"{column}_mean", pd.Series(dtype=float)).get(method, math.nan)
    return float(value)


def _nearest(summary: pd.DataFrame, approx: list[str]) -> str:
    scored = [(m, _mean(summary, m, "forget_residual_jsd")) for m in approx]
    avoided = _avoid(summary, approx)
    scored = [(m, r) for m, r in scored if math.isfinite(r) and f"`{m}`" not in avoided]
    if not scored:
        return "–"
    method, residual = min(scored, key=lambda item: item[1])
    auc, ratio = _mean(summary, method, "test_auc"), _mean(summary, method, "time_ratio")
    return f"`{method}`: {residual:.2f}, {auc:.4f}, {ratio:.2f}×"


def _exact(summary: pd.DataFrame, exact: list[str]) -> str:
    """The exact method with the best test AUC (Retrain itself when no ensemble ran)."""
    candidates = [m for m in exact if m != "retrain"] or ["retrain"]
    method = max(candidates, key=lambda m: _mean(summary, m, "test_auc"))
    auc, ratio = _mean(summary, method, "test_auc"), _mean(summary, method, "time_ratio")
    return f"`{method}`: {auc:.4f}, {ratio:.2f}×"


def _avoid(summary: pd.DataFrame, approx: list[str]) -> str:
    """Approximate methods that end further from Retrain than the Original, or lose utility."""
    floor_auc = _mean(summary, "original", "test_auc") - UTILITY_LOSS
    notes = []
    for method in approx:
        residual, auc = (_mean(summary, method, c) for c in ("forget_residual_jsd", "test_auc"))
        reasons = [f"residual {residual:.2f}"] if residual > 1 else []
        reasons += [f"test AUC {auc:.4f}"] if auc < floor_auc else []
        if reasons:
            notes.append(f"`{method}` ({', '.join(reasons)})")
    return ", ".join(notes) or "none measured"
