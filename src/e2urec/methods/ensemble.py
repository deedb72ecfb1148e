"""Shard ensembles (SISA, RecEraser): one model per shard, an aggregate, exact unlearning.

Run format "ensemble" (loaded by `runs.load_run_model`): `members/shard-K/` (save_recommender
folders), manifest "members" (name, path, samples, forget_samples, sha256 of the weights),
"ensemble" (sisa | receraser), "aggregate" (mean | attention; attention weights in
`aggregator.safetensors`) and "recipe" (the member training settings, reused when unlearning).

Original ensembles are trained on shards that include the forget samples; `data prepare` writes
the shards without them, so each method rebuilds its original shards from the prepared data
(`ORIGINAL_SHARDS`, filled by `sisa.original_shards` and `receraser.original_shards`).
Unlearning retrains, with the same recipe (and the unlearning run's seed), only the members
whose original shard held forget samples, on the prepared (retained) shard, and links the other
members' files unchanged (hardlink, else a copy) whatever the seed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from e2urec.artifacts import model_sha256
from e2urec.backbones import load_recommender, save_recommender
from e2urec.config import check_settings, setting
from e2urec.errors import E2URecError
from e2urec.quiet import quiet_transformers
from e2urec.registry import Registry
from e2urec.runs import AGGREGATOR, AttentionAggregator, EnsembleModel
from e2urec.train.options import Seeded, SupervisedSettings

MEMBERS_DIR = "members"
# ensemble kind → function(data_dir) giving its original shards and their forget-sample counts
ORIGINAL_SHARDS: Registry[Callable[[Path], tuple[list[list[dict[str, Any]]], list[int]]]] = (
    Registry("ensemble method")
)
# ensemble kind → (its recipe class, trainer(data_dir, out, recipe, overwrite)) for kinds that
# `train_ensemble` does not build from ORIGINAL_SHARDS (APA: methods.apa)
TRAINERS: Registry[tuple[type, Callable[..., dict[str, Any]]]] = Registry("ensemble method")
Rows = Sequence[dict[str, Any]]


@dataclass
class Recipe(Seeded, SupervisedSettings):
    """How every member is trained (`train.options.SupervisedSettings`: the paper's supervised
    recipe, early stopping on valid), and for RecEraser how the attention aggregator is fitted
    (full-batch Adam on valid)."""

    agg_hidden: int = setting(
        16, "RecEraser: hidden units of the attention aggregator", rule="count"
    )
    agg_epochs: int = setting(
        200, "RecEraser: full-batch Adam steps of the aggregator", rule="count"
    )
    agg_lr: float = setting(0.01, "RecEraser: the aggregator's Adam learning rate", rule="positive")

    def loop_config(self, where: str = "") -> Any:
        """The members' loop settings (`recipes.recipe_loop`: checked, lr default by family)."""
        from e2urec.train.recipes import recipe_loop

        return recipe_loop(self, self.finetune, where)

    def check(self, where: str = "") -> None:
        """One clear error for the first setting out of range (before anything is written);
        errors start with `where`."""
        self.loop_config(where)
        check_settings(self, where)


def require_rows(name: str, rows: Rows) -> None:
    """A member without training rows is one clear error."""
    if not rows:
        raise E2URecError(f"ensemble member {name} has no training rows; use fewer shards")


def train_member(
    data_dir: Path,
    rows: Rows,
    recipe: Recipe,
    folder: Path,
    run_dir: Path,
    name: str,
    meter: Any,
    built: Any = None,
) -> int:
    """Train one member with the supervised recipe (`recipes.fit_supervised`, starting from
    `built` when given) on `rows`, save it in `folder`; returns its parameter count."""
    from e2urec.train.recipes import fit_supervised, validation_rows

    require_rows(name, rows)
    loop = recipe.loop_config()
    recommender, _ = fit_supervised(
        data_dir,
        rows,
        validation_rows(data_dir, loop),
        recipe.backbone,
        loop,
        run_dir,
        max_length=recipe.max_length,
        init_seed=recipe.init_seed,
        meter=meter,
        finetune=recipe.finetune,
        desc=name,
        built=built,
    )
    save_recommender(recommender, folder)
    return sum(p.numel() for p in recommender.model.parameters())


