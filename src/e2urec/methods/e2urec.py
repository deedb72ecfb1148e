"""E2URec: LoRA student distilled from a forgetting teacher and a remembering teacher.

Student = the original model + LoRA; only the adapters train. The augmented model is the
original tuned further on the forget set; the forgetting teacher's logits are
`z_f = z_orig − α·ReLU(z_aug − z_orig)`, the remembering teacher is the original (the student
with its adapters disabled). Loss per step, as in the paper's code:
`w·(CE_retain + H(p_orig, p_student)_retain) + (1 − w)·H(p_f, p_student)_forget`, where H is
the cross-entropy over the full vocabulary at every answer position; during the first
`forget_epochs` epochs the loss is `H(p_f, p_student)_forget` alone.

Teachers other than the paper's (`teacher=`, see TEACHERS) and a stop rule that needs no
Retrain (`stop=membership`, see e2urec_membership.MembershipMonitor) address the measured
failure of the paper's teacher at small scale: the augmented model mostly recalibrates the
forgotten users' Yes-bias and the forcing term mirrors that recalibration instead of removing
memorised answers.

The run saves only the adapters (`adapter/`, PEFT safetensors) and points at the original run
(manifest "format": "adapter", "base_run"), which `runs.load_run_model` loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from e2urec.backbones import BACKBONES, IGNORE, Recommender
from e2urec.config import check_settings, override, setting
from e2urec.errors import E2URecError
from e2urec.eval.scoring import answer_tokens, row_batches, score_stats
from e2urec.methods.base import Method, TrainParams, UnlearnContext, register
from e2urec.methods.e2urec_membership import (
    MembershipMonitor,
    MembershipRule,
    check_direction,
    holdout_available,
    inference,
)
from e2urec.methods.e2urec_teachers import TEACHERS, TeacherInputs
from e2urec.runs import ADAPTER_DIR
from e2urec.train.streams import sample_rows

Batch = dict[str, torch.Tensor]


@dataclass
class E2URecParams(TrainParams):
    """E2URec settings (paper defaults).

    Stopping rule: `epochs` passes over the forget set (a retain batch is drawn alongside every
    forget batch), the first `forget_epochs` with the forgetting term only; the last state is
    kept. Two epochs is the rule closest to the paper code's checkpoint (one forget-only epoch
    plus part of a second) without looking at the Retrain model or picking a step by hand.
    Augmented model: the original tuned on the forget set for `aug_epochs` passes at `aug_lr`
    (keep the last), by full fine-tuning (`aug=full`, the paper's) or LoRA merged back
    (`aug=lora`). `cache_teachers`: compute each row's teacher logits once and keep them as
    float16 full-vocabulary log-probabilities at its answer positions; false recomputes both
    teachers at every step, as the paper's code does. The remembering teacher's outputs on
    retained rows are kept only when the schedule draws some retained row twice (see
    `retain_rows_repeat`); otherwise caching them would save no work and only hold memory.

    `remember`: what keeps the retained data, `original` (the paper's: CE on retained rows plus
    distillation from the original) or `labels` (CE alone: when the original is polluted, as in
    the label-flip and shilling scenarios, distilling from it keeps the damage).
    `teacher`: the forgetting teacher (TEACHERS: paper, contrastive, label, holdout); `alpha`
    is its strength (for label: the fixed amount subtracted). `stop`: `budget` (the epochs
    above) or `membership`: every `check_every` steps (and once before training), on seeded
    samples of `check_rows` forget and holdout rows, stop when the loss-based MIA AUC (forget
    vs holdout) lies within `mia_tol` of the target (`mia_target=chance`: 0.5; `holdout`: the
    original's AUC of one half of the holdout sample against the other) or the KS test of
    their answer margins gives p ≥ `ks_alpha` (`stop_needs=any`; `all` needs both), capped by
    the epoch budget. Holdout-based options need a prepared `holdout` split.
    """

    lr: float = override(TrainParams, "lr", 1e-3)
    epochs: int = override(TrainParams, "epochs", 2)
    weight: float = setting(
        0.6, "w: weight of the retain terms (1 − w: the forget term)", rule="unit"
    )
    alpha: float = setting(2.0, "α: the forgetting teacher's strength", rule="non-negative")
    forget_epochs: int = setting(1, "first epochs with the forget term only", rule="non-negative")
    lora_r: int = setting(16, "the student's LoRA rank", rule="count")
    lora_alpha: int = setting(32, "the student's LoRA alpha", rule="positive")
    lora_dropout: float = setting(0.05, "the student's LoRA dropout", rule="fraction")
    aug: Literal["full", "lora"] = setting(
        "full", "the augmented model: full fine-tuning (the paper's) or LoRA merged back"
    )
    aug_lr: float = setting(5e-5, "the augmented model's learning rate", rule="positive")
    aug_epochs: int = setting(2, "the augmented model's passes over the forget set", rule="count")
    cache_teachers: bool = setting(
        True, "compute each row's teacher logits once (false: at every step, as the paper's code)"
    )
    teacher: str = setting("paper", "the forgetting teacher: paper, contrastive, label or holdout")
    stop: Literal["budget", "membership"] = setting(
        "budget", "budget: the epochs; membership: stop once membership inference fails"
    )
    remember: Literal["original", "labels"] = setting(
        "original", "original: retain CE plus distillation from the original; labels: CE alone"
    )
    check_every: int = setting(20, "membership: steps between checks", rule="count")
    check_rows: int = setting(256, "membership: forget and holdout rows sampled (at least 4)")
    mia_tol: float = setting(
        0.02, "membership: MIA AUC distance to the target that passes", rule="unit"
    )
    mia_target: Literal["chance", "holdout"] = setting(
        "chance", "membership: target AUC, 0.5 or the original's holdout-half AUC"
    )
    ks_alpha: float = setting(0.05, "membership: KS p-value that passes", rule="share")
    stop_needs: Literal["any", "all"] = setting(
        "any", "membership: any passing test stops, or all of them"
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """One clear error for the first value out of range."""
        check_settings(self, "e2urec parameter ")  # choices and ranges of the declarations
        TEACHERS.get(self.teacher)
        if self.check_rows < 4:
            raise E2URecError(
                f"e2urec parameter check_rows must be at least 4, got {self.check_rows}"
            )

    def membership_rule(self) -> MembershipRule:
        """The `stop=membership` settings as the monitor takes them."""
        return MembershipRule(
            check_every=self.check_every,
            check_rows=self.check_rows,
            mia_tol=self.mia_tol,
            mia_target=self.mia_target,
            ks_alpha=self.ks_alpha,
            needs=self.stop_needs,
            batch_size=self.batch_size,
        )

    def needs_holdout(self) -> str | None:
        """Which setting needs the holdout split (None: none does)."""
        if self.stop == "membership":
            return "stop=membership"
        if TEACHERS.get(self.teacher).holdout:
            return f"teacher={self.teacher}"
        return None

    def check_data(self, data_dir: Path) -> None:
        """A setting that needs the holdout split fails clearly when the data has none."""
        setting = self.needs_holdout()
        if setting is not None and not holdout_available(data_dir):
            raise E2URecError(
                f"e2urec {setting} needs a holdout split: prepare the data with --holdout-ratio "
                f"({data_dir} has no non-empty holdout split)"
            )


# ---------------------------------------------------------------- the loss, piece by piece


def combine(
    h_forget: torch.Tensor,
    ce_retain: torch.Tensor | None,
    h_retain: torch.Tensor | None,
    weight: float,
) -> torch.Tensor:
    """The E2URec objective; without retain terms (forget-only epochs) it is h_forget alone,
    without the remembering teacher's term (`remember=labels`) the retain part is CE alone."""
    if ce_retain is None:
        return h_forget
    retain = ce_retain if h_retain is None else ce_retain + h_retain
    return weight * retain + (1.0 - weight) * h_forget


class TeacherCache:
    """A frozen teacher's logits at answer positions, looked up by the batch's row `index`.

    Enabled: each row's output is computed once (by `fill`, or on first use) and kept on the CPU
    as float16 log-probabilities over the full vocabulary at its non-pad answer positions
    ([t, V] per row; memory = rows × t × V × 2 bytes). Their softmax is the teacher's
    distribution, so `soft_ce` sees the same target up to float16 rounding (tests check the loss
    against the recomputed one). Disabled: `compute` runs at every call.
    `compute(batch) -> (logits [B, T, V], labels [B, T])`.
    """

    def __init__(
        self, compute: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]], enabled: bool
    ):
        self.compute = compute
        self.enabled = enabled
        self.rows: dict[int, torch.Tensor] = {}

    def __call__(self, batch: Batch) -> torch.Tensor:
        """Teacher logits [B, T, V] for `batch` (T = its longest answer)."""
        if not self.enabled:
            return self.compute(batch)[0]
        index = batch["index"].tolist()
        if any(i not in self.rows for i in index):
            self._store(index, *self.compute(batch))
        stored = pad_sequence([self.rows[i] for i in index], batch_first=True)
        return stored.to(device=batch["input_ids"].device, dtype=torch.float32)

    def fill(
        self,
        recommender: Recommender,
        rows: Sequence[dict[str, Any]],
        batch_size: int,
        device: torch.device,
        progress: bool = True,
    ) -> None:
        """Compute and keep the outputs of every row of a stream (positions = stream index);
        with `progress`, a bar on interactive terminals."""
        from tqdm.auto import tqdm

        hidden = None if progress else True
        with tqdm(total=len(rows), desc="teacher cache", unit="row", disable=hidden) as bar:
            for index, batch in row_batches(recommender, rows, batch_size, device):
                self({**batch, "index": torch.tensor(index, device=device)})
                bar.update(len(index))

    def nbytes(self) -> int:
        """Bytes held by the cache."""
        return sum(t.numel() * t.element_size() for t in self.rows.values())

    def _store(self, index: list[int], logits: torch.Tensor, labels: torch.Tensor) -> None:
        log_probs = torch.log_softmax(logits.float(), dim=-1).to(torch.float16).cpu()
        lengths = (labels != IGNORE).sum(dim=1).tolist()
        for i, row, length in zip(index, log_probs, lengths, strict=True):
            self.rows.setdefault(i, row[:length].clone())


