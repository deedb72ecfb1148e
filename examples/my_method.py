"""Add your own unlearning method: random labels, registered through the public API.

Random labels (Graves et al., "Amnesiac Machine Learning", AAAI 2021) fine-tune the original on
the forget rows with a random Yes./No. answer each, beside the retained rows:

    loss = CE(retain) + forget_weight · CE(forget rows with random answers)

Run it:  python examples/my_method.py --from RUN --data DIR --out RUN [--reference RETRAIN]
"""

# --8<-- [start:method]
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from e2urec import api
from e2urec.config import setting
from e2urec.methods import Method, TrainParams, UnlearnContext
from e2urec.methods.gradient import GradientTask, train_original


@dataclass
class RandomLabelParams(TrainParams):
    """loss = CE(retain) + forget_weight·CE(forget, random answers); all weights train."""

    forget_weight: float = setting(1.0, "weight of the random-answer CE", rule="non-negative")


def run(ctx: UnlearnContext) -> dict[str, Any]:
    """Fine-tune the original towards random answers on the forget rows."""
    rng = random.Random(ctx.seed)
    relabelled = []
    for row in ctx.rows("forget"):
        label = rng.randint(0, 1)
        relabelled.append({**row, "label": label, "target": "Yes." if label else "No."})
    recommender = ctx.original()
    streams = {"retain": ctx.rows("retain"), "forget": relabelled}
    weights = {"retain": 1.0, "forget": ctx.params.forget_weight}
    return train_original(ctx, GradientTask(recommender, streams, weights), recommender)


api.register_method(
    Method(
        name="random-labels",
        params=RandomLabelParams,
        run=run,
        description="CE on retain plus CE towards random Yes/No answers on forget",
        source="examples/my_method.py",
    )
)
# --8<-- [end:method]


# --8<-- [start:main]
def main(argv: list[str] | None = None) -> int:
    """Unlearn with random labels, then evaluate (against a Retrain run when given)."""
    import argparse
    import sys

    from e2urec.errors import E2URecError

    p = argparse.ArgumentParser(description="unlearn with random labels, then evaluate")
    p.add_argument("--from", dest="base", required=True, help="original run")
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--reference", help="Retrain run to measure the forget-set distance to")
    p.add_argument("--set", action="append", default=[], help="parameter, e.g. forget_weight=2")
    args = p.parse_args(argv)
    try:
        api.unlearn("random-labels", args.base, args.data, args.out, sets=args.set)
        metrics = api.evaluate(args.out, args.data, args.reference, progress=False)
    except E2URecError as exc:
        print(f"e2urec: error: {exc}", file=sys.stderr)
        return 2
    for split, entry in metrics["splits"].items():
        print(f"{split}: AUC {entry['auc']:.4f}, LogLoss {entry['logloss']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
# --8<-- [end:main]