def link_member(source: Path, target: Path) -> None:
    """Reuse a member folder byte for byte: hardlink every file (copy where links fail)."""
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        link_file(path, target / path.name)


def link_file(source: Path, target: Path) -> None:
    """Reuse one file byte for byte: a hardlink, or a copy where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def train_shards(
    shards: list[Rows],
    forget_counts: list[int],
    run_dir: Path,
    folder: str,
    reuse: dict[int, Path],
    train: Callable[[int, Rows, Path], int],
) -> tuple[list[dict[str, Any]], int]:
    """Each shard's member in `run_dir/folder/shard-K`: linked from `reuse` (shard → folder)
    or trained by `train(k, rows, member_folder)`, which returns the parameters it trained;
    returns the manifest's member records (with the sha256 of its weights, `model_sha256`) and
    the parameters trained in all."""
    records, trained = [], 0
    for k, rows in enumerate(shards):
        name = f"shard-{k}"
        member = run_dir / folder / name
        if k in reuse:
            link_member(reuse[k], member)
        else:
            trained += train(k, rows, member)
        records.append(
            {
                "name": name,
                "path": f"{folder}/{name}",
                "samples": len(rows),
                "forget_samples": forget_counts[k],
                "retrained": k not in reuse,
                "sha256": model_sha256(member),
            }
        )
    return records, trained


@torch.no_grad()
def fit_aggregator(
    run_dir: Path, members: list[str], recipe: Recipe, valid: Rows
) -> AttentionAggregator:
    """Fit the attention aggregator with CE on the valid labels over the members' Yes/No
    logits (computed once); saved as `aggregator.safetensors`."""
    from safetensors.torch import save_file

    from e2urec.train.runner import process_state

    device = process_state().device  # the members score on the device; the aggregator on CPU
    ensemble = EnsembleModel([load_recommender(run_dir / m) for m in members], None).to(device)
    rec = ensemble.recommender
    features, labels = [], []
    for start in range(0, len(valid), recipe.eval_batch_size):
        chunk = valid[start : start + recipe.eval_batch_size]
        batch = {k: v.to(device) for k, v in rec.collate(chunk).items()}
        logits = ensemble.member_logits(batch)
        features.append(logits[..., [rec.yes_id, rec.no_id]].cpu())
        labels += [0 if int(r["label"]) == 1 else 1 for r in chunk]  # class 0 = Yes
    x, y = torch.cat(features), torch.tensor(labels)
    torch.manual_seed(recipe.seed)
    aggregator = AttentionAggregator(len(members), recipe.agg_hidden)
    optimizer = torch.optim.Adam(aggregator.parameters(), lr=recipe.agg_lr)
    with torch.enable_grad():
        for _ in range(recipe.agg_epochs):
            loss = nn.functional.cross_entropy(aggregator(x, x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    save_file({k: v.contiguous() for k, v in aggregator.state_dict().items()}, run_dir / AGGREGATOR)
    return aggregator


def build(
    kind: str,
    data_dir: Path,
    run_dir: Path,
    shards: list[Rows],
    forget_counts: list[int],
    recipe: Recipe,
    meter: Any,
    reuse: dict[int, Path] | None = None,
    built: Any = None,
) -> dict[str, Any]:
    """Train (or reuse from `reuse`: shard → member folder) every member (the first trained one
    from `built`, a `recipes.build_backbone` result, when given), fit the aggregator for
    RecEraser, and return the ensemble manifest fields."""
    from e2urec.data.dataset import load_split

    backbone = iter([built])  # a built backbone starts the first member trained only

    def train(k: int, rows: Rows, folder: Path) -> int:
        start = next(backbone, None)
        return train_member(data_dir, rows, recipe, folder, run_dir, f"shard-{k}", meter, start)

    members, trained = train_shards(shards, forget_counts, run_dir, MEMBERS_DIR, reuse or {}, train)
    aggregate = "attention" if kind == "receraser" else "mean"
    if aggregate == "attention":
        valid = load_split(data_dir, "valid").to_dict("records")
        with meter.phase("aggregator"):
            fit_aggregator(run_dir, [m["path"] for m in members], recipe, valid)
    per_member = trained // max(1, sum(m["retrained"] for m in members))
    total = per_member * len(members)
    cost = meter.summary()
    cost.update(  # parameters trained in this run, out of the whole ensemble's
        trainable_params=trained,
        total_params=total,
        trainable_pct=round(100.0 * trained / total, 4) if total else 0.0,
    )
    return {
        "format": "ensemble",
        "ensemble": kind,
        "aggregate": aggregate,
        "members": members,
        "recipe": asdict(recipe),
        "backbone": recipe.backbone,
        "cost": cost,
    }


def unlearn_ensemble(ctx: Any) -> dict[str, Any]:
    """Retrain the members whose original shard held forget samples on the prepared shard;
    reuse the others unchanged; refit the aggregator (RecEraser)."""
    kind = ctx.base_manifest["ensemble"]
    recipe = Recipe(**ctx.base_manifest["recipe"])
    recipe.seed = ctx.seed
    old = ctx.base_manifest["members"]
    shards = [ctx.rows(f"{kind}-{k}") for k in range(len(old))]
    # Untouched members are reused whatever the seed: only retrained members take ctx.seed.
    reuse = {k: ctx.base_run / m["path"] for k, m in enumerate(old) if m["forget_samples"] == 0}
    fields = build(
        kind, ctx.data_dir, ctx.run_dir, shards, [0] * len(old), recipe, ctx.meter, reuse
    )
    fields["retrained_shards"] = [m["name"] for m in fields["members"] if m["retrained"]]
    fields["reused_shards"] = [m["name"] for m in fields["members"] if not m["retrained"]]
    return fields


@quiet_transformers()
def train_ensemble(
    kind: str,
    data_dir: str | Path,
    out: str | Path,
    recipe: Recipe,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train an original SISA or RecEraser ensemble (shards with the forget samples) into `out`;
    returns the run manifest. The recipe, the data and the backbone (built for the first
    member) are checked before the run folder is created."""
    from e2urec.data.dataset import read_manifest
    from e2urec.train.cost import CostMeter
    from e2urec.train.recipes import build_backbone, validation_rows
    from e2urec.train.runner import finish_run, start_run

    if kind in TRAINERS:
        return TRAINERS.get(kind)[1](data_dir, out, recipe, overwrite)
    rebuild = ORIGINAL_SHARDS.get(kind)
    recipe.check()
    data_dir = Path(data_dir).absolute()
    read_manifest(data_dir)
    shards, forget_counts = rebuild(data_dir)
    for k, rows in enumerate(shards):
        require_rows(f"shard-{k}", rows)
    validation_rows(data_dir, recipe.loop_config())
    meter = CostMeter()
    built = build_backbone(
        data_dir,
        recipe.backbone,
        init_seed=recipe.init_seed,
        max_length=recipe.max_length,
        meter=meter,
        finetune=recipe.finetune,
    )
    config = {
        "command": "train-ensemble",
        "ensemble": kind,
        "data": str(data_dir),
        **asdict(recipe),
    }
    run_dir = start_run(out, config, overwrite=overwrite, resume=False, can_resume=False)
    fields = build(kind, data_dir, run_dir, shards, forget_counts, recipe, meter, built=built)
    return finish_run(
        run_dir,
        {
            **fields,
            "kind": "original",
            "family": recipe.backbone.partition(":")[0],
            "data_dir": str(data_dir),
            "trained_on": "train",
            "seed": recipe.seed,
        },
    )


def recipe_class(kind: str) -> type:
    """The recipe dataclass of an ensemble method (its own, e.g. APA's, or `Recipe`)."""
    return TRAINERS.get(kind)[0] if kind in TRAINERS else Recipe


def train_ensemble_from_options(
    kind: str,
    data_dir: str | Path,
    backbone: str,
    out: str | Path,
    overwrite: bool = False,
    **recipe: Any,
) -> dict[str, Any]:
    """`train_ensemble` with the recipe given as `backbone` and keyword fields (seed, epochs,
    lr, ...: see `Recipe`); unknown fields or wrong types give a clear error."""
    from e2urec.config import build as build_config

    config = build_config(recipe_class(kind), {"backbone": backbone, **recipe}, "ensemble recipe")
    return train_ensemble(kind, data_dir, out, config, overwrite=overwrite)
