"""Supervised training: the answer-CE Task and the `e2urec train` job (Original, Retrain and
SISA/RecEraser shard models)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from e2urec.artifacts import staged_folder
from e2urec.backbones import Family, Recommender
from e2urec.config import check_ranges, settings_of
from e2urec.errors import E2URecError
from e2urec.quiet import quiet_transformers
from e2urec.runs import MODEL_DIR
from e2urec.train.losses import answer_ce
from e2urec.train.task import Batch

if TYPE_CHECKING:
    from e2urec.train.loop import LoopConfig


class SupervisedTask:
    """One stream "train"; the loss is the mean answer-token cross-entropy.

    Full fine-tuning or LoRA alike: the loop optimizes whatever parameters require grad.
    """

    main = "train"

    def __init__(self, recommender: Recommender, rows: Sequence[dict[str, Any]]) -> None:
        self.recommender = recommender
        self.streams = {"train": rows}

    def loss(
        self, model: nn.Module, batches: dict[str, Batch], epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Answer CE of `model` on the "train" batch (no extra log fields)."""
        logits, labels = self.recommender.target_logits(batches["train"], model)
        return answer_ce(logits, labels), {}


LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}  # the paper's adapter settings
KINDS = {"train": "original", "retain": "retrain"}


def default_lr(family: Family, finetune: str) -> float:
    """1e-3 for the tiny families (trained from scratch); 5e-5 for full fine-tuning of a
    pretrained model (the paper's); for LoRA the family's `lora_lr`, else 1e-4."""
    if family.name.endswith("-tiny"):
        return 1e-3
    if finetune == "lora":
        return family.lora_lr or 1e-4
    return 5e-5


def run_kind(split: str) -> str:
    """Manifest `kind` of a run trained on `split`: original, retrain, shard or supervised."""
    if split.startswith(("sisa-", "receraser-")):
        return "shard"
    return KINDS.get(split, "supervised")


