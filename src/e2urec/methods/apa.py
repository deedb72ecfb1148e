"""APA (Hu et al., SIGIR 2024): exact unlearning with one frozen base and one LoRA adapter per
shard, mixed per row in one forward pass (run format "apa", see `e2urec.mixture`).

Original (`train-ensemble --method apa --shards K`): the frozen base's representation of every
train prompt (mean-pooled last hidden state) → balanced K-means (seeded; the (row, centre) pairs
walked by ascending cosine distance, a row joins the nearest centre whose shard has room,
at most ⌈n/K⌉ rows) → one adapter per shard (the Original's recipe in LoRA mode; the LoRA init
seeded per shard) → each adapter's log-loss on every valid row. The centres and the assignment
are saved and never recomputed.
Unlearning: each shard keeps its rows minus the forgotten ones (no row moves); only the adapters
whose shard held forgotten rows are retrained, exactly as training from scratch on the reduced
shard would (same base, recipe, init and, by default, seed), and their validation errors are
refreshed; the other adapters, the base and the partition are linked unchanged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from e2urec.artifacts import atomic_write_json, read_json, sha256_bytes
from e2urec.backbones import (
    Recommender,
    batches,
    block_lists,
    load_recommender,
    parse_spec,
    save_recommender,
)
from e2urec.config import override, setting
from e2urec.errors import E2URecError
from e2urec.eval.scoring import to_device
from e2urec.methods.base import Method, register
from e2urec.methods.ensemble import (
    TRAINERS,
    Recipe,
    link_file,
    link_member,
    require_rows,
    train_shards,
)
from e2urec.mixture import (
    ADAPTERS_DIR,
    ASSIGNMENT,
    BASE_DIR,
    PARTITION,
    VALIDATION,
    AdapterMixture,
    load_adapters,
    load_mixture,
    represent,
    trunk_of,
)
from e2urec.quiet import quiet_transformers
from e2urec.runs import SERVED, Served

Rows = list[dict[str, Any]]
# Modules an adapter trains whole besides LoRA ("auto"), by family: MiniLM's checkpoint is a
# sentence encoder without the LM head's transform, which starts from a seeded initialisation
# that LoRA alone cannot train (docs/methods-apa.md: measured).
AUTO_WHOLE = {"minilm": ("cls.predictions.transform",)}


@dataclass
class APARecipe(Recipe):
    """The ensemble recipe in LoRA mode plus APA's settings: `shards` (None: the prepared
    data's), the aggregation's `tau` and `neighbours`, `whole` (modules each adapter trains
    whole, PEFT modules_to_save: "auto" by family, "none", or comma-separated names), the
    K-means iterations and `represent_layers` (the base's first blocks the representation of
    the partition and the aggregation runs through; None: all)."""

    # one adapter per shard whatever the supervised recipe's mode (see __post_init__)
    finetune: Literal["lora"] = override(Recipe, "finetune", "lora")

    shards: int | None = setting(
        None, "K adapters (none: the prepared data's shards)", rule="count"
    )
    tau: float = setting(1000.0, "aggregation temperature", rule="non-negative")
    neighbours: int = setting(20, "nearest valid rows per row", rule="count")
    whole: str = setting(
        "auto",
        "modules each adapter trains whole besides LoRA: auto (by family), none, or "
        "comma-separated names",
    )
    kmeans_iters: int = setting(20, "balanced K-means iterations", rule="count")
    represent_layers: int | None = setting(
        None,
        "the base's blocks a row's representation runs through (none: all; 0: the mean token "
        "embedding; fewer makes scoring with tau > 0 cheaper)",
        rule="non-negative",
    )

    def __post_init__(self) -> None:
        self.finetune = "lora"  # a supervised recipe's "full" (a bench's train section) too

    def whole_modules(self) -> list[str]:
        """The module names each adapter trains whole (modules_to_save)."""
        if self.whole == "auto":
            return list(AUTO_WHOLE.get(parse_spec(self.backbone)[0].name, ()))
        if self.whole == "none":
            return []
        return [name.strip() for name in self.whole.split(",") if name.strip()]


@dataclass
class APAParams:
    """Unlearning settings: the aggregation's `tau` and `neighbours` (None: the original run's).
    The adapters are retrained with the original run's recipe."""

    tau: float | None = setting(
        None, "aggregation temperature (none: the original run's)", rule="non-negative"
    )
    neighbours: int | None = setting(
        None, "nearest valid rows per row (none: the original run's)", rule="count"
    )


