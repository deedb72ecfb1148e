"""The training settings, declared once, and the trainer's optimisation options.

`TrainOptions` (precision, gradient accumulation, clipping, learning-rate schedule, weight
decay) < `StepSettings` (epochs, lr, batch_size, max_steps: the methods' TrainParams) <
`LoopSettings` (+ patience, keep, eval_batch_size: the loop's LoopConfig) < `SupervisedSettings`
(+ backbone, init_seed, max_length: the bench's train section, the ensembles' Recipe) <
`TrainJob` (+ seed: `e2urec train`). Each setting is declared once (`config.setting`:
help text, range rule, `Literal` choices), so it is spelled the same everywhere
(`--precision bf16`, `--set precision=bf16`, `train.precision`), validated by one function and
shown by the CLI and the docs. A subclass may change a default (`config.override`), never the
meaning. The option defaults reproduce the loop before they existed, bit for bit: fp32, one
batch per step, no clipping, a constant rate, no weight decay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from e2urec.config import override, setting, settings_of
from e2urec.errors import E2URecError

PrecisionName = Literal["fp32", "bf16", "fp16"]
SchedulerName = Literal["constant", "linear", "cosine"]
Keep = Literal["best", "last"]


@dataclass
class TrainOptions:
    """The trainer's optimisation options, shared by every trained job."""

    precision: PrecisionName = setting(
        "fp32", "autocast precision (fp16 adds loss scaling and needs CUDA)"
    )
    grad_accum: int = setting(
        1, "batches per optimizer step (the step's batch is grad_accum × batch_size)", rule="count"
    )
    max_grad_norm: float | None = setting(
        None, "clip the gradients' global L2 norm to this (none: no clipping)", rule="positive"
    )
    scheduler: SchedulerName = setting("constant", "learning-rate schedule after the warm-up")
    warmup_ratio: float = setting(
        0.0, "share of the planned optimizer steps with linear warm-up", rule="fraction"
    )
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay", rule="non-negative")


@dataclass
class StepSettings(TrainOptions):
    """How long and how fast a trained job optimises (the methods' TrainParams)."""

    epochs: int = setting(10, "passes over the training stream", rule="count")
    lr: float = setting(1e-3, "AdamW learning rate", rule="positive")
    batch_size: int = setting(16, "rows per batch (per process)", rule="count")
    max_steps: int | None = setting(None, "cap on optimizer steps (none: no cap)", rule="count")


@dataclass
class LoopSettings(StepSettings):
    """A validated fit: early stopping on the valid split (LoopConfig, recipes)."""

    patience: int = setting(3, "epochs without a better valid loss before stopping", rule="count")
    keep: Keep = setting(
        "best",
        "best: early stopping on valid, best epoch kept (the paper's); last: no validation, "
        "all epochs run and the last weights are kept",
    )
    eval_batch_size: int = setting(64, "rows per batch when scoring the valid split", rule="count")


@dataclass
class Seeded:
    """The seed of a training run's data order and dropout."""

    seed: int = setting(42, "data order and dropout")


@dataclass
class SupervisedSettings(LoopSettings):
    """The supervised recipe (Original, Retrain, shard models): the loop plus the backbone."""

    backbone: str = setting(
        "t5-tiny",
        "t5-tiny | causal-tiny | t5:PATH_OR_ID | causal:PATH_OR_ID | bert:PATH_OR_ID | minilm "
        "| smollm2 | gguf:FILE",
        metavar="SPEC",
    )
    lr: float | None = override(
        StepSettings,
        "lr",
        None,
        help="AdamW learning rate; none: 1e-3 for tiny backbones, 5e-5 full / 1e-4 LoRA for "
        "pretrained ones (the family's LoRA rate where it has one)",
    )
    init_seed: int = setting(
        0, "initial weights of tiny backbones, shared by every run like a pretrained checkpoint"
    )
    max_length: int = setting(512, "max prompt+answer tokens", rule="count")
    finetune: Literal["full", "lora"] = setting(
        "full",
        "full fine-tuning, or LoRA r16/alpha32 on the family's targets (over a pretrained base "
        "the run stores the adapter only)",
    )


@dataclass
class TrainJob(Seeded, SupervisedSettings):
    """`e2urec train`: one recommender on one split."""


def options_of(settings: Any) -> dict[str, Any]:
    """The TrainOptions values of any settings object that carries them."""
    return settings_of(TrainOptions, settings)


def device_type() -> str:
    """ "cuda" or "cpu": where the trainer will run (see `runner.use_cpu`)."""
    from e2urec.train.runner import use_cpu

    return "cpu" if use_cpu() else "cuda"


def check_precision(precision: str, where: str = "") -> None:
    """bf16 needs a CPU or a GPU with bf16 support; fp16 (with loss scaling) needs CUDA."""
    import torch

    device = device_type()
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise E2URecError(f"{where}precision bf16 is not supported by this GPU; use fp16 or fp32")
    if precision == "fp16" and device != "cuda":
        raise E2URecError(f"{where}precision fp16 needs a CUDA GPU; on CPU use bf16 or fp32")


class Precision:
    """Autocast for the forward passes and, for fp16, a gradient scaler (torch AMP, what
    Accelerate's mixed precision wraps; used per fit because Accelerate fixes the precision
    once per process). fp32: no autocast, no scaler."""

    def __init__(self, precision: str, device: Any) -> None:
        import torch

        self.name = precision
        self.device_type = torch.device(device).type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device_type) if precision == "fp16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward passes' context (a no-op for fp32)."""
        import torch

        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype):
            yield

    def scale(self, loss: Any) -> Any:
        """The loss to back-propagate (scaled for fp16)."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale(self, optimizer: Any) -> None:
        """Unscale the gradients before clipping (fp16)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: Any) -> None:
        """The optimizer step (skipped by the scaler on inf/nan gradients under fp16)."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


def make_scheduler(optimizer: Any, options: TrainOptions, total_steps: int) -> Any:
    """transformers' schedule for `options` over `total_steps` optimizer steps, or None for a
    constant rate without warm-up (the optimizer's rate is then never touched)."""
    import math

    from transformers import get_scheduler

    warmup = math.ceil(options.warmup_ratio * total_steps)
    if options.scheduler == "constant" and warmup == 0:
        return None
    name = "constant_with_warmup" if options.scheduler == "constant" else options.scheduler
    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1)
    )
