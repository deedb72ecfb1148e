"""Scoring time of an APA run against a single model (and a SISA ensemble) on the same rows.

The single model defaults to the APA run's own base (the same architecture, so the same cost).

Loads each run (not timed), then scores the first --rows rows of --split with the project's
scorer (`eval.predict.score_rows`, batch --batch-size, no reference) --repeats times and keeps
each run's fastest pass; prints seconds per row per run and the ratios to the single model.
APA's pass = one pass of the base trunk without its LM head (the row's representation) + one
pass with the K adapters mixed per row (`apa`: the LM head at the answer position only, as APA
scores; `apa-full`: at every position, as the single model's scorer does); SISA runs its K
members.

    .venv/bin/python benchmarks/bench_apa.py --data DATA --single RUN --apa RUN [--sisa RUN]
"""

from __future__ import annotations

import argparse
import time

import torch

from e2urec import mixture
from e2urec.backbones import load_recommender
from e2urec.data.dataset import load_split
from e2urec.eval.predict import score_rows
from e2urec.quiet import quiet_transformers
from e2urec.runs import SingleModel, load_run_model


def base_model(folder: str) -> SingleModel:
    """A saved recommender folder (an APA run's base) scored as a single model."""
    return SingleModel(load_recommender(folder))


@quiet_transformers()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared data folder")
    parser.add_argument(
        "--single", help="a single-model run (default: the APA run's base as a single model)"
    )
    parser.add_argument("--apa", required=True, help="an APA run")
    parser.add_argument("--sisa", help="a SISA (or RecEraser) run, optional")
    parser.add_argument("--split", default="test")
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = load_split(args.data, args.split).to_dict("records")[: args.rows]
    runs = {"single": args.single or f"{args.apa}/base", "apa": args.apa, "apa-full": args.apa}
    if args.sisa:
        runs["sisa"] = args.sisa
    seconds = {}
    saved_heads = dict(mixture.ANSWER_HEADS)
    for name, path in runs.items():
        model = load_run_model(path) if name != "single" or args.single else base_model(path)
        # apa-full: the mixed pass runs the LM head at every position, as the single model does
        heads = {} if name == "apa-full" else saved_heads
        mixture.ANSWER_HEADS.clear()
        mixture.ANSWER_HEADS.update(heads)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            with torch.no_grad():
                score_rows(model, rows, args.batch_size, progress=False)
            best = min(best, time.perf_counter() - start)
        seconds[name] = best
        print(
            f"{name:7s} {best:8.2f} s for {len(rows)} rows ({1000 * best / len(rows):.1f} ms/row)"
        )
    for name in runs:
        if name != "single":
            print(f"{name} / single: {seconds[name] / seconds['single']:.2f}x")


if __name__ == "__main__":
    main()