class Teachers:
    """The frozen teachers of E2URec as functions of a batch.

    original(batch): the student with adapters disabled (= the original model).
    forgetting(batch): the logits of the forgetting teacher named `teacher`, computed by its
    spec's function (TEACHERS[teacher].logits) from the original's and the frozen models' it
    lists (`augmented`, `control`: each must be given); the holdout teacher needs `matched` =
    (sorted forget margins, sorted holdout margins) of the original.
    `forget_p_yes()`: over the forget rows seen so far (each row counted once), the mean P(Yes)
    of the original, the frozen models and the forgetting teacher (first answer position,
    softmax over Yes/No): which way the forgetting teacher pushes the forget set.
    """

    def __init__(
        self,
        recommender: Recommender,
        student: nn.Module,
        augmented: nn.Module | None,
        alpha: float,
        teacher: str = "paper",
        control: nn.Module | None = None,
        matched: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        self.recommender = recommender
        self.student = student
        self.frozen = {"augmented": augmented, "control": control}
        self.alpha = alpha
        self.teacher = teacher
        self.spec = TEACHERS.get(teacher)
        self.matched = matched
        missing = [name for name in self.spec.models if self.frozen.get(name) is None]
        if missing:
            raise E2URecError(f"teacher {teacher!r} needs the {' and '.join(missing)} model")
        if self.spec.holdout and matched is None:
            raise E2URecError(f"teacher {teacher!r} needs the matched forget/holdout margins")
        self._p_yes_sums: dict[str, float] = {}
        self._p_yes_rows = 0
        self._counted: set[int] = set()

    @property
    def augmented(self) -> nn.Module | None:
        return self.frozen["augmented"]

    def release(self) -> None:
        """Drop the frozen models (their outputs are cached)."""
        self.frozen = dict.fromkeys(self.frozen)

    def original(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with inference(self.student), self.student.disable_adapter():
            return self.recommender.target_logits(batch, self.student)

    def _frozen(self, name: str, batch: Batch) -> torch.Tensor:
        if name not in self.frozen:
            raise E2URecError(f"no frozen model {name!r}; E2URec builds {', '.join(self.frozen)}")
        model = self.frozen[name]
        if model is None:
            raise RuntimeError(f"the {name} model was released after caching")
        with inference(model):
            return self.recommender.target_logits(batch, model)[0]

    def forgetting(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        z_orig, labels = self.original(batch)
        frozen = {name: self._frozen(name, batch) for name in self.spec.models}
        trained, other = answer_tokens(labels, self.recommender.yes_id, self.recommender.no_id)
        inputs = TeacherInputs(z_orig, trained, other, frozen, self.alpha, self.matched)
        z_forced = self.spec.logits(inputs)
        self._count_p_yes(batch, original=z_orig, **frozen, forgetting_teacher=z_forced)
        return z_forced, labels

    def _count_p_yes(self, batch: Batch, **logits: torch.Tensor) -> None:
        from e2urec.eval.metrics import p_yes_from_logits

        keep = list(range(len(batch["input_ids"])))
        if "index" in batch:  # rows already counted (a recomputed teacher) are skipped
            index = batch["index"].tolist()
            keep = [k for k, i in enumerate(index) if i not in self._counted]
            self._counted.update(index)
        if not keep:
            return
        yes, no = self.recommender.yes_id, self.recommender.no_id
        for name, z in logits.items():
            first = z[keep, 0].float()
            p_yes = float(p_yes_from_logits(first[:, yes], first[:, no]).sum())
            self._p_yes_sums[name] = self._p_yes_sums.get(name, 0.0) + p_yes
        self._p_yes_rows += len(keep)

    def forget_p_yes(self) -> dict[str, float]:
        """Mean P(Yes) on the forget rows seen so far, per model (empty before any)."""
        if not self._p_yes_rows:
            return {}
        return {k: round(v / self._p_yes_rows, 4) for k, v in self._p_yes_sums.items()}


class E2URecTask:
    """Streams "forget" (defines the epoch) and "retain"; the E2URec loss of one step."""

    main = "forget"

    def __init__(
        self,
        recommender: Recommender,
        forget_rows: Sequence[dict[str, Any]],
        retain_rows: Sequence[dict[str, Any]],
        teachers: Teachers,
        params: E2URecParams,
        cache_retain: bool | None = None,
    ):
        """`cache_retain` (default: `params.cache_teachers`) keeps the remembering teacher's
        outputs on retained rows; `run` turns it off when no retained row is drawn twice."""
        self.recommender = recommender
        self.streams = {"forget": forget_rows, "retain": retain_rows}
        self.params = params
        if cache_retain is None:
            cache_retain = params.cache_teachers
        self.forget_teacher = TeacherCache(teachers.forgetting, params.cache_teachers)
        self.retain_teacher = TeacherCache(teachers.original, cache_retain)

    def loss(
        self, model: nn.Module, batches: dict[str, Batch], epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The E2URec objective on one forget batch and one retain batch."""
        from e2urec.train.losses import answer_ce, soft_ce

        forget = batches["forget"]
        logits, labels = self.recommender.target_logits(forget, model)
        h_forget = soft_ce(self.forget_teacher(forget), logits, labels)
        logs = {"h_forget": float(h_forget.detach())}
        if epoch < self.params.forget_epochs:
            return combine(h_forget, None, None, self.params.weight), logs
        retain = batches["retain"]
        logits, labels = self.recommender.target_logits(retain, model)
        ce_retain = answer_ce(logits, labels)
        logs["ce_retain"] = float(ce_retain.detach())
        h_retain = None
        if self.params.remember == "original":
            h_retain = soft_ce(self.retain_teacher(retain), logits, labels)
            logs["h_retain"] = float(h_retain.detach())
        return combine(h_forget, ce_retain, h_retain, self.params.weight), logs


# ---------------------------------------------------------------- building and running
def retain_rows_repeat(params: E2URecParams, n_forget: int, n_retain: int, world: int) -> bool:
    """Whether the schedule draws some retained row more than once. Every step (forget-only
    epochs too) each process draws one retain batch from an endless reshuffled cycle, so rows
    repeat only once more than `n_retain` have been drawn."""
    from e2urec.train.loop import planned_steps

    steps = planned_steps(n_forget, params.batch_size, params.epochs, params.max_steps, world)
    return steps * world * params.batch_size > n_retain


def lora_config(recommender: Recommender, r: int, alpha: int, dropout: float) -> Any:
    """PEFT LoRA config on the family's attention targets (q & v), for the model's kind."""
    from peft import LoraConfig, TaskType

    family = BACKBONES.get(getattr(recommender, "family", recommender.kind))
    task_type = TaskType.SEQ_2_SEQ_LM if recommender.kind == "seq2seq" else TaskType.CAUSAL_LM
    targets = list(family.lora_targets) if family.lora_targets else None
    return LoraConfig(
        task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets
    )


def add_lora(recommender: Recommender, params: E2URecParams) -> nn.Module:
    """Wrap the recommender's model with fresh LoRA adapters (base frozen); returns the student."""
    from peft import get_peft_model

    config = lora_config(recommender, params.lora_r, params.lora_alpha, params.lora_dropout)
    recommender.model = get_peft_model(recommender.model, config)
    return recommender.model


def tuned_copy(
    ctx: UnlearnContext,
    params: E2URecParams,
    accelerator: Any,
    rows: Sequence[dict[str, Any]],
    desc: str,
) -> nn.Module:
    """The original tuned on `rows` with the augmented model's recipe (`aug`, `aug_lr`,
    `aug_epochs`, keep the last), frozen: the augmented model (forget rows) or the contrastive
    teacher's control (as many retained rows). Its wall time is phase `desc` of the cost."""
    from e2urec.train.loop import LoopConfig, fit
    from e2urec.train.options import options_of
    from e2urec.train.recipes import SupervisedTask

    recommender = ctx.original()
    if params.aug == "lora":
        add_lora(recommender, params)
    cfg = LoopConfig(
        epochs=params.aug_epochs,
        lr=params.aug_lr,
        batch_size=params.batch_size,
        seed=ctx.seed,
        max_steps=params.max_steps,
        **options_of(params),
    )
    task = SupervisedTask(recommender, rows)
    fit(
        recommender,
        recommender.model,
        task,
        cfg,
        ctx.run_dir,
        accelerator=accelerator,
        meter=ctx.meter,
        desc=desc,
    )
    model = recommender.model.merge_and_unload() if params.aug == "lora" else recommender.model
    model.eval()
    model.requires_grad_(False)
    return model


def augmented_model(ctx: UnlearnContext, params: E2URecParams, accelerator: Any) -> nn.Module:
    """The original tuned on the forget set (`aug_epochs` passes, keep the last), frozen."""
    return tuned_copy(ctx, params, accelerator, ctx.rows("forget"), "augmented_model")


def frozen_models(
    ctx: UnlearnContext, params: E2URecParams, accelerator: Any
) -> dict[str, nn.Module]:
    """The tuned copies the teacher reads (TEACHERS[teacher].models), on the device."""
    needed = TEACHERS.get(params.teacher).models
    models = {}
    if "augmented" in needed:
        models["augmented"] = augmented_model(ctx, params, accelerator)
    if "control" in needed:
        forget = ctx.rows("forget")
        control_rows = sample_rows(ctx.rows("retain"), len(forget), ctx.seed, "e2urec", "control")
        models["control"] = tuned_copy(ctx, params, accelerator, control_rows, "control_model")
    return {name: model.to(accelerator.device) for name, model in models.items()}


def run(ctx: UnlearnContext) -> dict[str, Any]:
    """Train the E2URec student; save its adapters; return the manifest fields."""
    from accelerate import Accelerator

    from e2urec.train.loop import derive_seed, fit

    params: E2URecParams = ctx.params
    params.check()
    params.check_data(ctx.data_dir)
    accelerator = Accelerator()
    device = accelerator.device
    forget_rows = ctx.rows("forget")
    holdout_rows = ctx.rows("holdout") if holdout_available(ctx.data_dir) else None
    recommender = ctx.original()  # loading draws no random numbers: the LoRA init is unchanged
    recommender.model.to(device)

    def original(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return recommender.target_logits(batch, recommender.model)

    fields: dict[str, Any] = {
        "format": "adapter",
        "base_run": str(ctx.base_run.absolute()),
        "teacher": {"name": params.teacher, "formula": TEACHERS.get(params.teacher).formula},
    }
    holdout = matched = monitor = None
    if holdout_rows is not None:
        holdout = original_stats(ctx, recommender, original, holdout_rows, device)
        fields["holdout_p_yes"] = {"original": round(float(holdout["p_yes"].mean()), 4)}
    if params.stop == "membership":
        assert holdout_rows is not None  # check_data
        rule = params.membership_rule()
        monitor = MembershipMonitor(recommender, forget_rows, holdout_rows, rule, ctx.seed, device)
        with ctx.meter.phase("membership_checks"), inference(recommender.model):
            already = monitor.start(original)
        if already:  # nothing measurable to forget: the student is the original
            torch.manual_seed(derive_seed(ctx.seed, "lora"))
            student = add_lora(recommender, params)
            return {**fields, **save_student(ctx, student), "stop": monitor.summary(0)}
    if TEACHERS.get(params.teacher).holdout:
        assert holdout is not None  # check_data
        forget = original_stats(ctx, recommender, original, forget_rows, device)
        matched = (
            torch.tensor(np.sort(forget["margin"])),
            torch.tensor(np.sort(holdout["margin"])),
        )
    student, teachers, task = build_task(ctx, accelerator, recommender, matched)
    if params.cache_teachers:
        fill_teacher_cache(ctx, accelerator, recommender, task, teachers)
        check_direction(fields, teachers.forget_p_yes(), params.teacher, holdout)  # before training
    result = fit(
        recommender,
        student,
        task,
        params.loop_config(ctx.seed),
        ctx.run_dir,
        accelerator=accelerator,
        meter=ctx.meter,
        desc="student",
        stop=monitor,
    )
    if monitor is not None:
        with ctx.meter.phase("membership_checks"):
            monitor.finish(student, result.steps)
    fields["teacher_cache"] = cache_summary(task)
    if not params.cache_teachers:  # the teachers' means gathered along the first epoch
        check_direction(fields, teachers.forget_p_yes(), params.teacher, holdout)
    fields["stop"] = (
        monitor.summary(result.steps)
        if monitor is not None
        else {"rule": "budget", "stopped_by": "budget", "step": result.steps}
    )
    return {**fields, **save_student(ctx, student)}


def original_stats(
    ctx: UnlearnContext,
    recommender: Recommender,
    original: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
    rows: Sequence[dict[str, Any]],
    device: Any,
) -> dict[str, np.ndarray]:
    """The original's per-row answer statistics (`score_stats`) over `rows`, timed as phase
    holdout_scores."""
    with ctx.meter.phase("holdout_scores"), inference(recommender.model):
        return score_stats(recommender, original, rows, ctx.params.batch_size, device)


def build_task(
    ctx: UnlearnContext,
    accelerator: Any,
    recommender: Recommender,
    matched: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[nn.Module, Teachers, E2URecTask]:
    """The frozen copies the teacher reads, the LoRA student (its initialisation seeded here
    when nothing was trained before), the teachers and the task."""
    from e2urec.train.loop import derive_seed

    params: E2URecParams = ctx.params
    frozen = frozen_models(ctx, params, accelerator)
    if not frozen:  # nothing was trained before: seed the adapters' initialisation here
        torch.manual_seed(derive_seed(ctx.seed, "lora"))
    student = add_lora(recommender, params).to(accelerator.device)
    teachers = Teachers(
        recommender,
        student,
        frozen.get("augmented"),
        params.alpha,
        teacher=params.teacher,
        control=frozen.get("control"),
        matched=matched,
    )
    forget_rows, retain_rows = ctx.rows("forget"), ctx.rows("retain")
    cache_retain = (
        params.cache_teachers
        and params.remember == "original"
        and retain_rows_repeat(
            params, len(forget_rows), len(retain_rows), accelerator.num_processes
        )
    )
    task = E2URecTask(recommender, forget_rows, retain_rows, teachers, params, cache_retain)
    return student, teachers, task


def fill_teacher_cache(
    ctx: UnlearnContext,
    accelerator: Any,
    recommender: Recommender,
    task: E2URecTask,
    teachers: Teachers,
) -> None:
    """Compute the forgetting teacher on every forget row once, then drop the tuned copies."""
    with ctx.meter.phase("teacher_cache"):
        task.forget_teacher.fill(
            recommender,
            ctx.rows("forget"),
            ctx.params.batch_size,
            accelerator.device,
            progress=accelerator.is_main_process,
        )
    teachers.release()  # cached: the tuned copies are no longer needed


def cache_summary(task: E2URecTask) -> dict[str, Any]:
    """The manifest's record of the teacher caches: enabled, rows held, size."""
    cache_mb = (task.forget_teacher.nbytes() + task.retain_teacher.nbytes()) / 2**20
    return {
        "enabled": task.forget_teacher.enabled,
        "retain_enabled": task.retain_teacher.enabled,
        "storage": "float16 full-vocabulary log-probs at answer positions",
        "forget_rows": len(task.forget_teacher.rows),
        "retain_rows": len(task.retain_teacher.rows),
        "mb": round(cache_mb, 1),
    }


def save_student(ctx: UnlearnContext, student: nn.Module) -> dict[str, Any]:
    """Save the student's adapters (PEFT safetensors); the manifest's cost field."""
    with ctx.meter.phase("save"):
        student.save_pretrained(ctx.run_dir / ADAPTER_DIR, safe_serialization=True)
    return {"cost": ctx.meter.summary(student)}


register(
    Method(
        name="e2urec",
        params=E2URecParams,
        run=run,
        description="LoRA student taught by a forgetting teacher (forced logits from an "
        "augmented model) and the original as remembering teacher",
        source="paper",
    )
)
