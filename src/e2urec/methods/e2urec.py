"""E2URec: LoRA student distilled from a forgetting teacher and a remembering teacher.

Student = the original model + LoRA; only the adapters train. The augmented model is the
original tuned further on the forget set; the forgetting teacher's logits are
`z_f = z_orig − α·ReLU(z_aug − z_orig)`, the remembering teacher is the original (the student
with its adapters disabled). Loss per step, as in the paper's code:
`w·(CE_retain + H(p_orig, p_student)_retain) + (1 − w)·H(p_f, p_student)_forget`, where H is
the cross-entropy over the full vocabulary at every answer position; during the first
`forget_epochs` epochs the loss is `H(p_f, p_student)_forget` alone.

The run saves only the adapters (`adapter/`, PEFT safetensors) and points at the original run
(manifest "format": "adapter", "base_run"); the "adapter" run format is registered here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from e2urec.backbones import BACKBONES, IGNORE, Recommender
from e2urec.errors import E2URecError
from e2urec.methods.base import Method, TrainParams, UnlearnContext, register
from e2urec.runs import RUN_FORMATS, RunModel, SingleModel, load_run_model

ADAPTER_DIR = "adapter"
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
    """

    lr: float = 1e-3
    epochs: int = 2
    weight: float = 0.6
    alpha: float = 2.0
    forget_epochs: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    aug: str = "full"
    aug_lr: float = 5e-5
    aug_epochs: int = 2
    cache_teachers: bool = True

    def check(self) -> None:
        """One clear error for the first value out of range."""
        if self.aug not in ("full", "lora"):
            raise E2URecError(f"e2urec parameter aug must be full or lora, got {self.aug!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise E2URecError(f"e2urec parameter weight must lie in [0, 1], got {self.weight}")
        if self.epochs < 1 or self.aug_epochs < 1:
            raise E2URecError("e2urec parameters epochs and aug_epochs must be at least 1")


# ---------------------------------------------------------------- the loss, piece by piece
def forced_teacher(z_orig: torch.Tensor, z_aug: torch.Tensor, alpha: float) -> torch.Tensor:
    """Forgetting-teacher logits: z_orig − α·ReLU(z_aug − z_orig)."""
    return z_orig - alpha * F.relu(z_aug - z_orig)


def combine(
    h_forget: torch.Tensor,
    ce_retain: torch.Tensor | None,
    h_retain: torch.Tensor | None,
    weight: float,
) -> torch.Tensor:
    """The E2URec objective; without retain terms (forget-only epochs) it is h_forget alone."""
    if ce_retain is None or h_retain is None:
        return h_forget
    return weight * (ce_retain + h_retain) + (1.0 - weight) * h_forget


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the block; the previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


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
            for start in range(0, len(rows), batch_size):
                batch = recommender.collate(rows[start : start + batch_size])
                batch["index"] = torch.arange(start, start + len(batch["input_ids"]))
                self(to_device(batch, device))
                bar.update(len(batch["index"]))

    def nbytes(self) -> int:
        """Bytes held by the cache."""
        return sum(t.numel() * t.element_size() for t in self.rows.values())

    def _store(self, index: list[int], logits: torch.Tensor, labels: torch.Tensor) -> None:
        log_probs = torch.log_softmax(logits.float(), dim=-1).to(torch.float16).cpu()
        lengths = (labels != IGNORE).sum(dim=1).tolist()
        for i, row, length in zip(index, log_probs, lengths, strict=True):
            self.rows.setdefault(i, row[:length].clone())


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch's tensors on `device`."""
    return {k: v.to(device) for k, v in batch.items()}


class Teachers:
    """The two frozen teachers of E2URec as functions of a batch.

    original(batch): the student with adapters disabled (= the original model).
    forgetting(batch): forced_teacher(original, augmented, α).
    `forget_p_yes()`: over the forget rows seen so far, the mean P(Yes) of the original, the
    augmented model and the forgetting teacher (first answer position, softmax over Yes/No):
    which way the forgetting teacher pushes the forget set.
    """

    def __init__(
        self,
        recommender: Recommender,
        student: nn.Module,
        augmented: nn.Module | None,
        alpha: float,
    ):
        self.recommender = recommender
        self.student = student
        self.augmented = augmented
        self.alpha = alpha
        self._p_yes_sums = dict.fromkeys(("original", "augmented", "forgetting_teacher"), 0.0)
        self._p_yes_rows = 0

    def original(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with inference(self.student), self.student.disable_adapter():
            return self.recommender.target_logits(batch, self.student)

    def forgetting(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augmented is None:
            raise RuntimeError("the augmented model was released after caching")
        z_orig, labels = self.original(batch)
        with inference(self.augmented):
            z_aug, _ = self.recommender.target_logits(batch, self.augmented)
        z_forced = forced_teacher(z_orig, z_aug, self.alpha)
        self._count_p_yes(original=z_orig, augmented=z_aug, forgetting_teacher=z_forced)
        return z_forced, labels

    def _count_p_yes(self, **logits: torch.Tensor) -> None:
        from e2urec.eval.metrics import p_yes_from_logits

        yes, no = self.recommender.yes_id, self.recommender.no_id
        for name, z in logits.items():
            first = z[:, 0].float()
            self._p_yes_sums[name] += float(p_yes_from_logits(first[:, yes], first[:, no]).sum())
        self._p_yes_rows += len(next(iter(logits.values())))

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
        h_retain = soft_ce(self.retain_teacher(retain), logits, labels)
        logs.update(ce_retain=float(ce_retain.detach()), h_retain=float(h_retain.detach()))
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


def augmented_model(ctx: UnlearnContext, params: E2URecParams, accelerator: Any) -> nn.Module:
    """The original tuned on the forget set (`aug_epochs` passes, keep the last), frozen."""
    from e2urec.train.loop import LoopConfig, fit
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
    )
    task = SupervisedTask(recommender, ctx.rows("forget"))
    fit(
        recommender,
        recommender.model,
        task,
        cfg,
        ctx.run_dir,
        accelerator=accelerator,
        meter=ctx.meter,
        desc="augmented_model",
    )
    model = recommender.model.merge_and_unload() if params.aug == "lora" else recommender.model
    model.eval()
    model.requires_grad_(False)
    return model


def run(ctx: UnlearnContext) -> dict[str, Any]:
    """Train the E2URec student; save its adapters; return the manifest fields."""
    from accelerate import Accelerator

    from e2urec.train.loop import fit

    params: E2URecParams = ctx.params
    params.check()
    accelerator = Accelerator()
    augmented = augmented_model(ctx, params, accelerator).to(accelerator.device)
    recommender = ctx.original()
    student = add_lora(recommender, params).to(accelerator.device)
    teachers = Teachers(recommender, student, augmented, params.alpha)
    forget_rows, retain_rows = ctx.rows("forget"), ctx.rows("retain")
    cache_retain = params.cache_teachers and retain_rows_repeat(
        params, len(forget_rows), len(retain_rows), accelerator.num_processes
    )
    task = E2URecTask(recommender, forget_rows, retain_rows, teachers, params, cache_retain)
    if params.cache_teachers:
        with ctx.meter.phase("teacher_cache"):
            task.forget_teacher.fill(
                recommender,
                forget_rows,
                params.batch_size,
                accelerator.device,
                progress=accelerator.is_main_process,
            )
        teachers.augmented = None  # cached: the augmented model is no longer needed
        del augmented
    fit(
        recommender,
        student,
        task,
        params.loop_config(ctx.seed),
        ctx.run_dir,
        accelerator=accelerator,
        meter=ctx.meter,
        desc="student",
    )
    with ctx.meter.phase("save"):
        student.save_pretrained(ctx.run_dir / ADAPTER_DIR, safe_serialization=True)
    cache_mb = (task.forget_teacher.nbytes() + task.retain_teacher.nbytes()) / 2**20
    return {
        "format": "adapter",
        "base_run": str(ctx.base_run.absolute()),
        "teacher_cache": {
            "enabled": params.cache_teachers,
            "retain_enabled": cache_retain,
            "storage": "float16 full-vocabulary log-probs at answer positions",
            "forget_rows": len(task.forget_teacher.rows),
            "retain_rows": len(task.retain_teacher.rows),
            "mb": round(cache_mb, 1),
        },
        "forget_p_yes": teachers.forget_p_yes(),
        "cost": ctx.meter.summary(student),
    }


@RUN_FORMATS.register("adapter")
def load_adapter_run(run: Path, manifest: dict[str, Any]) -> RunModel:
    """The base run's model with this run's LoRA adapters (run format "adapter")."""
    from peft import PeftModel

    base = load_run_model(manifest["base_run"])
    if not isinstance(base, SingleModel):
        raise E2URecError(f"adapter run {run}: its base run is not a single model")
    recommender = base.recommender
    recommender.model = PeftModel.from_pretrained(recommender.model, run / ADAPTER_DIR)
    return SingleModel(recommender)


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
