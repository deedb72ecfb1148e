"""Pick influence's settings by a stated rule on validation data (never on Retrain distances).

For each edited set (--params), damping (--grid) and scale (--scales), unlearn the forget set
from the Original (one EK-FAC curvature per edited set, built once and reused from the
Original's folder) and score the valid split: the mean log-loss of P(Yes) against the labels.
Rule: the setting with the lowest validation log-loss; a tie within 0.001 goes to the larger
damping, then the smaller scale (the smaller step). Prints one JSON line per setting and the
choice. With --set search=valid each run picks its own step multiplier on validation rows (the
line shows it).

--retrain RUN adds diagnostics to each line, never read by the rule: the forget-set residual
(paper-JSD to that Retrain ÷ the Original's, full vocabulary and Yes/No only) and the test AUC.

    OMP_NUM_THREADS=1 python benchmarks/tune_influence.py --original RUN --data DATA \
        --work /tmp/tune [--params all,head] [--set mode=flip] [--retrain RETRAIN]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from e2urec.data.dataset import load_split
from e2urec.eval.metrics import auc, logloss, paper_jsd
from e2urec.eval.predict import score_rows
from e2urec.runs import load_run_model
from e2urec.unlearn import unlearn

GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def answer_logits(run: Path, rows: list[dict]) -> torch.Tensor:
    """First-answer-position logits [N, V] of a run on `rows`."""
    model = load_run_model(run)
    parts = []
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            batch = model.recommender.collate(rows[start : start + 64])
            parts.append(model.answer_logits(batch).float())
    return torch.cat(parts)


class Diagnostics:
    """Forget-set residuals against a Retrain and test AUC (reported, never used to choose)."""

    def __init__(self, original: Path, retrain: Path, data: str) -> None:
        self.forget = load_split(data, "forget").to_dict("records")
        self.test = load_split(data, "test").to_dict("records")
        model = load_run_model(retrain).recommender
        self.answers = [model.yes_id, model.no_id]
        self.reference = answer_logits(retrain, self.forget)
        self.base = self.distances(answer_logits(original, self.forget))

    def distances(self, logits: torch.Tensor) -> tuple[float, float]:
        vocab = float(paper_jsd(self.reference, logits).mean())
        pair = self.reference[:, self.answers], logits[:, self.answers]
        return vocab, float(paper_jsd(*pair).mean())

    def __call__(self, run: Path) -> dict[str, float]:
        vocab, yes_no = self.distances(answer_logits(run, self.forget))
        p_yes = score_rows(load_run_model(run), self.test, progress=False).p_yes
        return {
            "forget_residual": round(vocab / self.base[0], 4),
            "forget_residual_yes_no": round(yes_no / self.base[1], 4),
            "test_auc": round(auc([r["label"] for r in self.test], p_yes), 4),
        }


def valid_scores(run: Path, rows: list[dict]) -> tuple[float, float]:
    """Mean log-loss of P(Yes) and AUC on `rows`."""
    p = score_rows(load_run_model(run), rows, progress=False).p_yes
    labels = np.array([r["label"] for r in rows], dtype=float)
    return logloss(labels, p), auc(labels, p)


def one_setting(args: argparse.Namespace, out: Path, sets: list[str], rows: list[dict]) -> dict:
    """Unlearn with `sets`, score it, remove the run; its JSON line."""
    manifest = unlearn("influence", args.original, args.data, out, sets, overwrite=True)
    loss, valid_auc = valid_scores(out, rows)
    info = manifest["influence"]
    line = {
        "sets": sets,
        "valid_logloss": loss,
        "valid_auc": valid_auc,
        "relative_delta": info["relative_delta"],
        "step_multiplier": (info.get("search") or {}).get("multiplier"),
        "request_s": info["request_s"],
        "curvature_build_s": info["curvature_build_s"],
    }
    if args.diagnostics is not None:
        line["diagnostics_not_used_by_the_rule"] = args.diagnostics(out)
    shutil.rmtree(out)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--params", default="auto", help="comma-separated edited sets")
    parser.add_argument("--scales", default="1", help="comma-separated scales (default 1)")
    parser.add_argument("--grid", default=",".join(map(str, GRID)), help="comma-separated dampings")
    parser.add_argument("--retrain", help="a Retrain run: diagnostics only (see the docstring)")
    args = parser.parse_args()
    work = Path(args.work)
    rows = load_split(args.data, "valid").to_dict("records")
    args.diagnostics = (
        Diagnostics(Path(args.original), Path(args.retrain), args.data) if args.retrain else None
    )
    loss, valid_auc = valid_scores(Path(args.original), rows)
    print(json.dumps({"original": True, "valid_logloss": loss, "valid_auc": valid_auc}), flush=True)
    results = []
    for spec in args.params.split(","):
        for damping in [float(v) for v in args.grid.split(",")]:
            for scale in [float(v) for v in args.scales.split(",")]:
                sets = [*args.set, f"params={spec}", f"damping={damping}", f"scale={scale}"]
                out = work / f"{spec.replace(':', '-')}-damping-{damping}-scale-{scale}"
                line = one_setting(args, out, sets, rows)
                results.append((damping, -scale, spec, line["valid_logloss"]))
                print(json.dumps(line), flush=True)
    best = min(loss for *_, loss in results)
    damping, scale, spec, _ = max(r for r in results if r[3] <= best + 0.001)
    choice = {
        "chosen_params": spec,
        "chosen_damping": damping,
        "chosen_scale": -scale,
        "rule": "lowest valid log-loss; ties (0.001) to the larger damping, then smaller scale",
        "sets": args.set,
    }
    print(json.dumps(choice), flush=True)


if __name__ == "__main__":
    main()