# ---------------------------------------------------------------- partition
def balanced_assign(reps: torch.Tensor, centres: torch.Tensor, cap: int) -> np.ndarray:
    """Each row to a centre: the (row, centre) pairs by ascending cosine distance, a row taken
    by the first centre whose shard has fewer than `cap` rows."""
    n, k = reps.shape[0], centres.shape[0]
    distance = (1.0 - reps @ centres.T).numpy().ravel()
    assignment = np.full(n, -1, dtype=np.int64)
    sizes = np.zeros(k, dtype=np.int64)
    left = n
    for flat in np.argsort(distance, kind="stable"):
        row, centre = divmod(int(flat), k)
        if assignment[row] < 0 and sizes[centre] < cap:
            assignment[row] = centre
            sizes[centre] += 1
            left -= 1
            if not left:
                break
    return assignment


def balanced_kmeans(
    reps: torch.Tensor, k: int, seed: int, iters: int
) -> tuple[np.ndarray, torch.Tensor]:
    """Balanced spherical K-means (shards of at most ⌈n/k⌉ rows) from `k` seeded rows as
    centres; returns the assignment [n] and the centres [k, H]."""
    from e2urec.train.loop import derive_seed

    n = reps.shape[0]
    generator = torch.Generator().manual_seed(derive_seed(seed, "apa-kmeans"))
    centres = reps[torch.randperm(n, generator=generator)[:k]].clone()
    assignment = balanced_assign(reps, centres, math.ceil(n / k))
    for _ in range(iters):
        means = [
            reps[assignment == j].mean(dim=0) if (assignment == j).any() else centres[j]
            for j in range(k)
        ]
        centres = F.normalize(torch.stack(means), dim=-1)
        new = balanced_assign(reps, centres, math.ceil(n / k))
        if (new == assignment).all():
            break
        assignment = new
    return assignment, centres


def rows_sha256(rows: Rows) -> str:
    """sha256 of the rows' ids, prompts and targets, in order."""
    text = "".join(f"{r['id']}\t{r['prompt']}\t{r['target']}\n" for r in rows)
    return sha256_bytes(text.encode("utf-8"))


@torch.no_grad()
def representations(
    recommender: Recommender, rows: Rows, batch_size: int, depth: int | None
) -> torch.Tensor:
    """[n, H] representations of `rows` by the (plain) model of `recommender` (its first
    `depth` blocks; None: all), computed on the process's device (a GPU when there is one)."""
    from e2urec.train.runner import process_state

    device = process_state().device
    model = recommender.model.to(device).eval()
    out: torch.Tensor | None = None
    for index in batches(rows, batch_size, by_length=True):
        batch = recommender.collate([rows[i] for i in index])
        reps = represent(recommender, model, to_device(batch, device), depth).cpu()
        out = torch.empty((len(rows), reps.shape[1])) if out is None else out
        out[index] = reps
    return out


