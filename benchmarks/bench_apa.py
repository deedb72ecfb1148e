"""Scoring time of an APA run against a single model (and a SISA ensemble) on the same rows.

The single model defaults to the APA run's own base (the same architecture, so the same cost).

Loads each run (not timed), then scores the first --rows rows of --split with the project's
scorer (`eval.predict.score_rows`, batch --batch-size, no reference) --repeats times, the runs
taking turns, and keeps each run's fastest pass; prints seconds per row per run and the ratios
to the single model.
APA's pass = one pass of the base trunk without its LM head (the row's representation) + one
pass with the K adapters mixed per row (`apa`: the LM head at the answer position only, as APA
scores; `apa-full`: at every position, as the single model's scorer does); SISA runs its K
members. `--tau T` scores the APA run with another temperature (τ = 0 skips the representation
pass); `--represent-layers L ...` adds a row `apa-L` per L whose representation runs the base's
first L blocks only (`train-ensemble --represent-layers`). Those rows time the cost only: the
run's stored valid representations keep their own depth, so their weights are not the ones a
run trained with L would give.

    .venv/bin/python benchmarks/bench_apa.py --data DATA --single RUN --apa RUN [--sisa RUN] \
        [--tau 1000] [--represent-layers 1 2]

With --delete: the time of a single-user deletion against Retrain, side by side in one process.
For each chosen train user (--users; default: the users in the fewest shards, fewest rows
first, at most --max-users), APA unlearns the user from the run (`unlearn_apa`, API level:
the base loaded, the touched adapters retrained, their validation errors refreshed, the run
written), and a Retrain is trained with full fine-tuning on the train rows without the user
(the APA run's recipe: epochs, batch size, keep, max length, seed; `--retrain-lr`), built,
trained and saved. Prints each wall time, APA's phases and the ratio to 1.5/K.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

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


def users_by_shards(run: Path, train: list[dict]) -> list[tuple[int, int, list[int]]]:
    """(user, rows, shards) of every train user, those in the fewest shards first, then those
    with the fewest rows."""
    partition = json.loads((run / "partition.json").read_text())
    shard = dict(zip(partition["ids"], partition["shards"], strict=True))
    spans: dict[int, list[int]] = {}
    for row in train:
        spans.setdefault(int(row["user_id"]), []).append(shard[row["id"]])
    found = [(u, len(s), sorted(set(s))) for u, s in spans.items()]
    return sorted(found, key=lambda t: (len(t[2]), t[1], t[0]))


def retrain_seconds(
    data: str, rows: list[dict], recipe: dict, lr: float | None, out: Path
) -> float:
    """Wall seconds of a Retrain on `rows`: build, full fine-tuning with the recipe, save."""
    from e2urec.backbones import save_recommender
    from e2urec.train.cost import CostMeter
    from e2urec.train.recipes import fit_supervised, recipe_loop

    start = time.perf_counter()
    loop = recipe_loop(
        recipe["backbone"],
        "full",
        lr=lr,
        epochs=recipe["epochs"],
        batch_size=recipe["batch_size"],
        keep="last",
        seed=recipe["seed"],
        max_steps=recipe["max_steps"],
    )
    recommender, _ = fit_supervised(
        Path(data),
        rows,
        None,
        recipe["backbone"],
        loop,
        out,
        max_length=recipe["max_length"],
        init_seed=recipe["init_seed"],
        meter=CostMeter(),
    )
    save_recommender(recommender, out / "model")
    return time.perf_counter() - start


def delete(args: argparse.Namespace) -> None:
    """Single-user deletions by APA against a Retrain without the user (see the docstring)."""
    from e2urec.methods import UnlearnContext
    from e2urec.methods.apa import APAParams, unlearn_apa
    from e2urec.train.cost import CostMeter

    run = Path(args.apa)
    manifest = json.loads((run / "manifest.json").read_text())
    train = load_split(args.data, "train").to_dict("records")
    k = len(manifest["adapters"])
    users = users_by_shards(run, train)
    if args.users:
        users = [u for u in users if u[0] in args.users]
    work = Path(tempfile.mkdtemp(prefix="bench-apa-"))
    recipe = manifest["recipe"]
    print(f"APA run {run}: K = {k}, epochs {recipe['epochs']}, lr {recipe['lr']}")
    for user, n, shard in users[: args.max_users]:
        out = work / f"apa-{user}"
        out.mkdir()
        meter = CostMeter()
        ctx = UnlearnContext(
            run, manifest, Path(args.data), out, manifest["seed"], meter, APAParams()
        )
        ctx._rows["forget"] = [r for r in train if r["user_id"] == user]
        start = time.perf_counter()
        fields = unlearn_apa(ctx)
        apa_s = time.perf_counter() - start
        rows = [r for r in train if r["user_id"] != user]
        retrain_s = retrain_seconds(args.data, rows, recipe, args.retrain_lr, work / f"rt-{user}")
        phases = ", ".join(f"{name} {s:.1f} s" for name, s in meter.phases.items())
        print(
            f"user {user} ({n} rows, shards {shard}): APA retrained {fields['retrained_shards']} "
            f"in {apa_s:.1f} s ({phases}); Retrain on {len(rows)} rows {retrain_s:.1f} s; "
            f"ratio {apa_s / retrain_s:.3f} (target <= 1.5/K = {1.5 / k:.3f})",
            flush=True,
        )
    shutil.rmtree(work, ignore_errors=True)


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
    parser.add_argument("--tau", type=float, help="score APA at this temperature instead")
    parser.add_argument(
        "--represent-layers", type=int, nargs="*", default=[], help="extra apa-L rows (timing)"
    )
    parser.add_argument("--delete", action="store_true", help="time single-user deletions")
    parser.add_argument("--users", type=int, nargs="*", help="--delete: these train users")
    parser.add_argument("--max-users", type=int, default=2, help="--delete: at most this many")
    parser.add_argument("--retrain-lr", type=float, help="--delete: the Retrain's rate")
    args = parser.parse_args()
    if args.delete:
        delete(args)
        return
    rows = load_split(args.data, args.split).to_dict("records")[: args.rows]
    runs = {"single": args.single or f"{args.apa}/base", "apa": args.apa, "apa-full": args.apa}
    runs.update({f"apa-L{depth}": args.apa for depth in args.represent_layers})
    if args.sisa:
        runs["sisa"] = args.sisa
    saved_heads = dict(mixture.ANSWER_HEADS)
    models = {}
    for name, path in runs.items():
        model = load_run_model(path) if name != "single" or args.single else base_model(path)
        if name.startswith("apa"):
            model.tau = model.tau if args.tau is None else args.tau
            depth = name.removeprefix("apa-L")
            model.represent_layers = int(depth) if depth.isdigit() else model.represent_layers
        models[name] = model
    seconds = dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeats):  # round robin: a load change on the machine hits every run
        for name, model in models.items():
            # apa-full: the mixed pass runs the LM head at every position, as the single model
            mixture.ANSWER_HEADS.clear()
            mixture.ANSWER_HEADS.update({} if name == "apa-full" else saved_heads)
            start = time.perf_counter()
            with torch.no_grad():
                score_rows(model, rows, args.batch_size, progress=False)
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    for name, best in seconds.items():
        print(
            f"{name:8s} {best:8.2f} s for {len(rows)} rows ({1000 * best / len(rows):.1f} ms/row)"
        )
    for name in runs:
        if name != "single":
            print(f"{name} / single: {seconds[name] / seconds['single']:.2f}x")


if __name__ == "__main__":
    main()
