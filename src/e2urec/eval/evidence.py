"""Forgetting evidence from per-row predictions (tables of id, label, p_yes in split order).

The pieces `e2urec eval` and the bench share: KS forget quality of a run against its Retrain on
the forget set, the loss-based membership AUC of forget rows against holdout users' rows (loss
MIA_LOSS, named next to the AUC as `mia_loss` in every output), and mean P(Yes) on a subset
of items (the shilling targets). Pure functions of the tables; the tables come from
`RUN/predictions/<split>.parquet` or from scoring in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.errors import E2URecError
from e2urec.eval import metrics, scoring
from e2urec.runs import PREDICTIONS_DIR


def read_predictions(run: str | Path, split: str) -> pd.DataFrame:
    """RUN/predictions/<split>.parquet (id, user_id, label, p_yes); missing → one clear error."""
    path = Path(run) / PREDICTIONS_DIR / f"{split}.parquet"
    if not path.is_file():
        raise E2URecError(f"no {split} predictions in {run} (run `e2urec eval` on that split)")
    return pd.read_parquet(path)


def _aligned(table: pd.DataFrame, reference: pd.DataFrame) -> None:
    if len(table) != len(reference) or not np.array_equal(
        table["id"].to_numpy(), reference["id"].to_numpy()
    ):
        raise E2URecError("the two prediction tables cover different rows; evaluate both on it")


def margins(table: pd.DataFrame) -> np.ndarray:
    """Per-row log P(label) − log P(other answer)."""
    return metrics.answer_margin(table["label"].to_numpy(), table["p_yes"].to_numpy())


def forget_quality(table: pd.DataFrame, reference: pd.DataFrame) -> float:
    """KS p-value between the run's and the reference's margins on the same forget rows."""
    _aligned(table, reference)
    return metrics.ks_forget_quality(margins(table), margins(reference))


MIA_LOSS = "yes_no"  # the loss a prediction table (label, P(Yes)) supports: see eval.scoring


def membership_auc(forget: pd.DataFrame, holdout: pd.DataFrame) -> float:
    """Loss-based MIA AUC (`scoring.membership_auc`, loss MIA_LOSS): forget rows (members)
    against holdout users' rows (non-members)."""
    return scoring.membership_auc(_stats(forget), _stats(holdout), MIA_LOSS)


def _stats(table: pd.DataFrame) -> dict[str, np.ndarray]:
    return scoring.yes_no_stats(table["label"].to_numpy(), table["p_yes"].to_numpy())


def mean_p_yes_on_items(table: pd.DataFrame, item_ids: pd.Series, items: list[int]) -> float:
    """Mean P(Yes) over the rows whose item (`item_ids`, aligned with `table`) is in `items`;
    nan when there is none."""
    chosen = np.isin(item_ids.to_numpy(), np.asarray(items))
    return float(table["p_yes"].to_numpy()[chosen].mean()) if chosen.any() else float("nan")
