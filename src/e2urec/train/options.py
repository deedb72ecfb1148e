"""The trainer's optimisation options shared by every trained job: precision, gradient
accumulation, clipping, learning-rate schedule, weight decay.

`TrainOptions` is a dataclass mixed into every settings class that feeds the loop (LoopConfig,
the bench's train section, the ensemble recipe, the methods' TrainParams), so one option is
spelled the same everywhere (`--precision bf16`, `--set precision=bf16`, `train.precision`) and
lands in every manifest. The defaults reproduce the loop before these options existed, bit for
bit: fp32, one batch per step, no clipping, a constant rate, no weight decay.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from e2urec.config import check_ranges
from e2urec.errors import E2URecError

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULERS = ("constant", "linear", "cosine")
OPTION_RANGES = {
    "grad_accum": "count",
    "max_grad_norm": "positive",
    "warmup_ratio": "fraction",
    "weight_decay": "non-negative",
}


@dataclass
class TrainOptions:
    """precision: fp32 | bf16 | fp16 (autocast; fp16 adds loss scaling and needs CUDA);
    grad_accum: batches per optimizer step (the step's batch is grad_accum × batch_size);
    max_grad_norm: clip the gradients' global L2 norm (None: no clipping);
    scheduler: constant | linear | cosine learning rate after `warmup_ratio` of the planned
    optimizer steps of linear warm-up; weight_decay: AdamW's decoupled decay."""

    precision: str = "fp32"
    grad_accum: int = 1
    max_grad_norm: float | None = None
    scheduler: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0

    def check_options(self, where: str = "") -> None:
        """One clear error for the first option out of range or unsupported on this device."""
        check_ranges(self, OPTION_RANGES, where)
        for name, choices in (("precision", PRECISIONS), ("scheduler", SCHEDULERS)):
            if getattr(self, name) not in choices:
                raise E2URecError(
                    f"{where}{name} must be one of {', '.join(choices)}, "
                    f"got {getattr(self, name)!r}"
                )
        check_precision(self.precision, where)


def option_names() -> tuple[str, ...]:
    """The TrainOptions field names."""
    return tuple(f.name for f in dataclasses.fields(TrainOptions))


def options_of(settings: Any) -> dict[str, Any]:
    """The TrainOptions values of any settings object that carries them."""
    return {name: getattr(settings, name) for name in option_names()}


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