def add_lora(model: nn.Module, targets: Sequence[str] | None, kind: str) -> nn.Module:
    """Wrap `model` in a PEFT LoRA model (r 16, alpha 32, dropout 0.05) on `targets`
    (None: PEFT's default modules for the model type); only the adapters train."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        **LORA,
        target_modules=list(targets) if targets else None,
        task_type=TaskType.SEQ_2_SEQ_LM if kind == "seq2seq" else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


def tokenizer_corpus(data_dir: str | Path) -> list[str]:
    """Prompts and targets of train+valid+test: every run on the same prepared data (Original,
    Retrain, shard models) builds the same tiny-backbone tokenizer from it."""
    from e2urec.data.dataset import load_split

    return [
        text
        for split in ("train", "valid", "test")
        for frame in [load_split(data_dir, split)]
        for text in (*frame["prompt"], *frame["target"])
    ]


def recipe_loop(settings: Any, finetune: str = "full", where: str = "") -> LoopConfig:
    """The supervised recipe's LoopConfig from `settings` (any object carrying the LoopConfig
    fields and `backbone`; `lr` None: `default_lr`), checked before anything is written: an
    unknown backbone family or fine-tuning mode, or a loop setting out of range, is one clear
    error (starting with `where`)."""
    from e2urec.backbones import parse_spec
    from e2urec.train.loop import LoopConfig

    if finetune not in ("full", "lora"):
        raise E2URecError(f"unknown finetune mode {finetune!r}; valid: full, lora")
    family, _ = parse_spec(settings.backbone)
    loop = settings_of(LoopConfig, settings)
    if loop["lr"] is None:
        loop["lr"] = default_lr(family, finetune)
    cfg = LoopConfig(**loop)
    cfg.check(where)
    return cfg


def build_backbone(
    data_dir: str | Path,
    backbone: str,
    *,
    init_seed: int,
    max_length: int,
    meter: Any,
    finetune: str = "full",
) -> tuple[Recommender, nn.Module]:
    """The recipe's starting point, timed as phase "build": the backbone with weights from
    `init_seed` (a tiny family's tokenizer trained on `tokenizer_corpus`) and the model to
    train (PEFT LoRA-wrapped for `finetune="lora"`). Loading problems are one clear error."""
    from e2urec.backbones import create_recommender, parse_spec

    check_ranges({"max_length": max_length}, {"max_length": "count"})
    family, _ = parse_spec(backbone)
    with meter.phase("build"):
        recommender = create_recommender(
            backbone, tokenizer_corpus(data_dir), init_seed, max_length=max_length
        )
        model = recommender.model
        if finetune == "lora":
            model = add_lora(model, family.lora_targets, recommender.kind)
    return recommender, model


def split_rows(data_dir: str | Path, name: str, purpose: str) -> list[dict[str, Any]]:
    """Rows of split `name`; an empty split is one clear error saying what needed it."""
    from e2urec.data.dataset import load_split

    rows = load_split(data_dir, name).to_dict("records")
    if not rows:
        raise E2URecError(f"split {name!r} in {data_dir} is empty; {purpose} needs it")
    return rows


def validation_rows(data_dir: Path, cfg: Any) -> list[dict[str, Any]] | None:
    """The valid split's rows that early stopping scores, or None when the loop keeps the last
    epoch (`cfg.keep == "last"`) and never validates; an empty valid split is one error."""
    if cfg.keep == "last":
        return None
    return split_rows(data_dir, "valid", "early stopping")


def fit_supervised(
    data_dir: Path,
    rows: Sequence[dict[str, Any]],
    valid_rows: Sequence[dict[str, Any]] | None,
    backbone: str,
    cfg: Any,
    run_dir: Path,
    *,
    max_length: int,
    init_seed: int,
    meter: Any,
    finetune: str = "full",
    desc: str = "train",
    resume: bool = False,
    built: tuple[Recommender, nn.Module] | None = None,
    checkpoint: bool = False,
) -> tuple[Recommender, Any]:
    """The paper's supervised recipe on `rows`: build the backbone (`build_backbone`, unless
    `built` holds its result already; weights from `init_seed`, like one pretrained checkpoint
    shared by every run; `cfg.seed` drives data order and dropout), AdamW on answer CE, early
    stopping on `valid_rows`' answer CE, best epoch kept (None: no validation, the last epoch
    kept; see `validation_rows`); `checkpoint`: write the resumable checkpoint (jobs that
    offer --resume). Returns the recommender holding
    the trained model (PEFT-wrapped for LoRA, so its trainable parameters can still be counted)
    and the FitResult."""
    from e2urec.train.loop import fit
    from e2urec.train.losses import evaluate_ce

    recommender, model = built or build_backbone(
        data_dir,
        backbone,
        init_seed=init_seed,
        max_length=max_length,
        meter=meter,
        finetune=finetune,
    )
    result = fit(
        recommender,
        model,
        SupervisedTask(recommender, rows),
        cfg,
        run_dir,
        validate=(
            None
            if valid_rows is None
            else lambda m: evaluate_ce(recommender, m, valid_rows, cfg.eval_batch_size)
        ),
        resume=resume,
        meter=meter,
        desc=desc,
        checkpoint=checkpoint,
    )
    recommender.model = model
    return recommender, result


@quiet_transformers()
def train(
    data: str | Path,
    on: str,
    backbone: str,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Train a recommender on split `on` of prepared folder `data`; returns the run manifest.

    `settings`: the fields of `train.options.TrainJob` (epochs, lr, batch_size, patience, keep,
    seed, init_seed, max_length, max_steps, eval_batch_size, finetune and the TrainOptions; an
    unknown name or a wrong type is one clear error). The paper's recipe: AdamW, answer CE,
    early stopping on the valid split's answer CE with `patience`, best epoch kept
    (`keep="last"`: no validation, all `epochs` run, last kept). Backbone weights start from
    `init_seed` (the same for every run, like a shared pretrained checkpoint); `seed` drives
    data order and dropout. The tokenizer corpus is train+valid+test, so every run on the same
    data shares a vocabulary. `finetune="lora"` trains PEFT adapters and saves them as the run's
    model over the pretrained base it names (a tiny family's LoRA model is saved merged).
    The run folder gets model/ (save_recommender), log.jsonl, config.resolved.yaml and
    manifest.json (format "single", kind from `run_kind`). Every input (settings, data, the
    backbone, built here) is checked before the run folder is created.
    """
    from e2urec.backbones import parse_spec, save_recommender
    from e2urec.config import build
    from e2urec.data.dataset import read_manifest
    from e2urec.train.cost import CostMeter
    from e2urec.train.options import TrainJob
    from e2urec.train.runner import finish_run, process_state, start_run

    job = build(TrainJob, {**settings, "backbone": backbone}, "train")
    cfg = recipe_loop(job, job.finetune)
    data = Path(data).absolute()
    read_manifest(data)
    family, _ = parse_spec(backbone)
    rows = split_rows(data, on, "training")
    valid_rows = validation_rows(data, cfg)
    meter = CostMeter()
    finetune, init_seed, max_length = job.finetune, job.init_seed, job.max_length
    built = build_backbone(
        data, backbone, init_seed=init_seed, max_length=max_length, meter=meter, finetune=finetune
    )
    lora = dict(LORA, target_modules=family.lora_targets) if finetune == "lora" else None
    config = {"command": "train", "data": str(data), "on": on, "backbone": backbone}
    config.update(finetune=finetune, lora=lora, max_length=max_length, init_seed=init_seed)
    config["loop"] = dataclasses.asdict(cfg)
    run = start_run(out, json.loads(json.dumps(config)), overwrite=overwrite, resume=resume)
    recommender, result = fit_supervised(
        data,
        rows,
        valid_rows,
        backbone,
        cfg,
        run,
        max_length=max_length,
        init_seed=init_seed,
        meter=meter,
        finetune=finetune,
        resume=resume,
        built=built,
        checkpoint=True,
    )
    cost = meter.summary(recommender.model)
    if process_state().is_main_process:
        with staged_folder(run / MODEL_DIR, overwrite=True) as stage:
            save_recommender(recommender, stage)
    fields = {"kind": run_kind(on), "family": family.name, "trained_on": on, "seed": job.seed}
    fields.update(backbone=backbone, finetune=finetune, data_dir=str(data), init_seed=init_seed)
    return finish_run(run, _manifest_fields(fields, cfg, result, valid_rows is not None, cost))


def _manifest_fields(
    fields: dict[str, Any], cfg: Any, result: Any, validated: bool, cost: dict[str, Any]
) -> dict[str, Any]:
    """A supervised run's manifest: `fields`, the loop settings (every trainer option), what
    fit did, the validation rule and the cost."""
    return {
        "format": "single",
        **fields,
        "loop": dataclasses.asdict(cfg),
        "fit": {k: v for k, v in dataclasses.asdict(result).items() if k != "history"},
        "validation": (
            "answer cross-entropy on the valid split"
            if validated
            else "none (keep=last: the last epoch kept)"
        ),
        "cost": cost,
    }