# ---------------------------------------------------------------- adapters
def check_backbone(recommender: Recommender, recipe: APARecipe) -> None:
    """The backbone must have the modules LoRA targets and those trained whole."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    family, _ = parse_spec(recipe.backbone)
    model_type = getattr(recommender.model.config, "model_type", None)
    targets = family.lora_targets or DEFAULTS.get(model_type)
    names = [name for name, _ in recommender.model.named_modules()]
    leaves = {name.rpartition(".")[2] for name in names}
    missing = [t for t in targets or () if t not in leaves]
    if not targets or missing:
        raise E2URecError(
            f"backbone {recipe.backbone!r} ({model_type}) has no LoRA target modules "
            f"{missing or '(none known for this model type)'}; APA needs LoRA adapters"
        )
    absent = [w for w in recipe.whole_modules() if w not in names]
    if absent:
        raise E2URecError(
            f"backbone {recipe.backbone!r} has no module {absent[0]!r} to train whole (whole=)"
        )
    depth = representation_depth(recommender)
    if recipe.represent_layers is not None and recipe.represent_layers > depth:
        raise E2URecError(
            f"represent_layers {recipe.represent_layers}: the backbone's trunk has {depth} blocks"
        )


def representation_depth(recommender: Recommender) -> int:
    """The number of blocks of the trunk a representation runs through (encoder for seq2seq)."""
    blocks = block_lists(trunk_of(recommender, recommender.model))
    return len(blocks[0][1]) if blocks else 0


def train_adapter(
    base: Recommender,
    rows: Rows,
    valid_rows: Rows | None,
    recipe: APARecipe,
    index: int,
    folder: Path,
    run_dir: Path,
    meter: Any,
) -> int:
    """Train adapter `index` on `rows` over a copy of the frozen `base` (the LoRA init seeded by
    the recipe's seed and the index; the Original's recipe in LoRA mode, early stopping on
    `valid_rows` unless None) and save it in `folder` (PEFT); returns its trainable parameter
    count."""
    from peft import LoraConfig, TaskType, get_peft_model

    from e2urec.train.loop import derive_seed
    from e2urec.train.recipes import LORA, fit_supervised

    name = f"shard-{index}"
    require_rows(name, rows)
    family, _ = parse_spec(recipe.backbone)
    config = LoraConfig(
        **LORA,
        target_modules=list(family.lora_targets) if family.lora_targets else None,
        modules_to_save=recipe.whole_modules() or None,
        task_type=TaskType.SEQ_2_SEQ_LM if base.kind == "seq2seq" else TaskType.CAUSAL_LM,
    )
    member = copy.copy(base)
    torch.manual_seed(derive_seed(recipe.seed, "apa-adapter", index))
    model = get_peft_model(copy.deepcopy(base.model), config)
    member.model = model
    fit_supervised(
        None,  # type: ignore[arg-type]  (the backbone is built: no data folder is read)
        rows,
        valid_rows,
        recipe.backbone,
        recipe.loop_config(),
        run_dir,
        max_length=recipe.max_length,
        init_seed=recipe.init_seed,
        meter=meter,
        finetune="lora",
        desc=name,
        built=(member, model),
    )
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def row_digests(rows: Rows) -> torch.Tensor:
    """[n] int64 naming each row by its content (the first 8 bytes of the sha256 of its id,
    prompt and target): how validation.safetensors finds a valid row again."""
    import hashlib

    return torch.tensor(
        [
            int.from_bytes(
                hashlib.sha256(f"{r['id']}\t{r['prompt']}\t{r['target']}".encode()).digest()[:8],
                "little",
                signed=True,
            )
            for r in rows
        ],
        dtype=torch.int64,
    )


@torch.no_grad()
def adapter_errors(
    mixture: AdapterMixture, k: int, which: list[int], rows: Rows, batch_size: int
) -> torch.Tensor:
    """The log-loss of P(label) (softmax over the Yes/No logits) of each adapter in `which`
    (of the mixture's `k`) alone on every row [len(which), n], on the mixture's device."""
    rec = mixture.recommender
    device = next(mixture.model.parameters()).device
    errors = torch.empty((len(which), len(rows)))
    for index in batches(rows, batch_size, by_length=True):
        batch = to_device(rec.collate([rows[i] for i in index]), device)
        labels = torch.tensor([0 if int(rows[i]["label"]) == 1 else 1 for i in index])
        for row, adapter in enumerate(which):
            omega = F.one_hot(torch.full((len(index),), adapter, device=device), k).float()
            logits = mixture.mixed_logits(batch, omega)[:, [rec.yes_id, rec.no_id]]
            errors[row, index] = F.cross_entropy(logits.float().cpu(), labels, reduction="none")
    return errors


def refresh_validation(
    run_dir: Path,
    adapters: list[dict[str, Any]],
    base: Recommender,
    retrained: list[int],
    valid: Rows,
    previous: dict[str, torch.Tensor] | None,
    batch_size: int,
    previous_sha256: str | None = None,
    depth: int | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """validation.safetensors of `run_dir` for the `valid` rows: each row's representation and
    each adapter's log-loss on it. A row that `previous` (the validation tensors of the run the
    reused adapters come from) holds keeps its representation and, for an adapter not in
    `retrained`, its error; the rest is computed over `base` (used in place), loading only the
    adapters it scores. `previous_sha256`: its rows' `rows_sha256` (a run written before rows
    had digests is matched whole). `depth`: the representation's blocks (`represent_layers`).
    Returns the tensors and how many rows were new (scored by every adapter)."""
    k, n = len(adapters), len(valid)
    digests = row_digests(valid)
    known_rows = {}
    if previous is not None and "digest" in previous:
        known_rows = {int(d): i for i, d in enumerate(previous["digest"].tolist())}
    elif previous is not None and previous_sha256 == rows_sha256(valid):
        known_rows = {int(d): i for i, d in enumerate(digests.tolist())}
    found = [known_rows.get(int(d)) for d in digests.tolist()]
    known = [i for i, f in enumerate(found) if f is not None]
    fresh = [i for i, f in enumerate(found) if f is None]
    reps: torch.Tensor | None = None
    errors = torch.empty((k, n))
    if known:
        source = torch.tensor([found[i] for i in known])
        reps = torch.empty((n, previous["representation"].shape[1]))
        reps[known] = previous["representation"][source]
        errors[:, known] = previous["log_loss"][:, source]
    others = [j for j in range(k) if j not in retrained]
    loaded = sorted(retrained) + (others if fresh else [])
    if loaded:
        scored = score_validation(run_dir, [adapters[j] for j in loaded], base, valid, fresh,
                                  len(retrained), batch_size, depth)  # fmt: skip
        if fresh:
            new, fresh_errors = scored[1], scored[2]
            reps = torch.empty((n, new.shape[1])) if reps is None else reps
            reps[fresh] = new
            for j, row in zip(others, fresh_errors, strict=True):
                errors[j, fresh] = row
        if retrained:
            errors[sorted(retrained)] = scored[0]
    tensors = {"representation": reps, "log_loss": errors, "digest": digests}
    return {name: t.contiguous() for name, t in tensors.items()}, len(fresh)


def score_validation(
    run_dir: Path,
    adapters: list[dict[str, Any]],
    base: Recommender,
    valid: Rows,
    fresh: list[int],
    retrained: int,
    batch_size: int,
    depth: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """With `adapters` loaded over `base` (the first `retrained` of them retrained): their
    errors on every valid row; the `fresh` rows' representations (through `depth` blocks) and
    the other adapters' errors on them (None without fresh rows), on the process's device."""
    from e2urec.train.runner import process_state

    recommender, layers, whole = load_adapters(run_dir, adapters, base)
    mixture = AdapterMixture(recommender, layers, whole).to(process_state().device)
    k = len(adapters)
    errors = adapter_errors(mixture, k, list(range(retrained)), valid, batch_size)
    if not fresh:
        return errors, None, None
    rows = [valid[i] for i in fresh]
    reps = representations(recommender, rows, batch_size, depth)
    return errors, reps, adapter_errors(mixture, k, list(range(retrained, k)), rows, batch_size)


def validation_fields(valid: Rows, scored: list[str], fresh: int) -> dict[str, Any]:
    """Manifest record of the valid rows the errors are on, the adapters scored on every row
    and how many rows every adapter was scored on anew."""
    return {"rows": len(valid), "sha256": rows_sha256(valid), "scored": scored, "new_rows": fresh}


def build_adapters(
    run_dir: Path,
    base: Recommender,
    shards: list[Rows],
    forget_counts: list[int],
    recipe: APARecipe,
    meter: Any,
    valid_rows: Rows | None,
    reuse: dict[int, Path] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Train over the frozen `base` (or link from `reuse`: shard → adapter folder) every
    shard's adapter; returns the manifest's adapter records and the trained parameter count."""

    def train(k: int, rows: Rows, folder: Path) -> int:
        return train_adapter(base, rows, valid_rows, recipe, k, folder, run_dir, meter)

    return train_shards(shards, forget_counts, run_dir, ADAPTERS_DIR, reuse or {}, train)


