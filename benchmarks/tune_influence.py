"""Pick influence's damping by a stated rule on validation data (never on Retrain distances).

For each damping of a grid (and each --scales value), unlearn the forget set from the Original (one EK-FAC curvature,
built once and reused from the Original's folder) and score the valid split: the mean log-loss
of P(Yes) against the labels. Rule: the setting with the lowest validation log-loss; a tie
within 0.001 goes to the larger damping, then the smaller scale (the smaller step). Prints one JSON line per damping
and the choice.

    OMP_NUM_THREADS=1 python benchmarks/tune_influence.py --original RUN --data DATA \
        --work /tmp/tune [--set mode=flip]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from e2urec.data.dataset import load_split
from e2urec.eval.predict import score_rows
from e2urec.runs import load_run_model
from e2urec.unlearn import unlearn

GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def valid_logloss(run: Path, rows: list[dict]) -> tuple[float, float]:
    """Mean log-loss of P(Yes) and AUC on `rows`."""
    from sklearn.metrics import roc_auc_score

    p = np.clip(score_rows(load_run_model(run), rows, progress=False).p_yes, 1e-7, 1 - 1e-7)
    y = np.array([r["label"] for r in rows], dtype=float)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()), float(roc_auc_score(y, p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--scales", default="1", help="comma-separated scales (default 1)")
    parser.add_argument("--grid", default=",".join(map(str, GRID)), help="comma-separated dampings")
    args = parser.parse_args()
    work = Path(args.work)
    rows = load_split(args.data, "valid").to_dict("records")
    loss, auc = valid_logloss(Path(args.original), rows)
    print(json.dumps({"damping": None, "valid_logloss": loss, "valid_auc": auc}), flush=True)
    results = []
    scales = [float(v) for v in args.scales.split(",")]
    for damping in [float(v) for v in args.grid.split(",")]:
        for scale in scales:
            out = work / f"damping-{damping}-scale-{scale}"
            manifest = unlearn(
                "influence",
                args.original,
                args.data,
                out,
                [*args.set, f"damping={damping}", f"scale={scale}"],
                overwrite=True,
            )
            loss, auc = valid_logloss(out, rows)
            info = manifest["influence"]
            results.append((damping, scale, loss))
            line = {
                "damping": damping,
                "scale": scale,
                "valid_logloss": loss,
                "valid_auc": auc,
                "relative_delta": info["relative_delta"],
                "request_s": info["request_s"],
                "curvature_build_s": info["curvature_build_s"],
            }
            print(json.dumps(line), flush=True)
            shutil.rmtree(out)
    best = min(loss for *_, loss in results)
    near = [(d, -sc) for d, sc, loss in results if loss <= best + 0.001]
    damping, scale = max(near)
    choice = {
        "chosen_damping": damping,
        "chosen_scale": -scale,
        "rule": "lowest valid log-loss; ties (0.001) to the larger damping, then smaller scale",
        "sets": args.set,
    }
    print(json.dumps(choice), flush=True)


if __name__ == "__main__":
    main()
