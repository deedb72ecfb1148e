"""The stream bench's yardsticks: the Original and the matched-prefix Retrains, each scored
once, and the measurements of a served model at a checkpoint against them (see `stream`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from e2urec.eval import evidence, metrics
from e2urec.eval.predict import score_rows
from e2urec.report.tables import ORIGINAL

BATCH = 64


@dataclass
class Reference:
    """One checkpoint's matched Retrain and what the checkpoint's measures reuse."""

    model: Any
    forget: list[dict[str, Any]]
    test_p_yes: np.ndarray
    mia_auc: float
    original_paper_jsd: float
    original_mia_auc: float


def _scores(model: Any, rows: list[dict[str, Any]], reference: Any = None) -> Any:
    return score_rows(model, rows, BATCH, reference=reference, progress=False)


def _table(rows: list[dict[str, Any]], p_yes: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"label": [r["label"] for r in rows], "p_yes": p_yes})


class References:
    """The Original and the matched Retrain of every checkpoint of stream `stream`."""

    def __init__(self, stream: Any, users: list[int]) -> None:
        from e2urec.data.dataset import load_split, split_names
        from e2urec.data.prepare import HOLDOUT
        from e2urec.quiet import quiet_transformers
        from e2urec.runs import load_run_model

        self.stream, self.users = stream, users
        data = stream.data_dir
        self.train = load_split(data, "train").to_dict("records")
        self.test = load_split(data, "test").to_dict("records")
        has_holdout = HOLDOUT in split_names(data)
        self.holdout = load_split(data, HOLDOUT).to_dict("records") if has_holdout else []
        with quiet_transformers():
            self.original = load_run_model(stream.bench.run_dir(ORIGINAL))
        self.original_test = _scores(self.original, self.test).p_yes
        self.original_holdout = self._holdout(self.original)
        self.cache: dict[int, Reference] = {}

    def _holdout(self, model: Any) -> np.ndarray | None:
        return _scores(model, self.holdout).p_yes if self.holdout else None

    def _mia(self, forget: list[dict], p_yes: np.ndarray, holdout: np.ndarray | None) -> float:
        if holdout is None:
            return float("nan")
        return evidence.membership_auc(_table(forget, p_yes), _table(self.holdout, holdout))

    def reference(self, k: int) -> Reference:
        """Checkpoint `k`'s matched Retrain, scored (once)."""
        from e2urec.quiet import quiet_transformers
        from e2urec.runs import load_run_model

        if k not in self.cache:
            with quiet_transformers():
                model = load_run_model(self.stream.retrain_dir(k))
            gone = set(self.users[:k])
            forget = [r for r in self.train if r["user_id"] in gone]
            retrain_forget = _scores(model, forget)
            original = _scores(self.original, forget, reference=model)
            self.cache[k] = Reference(
                model,
                forget,
                _scores(model, self.test).p_yes,
                self._mia(forget, retrain_forget.p_yes, self._holdout(model)),
                float(np.mean(original.distances["vocab"]["paper_jsd"])),
                self._mia(forget, original.p_yes, self.original_holdout),
            )
        return self.cache[k]

    def summary(self) -> list[dict[str, Any]]:
        """Per checkpoint: the matched Retrain's and the Original's test AUC, the Original's
        paper-JSD from the Retrain on the forgotten rows and its PrivLeak."""
        labels = [r["label"] for r in self.test]
        out = []
        for k in self.stream.marks:
            ref = self.reference(k)
            out.append(
                {
                    "requests": k,
                    "forgotten_rows": len(ref.forget),
                    "retrain_test_auc": metrics.auc(labels, ref.test_p_yes),
                    "original_test_auc": metrics.auc(labels, self.original_test),
                    "original_paper_jsd": ref.original_paper_jsd,
                    "original_privleak": _privleak(ref.original_mia_auc, ref.mia_auc),
                    "retrain_mia_auc": ref.mia_auc,
                }
            )
        return out

    def measure(self, k: int, served: Any) -> dict[str, Any]:
        """The served model after `k` requests against checkpoint `k`'s matched Retrain and the
        Original: residual paper-JSD on the forgotten rows, test AUC, PrivLeak, and the mean
        |ΔP(Yes)| on the test rows of users still retained (drift)."""
        ref = self.reference(k)
        forget = _scores(served, ref.forget, reference=ref.model)
        test = _scores(served, self.test).p_yes
        distance = float(np.mean(forget.distances["vocab"]["paper_jsd"]))
        kept = np.array([r["user_id"] not in set(self.users[:k]) for r in self.test])
        mia = self._mia(ref.forget, forget.p_yes, self._holdout(served))
        return {
            "requests": k,
            "forget_paper_jsd": distance,
            "residual": metrics.residual(distance, ref.original_paper_jsd),
            "test_auc": metrics.auc([r["label"] for r in self.test], test),
            "privleak": _privleak(mia, ref.mia_auc),
            "drift_retrain": float(np.mean(np.abs(test - ref.test_p_yes)[kept])),
            "drift_original": float(np.mean(np.abs(test - self.original_test)[kept])),
        }


def _privleak(mia: float, retrain_mia: float) -> float | None:
    if np.isnan(mia) or np.isnan(retrain_mia):
        return None
    return metrics.privleak(mia, retrain_mia)