def cost_fields(meter: Any, trained: int, base_params: int, per_adapter: int, k: int) -> dict:
    """The run's cost: wall time by phase, and the parameters trained here out of the whole
    model (base + K adapters)."""
    total = base_params + per_adapter * k
    cost = meter.summary()
    cost.update(
        trainable_params=trained,
        total_params=total,
        trainable_pct=round(100.0 * trained / total, 4) if total else 0.0,
    )
    return cost


def check_shards(recipe: APARecipe, data_dir: Path, train: Rows, valid: Rows) -> int:
    """The shard count (the recipe's, else the prepared data's), checked against the rows."""
    from e2urec.data.dataset import read_manifest

    k = recipe.shards or int(read_manifest(data_dir)["config"].get("shards") or 0)
    if k < 2:
        raise E2URecError(f"APA needs at least 2 shards, got {k}")
    if k > len(train):
        raise E2URecError(f"{k} shards for {len(train)} train rows: use at most {len(train)}")
    if recipe.neighbours > len(valid):
        raise E2URecError(
            f"neighbours {recipe.neighbours} is more than the {len(valid)} valid rows"
        )
    return k


@quiet_transformers()
def train_apa(
    data_dir: str | Path, out: str | Path, recipe: APARecipe, overwrite: bool = False
) -> dict[str, Any]:
    """Train an original APA run (partition, K adapters, validation errors) into `out`; every
    input is checked, and the base built, before the run folder is created."""
    from safetensors.torch import save_file

    from e2urec.data.dataset import load_split
    from e2urec.train.cost import CostMeter
    from e2urec.train.recipes import build_backbone, split_rows, validation_rows
    from e2urec.train.runner import finish_run, start_run

    recipe.check()
    data_dir = Path(data_dir).absolute()
    train = split_rows(data_dir, "train", "training")
    valid = split_rows(data_dir, "valid", "APA's aggregation")
    k = check_shards(recipe, data_dir, train, valid)
    validation_rows(data_dir, recipe.loop_config())
    forget = set(load_split(data_dir, "forget")["id"])
    meter = CostMeter()
    base, _ = build_backbone(
        data_dir,
        recipe.backbone,
        init_seed=recipe.init_seed,
        max_length=recipe.max_length,
        meter=meter,
    )
    check_backbone(base, recipe)
    config = {"command": "train-ensemble", "ensemble": "apa", "data": str(data_dir)}
    config.update(asdict(recipe))
    run_dir = start_run(out, config, overwrite=overwrite, resume=False, can_resume=False)
    save_recommender(base, run_dir / BASE_DIR)
    base = load_recommender(run_dir / BASE_DIR)  # as every later use loads it (exactness)
    with meter.phase("partition"):
        shards = partition(base, train, k, recipe, run_dir)
    counts = [sum(r["id"] in forget for r in rows) for rows in shards]
    loop_valid = validation_rows(data_dir, recipe.loop_config())
    adapters, trained = build_adapters(run_dir, base, shards, counts, recipe, meter, loop_valid)
    with meter.phase("validation errors"):
        tensors, fresh = refresh_validation(
            run_dir,
            adapters,
            base,
            list(range(k)),
            valid,
            None,
            recipe.eval_batch_size,
            depth=recipe.represent_layers,
        )
        save_file(tensors, run_dir / VALIDATION)
    base_params = sum(p.numel() for p in base.model.parameters())
    return finish_run(
        run_dir,
        {
            "format": "apa",
            "ensemble": "apa",
            "kind": "original",
            "adapters": adapters,
            "aggregation": {
                "tau": recipe.tau,
                "neighbours": recipe.neighbours,
                "represent_layers": recipe.represent_layers,
            },
            "validation": validation_fields(valid, [a["name"] for a in adapters], fresh),
            "partition": {
                "shards": k,
                "sizes": [len(s) for s in shards],
                "whole": recipe.whole_modules(),
                "base_params": base_params,
            },
            "recipe": asdict(recipe),
            "backbone": recipe.backbone,
            "family": recipe.backbone.partition(":")[0],
            "cost": cost_fields(meter, trained, base_params, trained // k, k),
            "data_dir": str(data_dir),
            "trained_on": "train",
            "seed": recipe.seed,
        },
    )


def partition(base: Recommender, train: Rows, k: int, recipe: APARecipe, run_dir: Path) -> list:
    """The train rows in `k` shards by balanced K-means on the frozen base's representations;
    the centres and the assignment are saved into `run_dir`."""
    from safetensors.torch import save_file

    reps = representations(base, train, recipe.eval_batch_size, recipe.represent_layers)
    assignment, centres = balanced_kmeans(reps, k, recipe.seed, recipe.kmeans_iters)
    if (np.bincount(assignment, minlength=k) == 0).any():
        raise E2URecError(f"K-means left a shard empty: use fewer than {k} shards")
    save_file({"centres": centres.contiguous()}, run_dir / PARTITION)
    shards = [[r for r, a in zip(train, assignment, strict=True) if a == j] for j in range(k)]
    write_assignment(run_dir / ASSIGNMENT, shards, [r["id"] for r in train])
    return shards


def write_assignment(path: Path, shards: list[Rows], order: list[Any]) -> None:
    """partition.json: the ids of the shards' rows (in the order of the ids in `order`), each
    row's shard, and the sha256 of those rows (an unlearned run keeps only the retained rows,
    each in its shard, so it can serve as the original of the next deletion)."""
    rows = {r["id"]: (k, r) for k, part in enumerate(shards) for r in part}
    kept = [i for i in order if i in rows]
    atomic_write_json(
        path,
        {
            "ids": kept,
            "shards": [rows[i][0] for i in kept],
            "train_sha256": rows_sha256([rows[i][1] for i in kept]),
        },
    )


# ---------------------------------------------------------------- unlearning
def retained_shards(base_run: Path, train: Rows, forget: set) -> tuple[list[Rows], list[int]]:
    """Each shard's rows of the saved assignment (in its order) minus the forgotten ones, and how
    many each loses; train rows that are not exactly the partitioned ones (ids, prompts,
    targets; in any order) are one clear error."""
    partition = read_json(base_run / ASSIGNMENT, "APA partition")
    by_id = {r["id"]: r for r in train}
    ids = partition["ids"]
    if (
        len(by_id) != len(train)
        or set(by_id) != set(ids)
        or rows_sha256([by_id[i] for i in ids]) != partition["train_sha256"]
    ):
        raise E2URecError(
            f"the train rows differ from the {len(ids)} rows run {base_run} was partitioned on; "
            "unlearn with the prepared data it was trained on"
        )
    k = max(partition["shards"]) + 1
    shards: list[Rows] = [[] for _ in range(k)]
    lost = [0] * k
    for row_id, shard in zip(ids, partition["shards"], strict=True):
        if row_id in forget:
            lost[shard] += 1
        else:
            shards[shard].append(by_id[row_id])
    return shards, lost


def check_apa(base_run: Path, base: dict[str, Any], data_dir: Path, params: APAParams) -> None:
    """Before the run folder exists: the data's train rows are the partition's, no shard
    loses every row, and `neighbours` fits the valid split."""
    from e2urec.train.recipes import split_rows

    train = split_rows(data_dir, "train", "APA unlearning")
    forget = {r["id"] for r in split_rows(data_dir, "forget", "unlearning")}
    check_kept(retained_shards(base_run, train, forget)[0])
    neighbours = params.neighbours or base["aggregation"]["neighbours"]
    valid = split_rows(data_dir, "valid", "APA's aggregation")
    if neighbours > len(valid):
        raise E2URecError(f"neighbours {neighbours} is more than the {len(valid)} valid rows")


def check_kept(shards: list[Rows]) -> None:
    """Every shard keeps a row to train its adapter on."""
    for k, rows in enumerate(shards):
        if not rows:
            raise E2URecError(
                f"every row of shard-{k} is forgotten: its adapter has nothing to train on"
            )


def unlearn_apa(ctx: Any) -> dict[str, Any]:
    """Retrain the adapters whose shard held forgotten rows (the retained rows, the original
    recipe, `ctx.seed`) over the frozen base (`ctx.original()`: loaded once, or the serving
    model's), refresh their validation errors (the other adapters' errors and the valid rows'
    representations are reused); link everything else."""
    from safetensors.torch import load_file, save_file

    base = ctx.base_manifest
    recipe = APARecipe(**base["recipe"])
    recipe.seed = ctx.seed
    forget = {r["id"] for r in ctx.rows("forget")}
    shards, lost = retained_shards(ctx.base_run, ctx.rows("train"), forget)
    check_kept(shards)
    reuse = {k: ctx.base_run / a["path"] for k, a in enumerate(base["adapters"]) if lost[k] == 0}
    link_member(ctx.base_run / BASE_DIR, ctx.run_dir / BASE_DIR)
    if (ctx.base_run / PARTITION).is_file():  # a deployment's versions hold no centres
        link_file(ctx.base_run / PARTITION, ctx.run_dir / PARTITION)
    order = read_json(ctx.base_run / ASSIGNMENT, "APA partition")["ids"]
    write_assignment(ctx.run_dir / ASSIGNMENT, shards, order)
    valid = ctx.rows("valid")
    with ctx.meter.phase("load base"):
        frozen = ctx.original()
    loop_valid = None if recipe.loop_config().keep == "last" else valid
    adapters, trained = build_adapters(
        ctx.run_dir, frozen, shards, [0] * len(shards), recipe, ctx.meter, loop_valid, reuse
    )
    retrained = [k for k in range(len(shards)) if k not in reuse]
    with ctx.meter.phase("validation errors"):
        previous = load_file(ctx.base_run / VALIDATION)
        tensors, fresh = refresh_validation(
            ctx.run_dir,
            adapters,
            frozen,
            retrained,
            valid,
            previous,
            recipe.eval_batch_size,
            base.get("validation", {}).get("sha256"),
            recipe.represent_layers,
        )
        save_file(tensors, ctx.run_dir / VALIDATION)
    params = ctx.params
    base_params = sum(p.numel() for p in frozen.model.parameters())
    per_adapter = trained // max(1, len(retrained))
    return {
        "format": "apa",
        "ensemble": "apa",
        "adapters": adapters,
        "aggregation": {
            "tau": base["aggregation"]["tau"] if params.tau is None else params.tau,
            "neighbours": params.neighbours or base["aggregation"]["neighbours"],
            "represent_layers": recipe.represent_layers,
        },
        "partition": {
            **base["partition"],
            "sizes": [len(s) for s in shards],
            "base_params": base_params,
        },
        "recipe": asdict(recipe),
        "validation": validation_fields(valid, [adapters[k]["name"] for k in retrained], fresh),
        "retrained_shards": [adapters[k]["name"] for k in retrained],
        "reused_shards": [adapters[k]["name"] for k in reuse],
        "cost": cost_fields(ctx.meter, trained, base_params, per_adapter, len(shards)),
    }


def check_served(run: Path, manifest: dict[str, Any], rows: Rows) -> None:
    """A deployment's training rows must be the ones the APA run's partition holds."""
    retained_shards(run, rows, set())


def write_served(run: Path, stage: Path, link: bool) -> None:
    """An APA run's files (base, adapters, row → shard assignment, validation) into the folder
    `stage` of a deployment version, hardlinked with `link` (a version made from the one
    before), else copied. The K-means centres stay out: nothing after training reads them, and
    they average the representations of every train row, a forgotten user's included."""
    import shutil

    put = link_file if link else shutil.copy2
    for name in (BASE_DIR, ADAPTERS_DIR):
        shutil.copytree(run / name, stage / name, copy_function=put)
    for name in (ASSIGNMENT, VALIDATION):
        put(run / name, stage / name)


def load_served(run: Path, manifest: dict[str, Any], serving: Any) -> AdapterMixture:
    """The APA run `run` over a copy of the frozen base of `serving` (an AdapterMixture)."""
    base = copy.copy(serving.recommender)
    base.model = copy.deepcopy(serving.recommender.model)
    for module in base.model.modules():  # a mixed pass running in another thread is not copied
        module._forward_hooks.clear()
    return load_mixture(run, manifest, base)


def train_apa_from_recipe(
    data_dir: Path, out: Path, recipe: Recipe, overwrite: bool = False
) -> dict[str, Any]:
    """`train_apa` for `ensemble.train_ensemble` (a plain Recipe gets APA's defaults)."""
    if not isinstance(recipe, APARecipe):
        recipe = APARecipe(**asdict(recipe))
    return train_apa(data_dir, out, recipe, overwrite)


TRAINERS.register("apa")((APARecipe, train_apa_from_recipe))
SERVED.register("apa")(Served(check_served, write_served, load_served))

register(
    Method(
        name="apa",
        params=APAParams,
        run=unlearn_apa,
        description="one frozen base + one LoRA adapter per K-means shard, mixed per row; "
        "retrains affected adapters (exact)",
        source="paper",
        base_format="apa",
        streams=("train",),  # the shards' rows (less the forgotten), from the partition
        check=check_apa,
        needs_pretrained=True,
    )
)
