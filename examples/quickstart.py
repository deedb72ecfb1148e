"""e2urec from Python, end to end on a small synthetic dataset (a few minutes on a laptop CPU).

Experiment: prepare → train an Original and a Retrain → unlearn the forget set → evaluate.
Deployment: deploy the Original → forget one user → audit the files → read the ledger.

    python examples/quickstart.py --out /tmp/quickstart [--steps 20]

`--steps` caps every training run (the test runs it with 2); drop it for full epochs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from e2urec import api
from e2urec.data.prepare import PrepareConfig


def experiment(out: Path, steps: int | None) -> Path:
    """Prepare data, train Original and Retrain, unlearn with E2URec, evaluate; returns data."""
    api.synthesize(out / "raw", n_users=60, n_items=80, n_ratings=3000, seed=0)
    data = out / "data"
    api.prepare(
        PrepareConfig(
            dataset="synthetic", raw=str(out / "raw"), out=str(data), last_n=600,
            history_len=3, shards=2, holdout_ratio=0.1,
        )
    )  # fmt: skip
    fast = {"epochs": 1, "max_steps": steps, "batch_size": 8}
    api.train(data, "train", "t5-tiny", out / "original", **fast)
    api.train(data, "retain", "t5-tiny", out / "retrain", **fast)
    sets = ["epochs=1", "aug_epochs=1"] + ([f"max_steps={steps}"] if steps else [])
    api.unlearn("e2urec", out / "original", data, out / "e2urec", sets=sets)
    metrics = api.evaluate(out / "e2urec", data, reference=out / "retrain")
    for split, entry in metrics["splits"].items():
        print(f"{split}: AUC {entry['auc']:.4f}, LogLoss {entry['logloss']:.4f}")
    return data


def deletion(out: Path, data: Path, steps: int | None) -> None:
    """Deploy the Original, forget one retained user, audit the folder, print the ledger."""
    dep = api.deploy(out / "original", data, out / "deployment").path
    with (data / "retain.jsonl").open(encoding="utf-8") as rows:
        user = json.loads(rows.readline())["user_id"]
    sets = ["epochs=1", "aug_epochs=1"] + ([f"max_steps={steps}"] if steps else [])
    result = api.forget(dep, [user], sets=sets, reason="user request")
    print(f"forget user {user}: {result.status}")
    print(f"audit: {api.audit(dep, user).traces} traces of user {user}")
    for entry in api.ledger(dep):
        print(entry["seq"], entry["kind"], entry.get("version"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    data = experiment(args.out, args.steps)
    deletion(args.out, data, args.steps)


if __name__ == "__main__":
    main()
