"""Result tables (mean ± std, reference rows, bold best) and PNG plots."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from e2urec.errors import E2URecError
from e2urec.report import plots, tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _row(method: str, seed: int, jsd: float, auc: float | None = None, **extra) -> dict:
    row = {"method": method, "seed": seed, "forget_paper_jsd": jsd, "forget_l2": 2 * jsd}
    if auc is not None:
        row.update(test_auc=auc, test_acc=auc - 0.05, test_logloss=0.6, time_s=10.0 * (seed + 1))
        row.update(time_ratio=0.5, trainable_params=1_500_000, trainable_pct=1.2)
    row.update(extra, run=f"runs/{method}/{seed}")
    return row


@pytest.fixture
def rows() -> list[dict]:
    return [
        _row("e2urec", 0, 0.010, 0.76),
        _row("e2urec", 1, 0.020, 0.78),
        _row("ft", 0, 0.050, 0.79),
        _row("ft", 1, 0.050, 0.79),
        _row("Original", 0, 0.300, 0.80),
        _row("Noise floor", 0, 0.001),
        _row("sisa", 0, 0.005, 0.70),
        _row("retrain", 0, 0.0, 0.81),
    ]


def test_summarise_orders_reference_rows_first(rows) -> None:
    summary = tables.summarise(rows)
    assert list(summary.index) == ["Noise floor", "Original", "retrain", "e2urec", "ft", "sisa"]
    assert summary.at["e2urec", "n_seeds"] == 2
    assert summary.at["e2urec", "forget_paper_jsd_mean"] == pytest.approx(0.015)
    assert summary.at["e2urec", "forget_paper_jsd_std"] == pytest.approx(math.sqrt(5e-5))
    assert math.isnan(summary.at["sisa", "test_auc_std"])
    assert "run_mean" not in summary.columns


def test_markdown_cells_and_bold_best(rows) -> None:
    lines = tables.to_markdown(tables.summarise(rows)).splitlines()
    # L2 stays in the CSV files; the Markdown table keeps the paper's JSD and the evidence
    # columns that have values (none of residual, KS p, PrivLeak here)
    assert lines[0].startswith("| method | forget paper-JSD | test AUC | ACC |")
    assert lines[2].startswith("| noise floor (Retrain vs Retrain) | 0.001000 | – |")
    assert lines[3].startswith("| Original | 0.3000 |")
    by_method = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:]}
    e2urec, ft, sisa = by_method["e2urec"], by_method["ft"], by_method["sisa"]
    assert e2urec[1] == "0.01500 ± 0.00707"  # mean ± sample std over two seeds
    assert sisa[1] == "**0.005000**"  # lowest JSD among unlearning methods, one seed
    assert ft[2] == "**0.7900 ± 0.0000**"  # highest AUC; Original/Retrain are not candidates
    assert not by_method["Original"][2].startswith("**")
    assert e2urec[7] == "1.5M (1.2%)"  # equal params everywhere → nothing better
    assert e2urec[-1] == "2 |"


def test_write_tables(tmp_path, rows) -> None:
    paths = tables.write_tables(rows, tmp_path / "out")
    assert len(pd.read_csv(paths["results_csv"])) == len(rows)
    assert pd.read_csv(paths["summary_csv"])["method"].iloc[0] == "Noise floor"
    assert "| Original |" in paths["results_md"].read_text()
    with pytest.raises(E2URecError, match="no result rows"):
        tables.write_tables([], tmp_path / "empty")


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_plots_write_pngs(tmp_path, rows) -> None:
    summary = tables.summarise(rows)
    assert _is_png(plots.plot_tradeoff(summary, tmp_path / "tradeoff.png"))
    assert _is_png(plots.plot_cost(summary, tmp_path / "cost.png"))
    with pytest.raises(E2URecError, match="test_auc"):
        plots.plot_tradeoff(summary.drop(columns=["test_auc_mean"]), tmp_path / "x.png")


def test_training_curves(tmp_path) -> None:
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    records = [{"step": s, "epoch": 0, "loss": 1 / (s + 1), "loss_forget": 0.5} for s in range(5)]
    records.append({"step": 5, "valid_loss": 0.4, "lr": 1e-5, "note": "eval"})
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert _is_png(plots.plot_training_curves(log, tmp_path / "curves.png"))
    log.write_text('{"step": 0, "loss": 1}\nnot json\n')
    with pytest.raises(E2URecError, match=":2: not valid JSON"):
        plots.plot_training_curves(log, tmp_path / "bad.png")
    with pytest.raises(E2URecError, match="not found"):
        plots.plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "m.png")
