"""The one training loop: any Task, AdamW on the trainable parameters, early stopping, resume.

Works alone (one process, GPU if present) and under `accelerate launch` (N processes; each takes
its share of every epoch's batches, gradients are averaged by DDP, the validation loss is
reduced so all processes stop together). `batch_size` is per process; an optimizer step takes
`grad_accum` batches. Precision, clipping, schedule and weight decay: `train.options`.

Determinism: the order of every stream and the torch RNG (dropout) are derived from
(seed, stream or epoch, process) at each epoch start (`train.streams`), so a resumed run
replays exactly what an uninterrupted one would have done.

Checkpoints (`train.checkpoint`) are written only by fits that can be resumed
(`checkpoint=True`: `e2urec train`), after every epoch and once more, marked complete, when fit
ends (resuming a run whose later phase was interrupted skips a finished phase;
`runner.finish_run` removes it). Their seconds are kept out of the phase's time and reported
apart (`CostMeter.exclude`). Unlearning methods never resume and never write one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from e2urec.backbones import Recommender
from e2urec.config import check_settings
from e2urec.errors import E2URecError
from e2urec.runs import LOG
from e2urec.train import checkpoint as ckpt
from e2urec.train.cost import CostMeter
from e2urec.train.options import (
    LoopSettings,
    Precision,
    Seeded,
    check_precision,
    make_scheduler,
)
from e2urec.train.runner import CHECKPOINT_DIR, process_state, use_cpu
from e2urec.train.streams import (  # noqa: F401  (re-exported: the loop's public helpers)
    Cycle,
    derive_seed,
    epoch_groups,
    permutation,
    planned_steps,
    step_groups,
    steps_per_epoch,
)
from e2urec.train.task import Batch, Task

RESUME_FIXED = ckpt.RESUME_FIXED


@dataclass
class LoopConfig(Seeded, LoopSettings):
    """The loop's settings (`train.options.LoopSettings`: epochs, lr, batch_size per process,
    max_steps, patience, keep, eval_batch_size and the TrainOptions) and the run's seed.
    `keep`: "best" (early stopping on the validation loss, best epoch kept) or "last" (no
    validation: the whole budget runs and the last weights are kept)."""

    def check(self, where: str = "") -> None:
        """One clear error for the first setting out of range (before anything is written)."""
        check_settings(self, where)
        check_precision(self.precision, where)


@dataclass
class FitResult:
    """What fit did: optimizer steps, samples seen (all processes), epochs, the kept epoch."""

    steps: int
    samples: int
    epochs_run: int
    best_epoch: int | None
    best_valid: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FitState:
    """The loop's progress, saved in a checkpoint and restored on resume."""

    step: int = 0
    samples: int = 0
    epochs_done: int = 0
    bad_epochs: int = 0
    best_valid: float | None = None
    best_epoch: int | None = None
    best_is_current: bool = False
    stopped: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    streams: dict[str, list[int]] = field(default_factory=dict)  # name -> [cycle, position]

    def result(self) -> FitResult:
        """The FitResult this state stands for."""
        return FitResult(
            steps=self.step,
            samples=self.samples,
            epochs_run=len(self.history),
            best_epoch=self.best_epoch,
            best_valid=self.best_valid,
            history=self.history,
        )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


@dataclass
class _Run:
    """Everything one fit works with (built by `_start`)."""

    recommender: Recommender
    task: Task
    cfg: LoopConfig
    accelerator: Any
    model: nn.Module
    optimizer: Any
    scheduler: Any
    precision: Precision
    params: dict[str, nn.Parameter]
    folder: Path
    desc: str
    checkpoint: bool
    state: FitState = field(default_factory=FitState)
    best: dict[str, torch.Tensor] | None = None
    cycles: dict[str, Cycle] = field(default_factory=dict)
    log: Any = None
    bar: Any = None
    began: float = 0.0
    checkpoint_s: float = 0.0

    def write(self, record: dict[str, Any]) -> None:
        """Append one record of this phase to log.jsonl (main process)."""
        if self.log is not None:
            self.log.write(json.dumps({"phase": self.desc, **record}) + "\n")
            self.log.flush()

    def elapsed(self) -> float:
        """Seconds since the loop began, checkpoint writes excluded."""
        return round(time.perf_counter() - self.began - self.checkpoint_s, 3)


def fit(
    recommender: Recommender,
    model: nn.Module,
    task: Task,
    cfg: LoopConfig,
    run_dir: str | Path,
    *,
    validate: Callable[[nn.Module], float] | None = None,
    accelerator: Any = None,
    resume: bool = False,
    desc: str = "train",
    meter: CostMeter | None = None,
    stop: Callable[[nn.Module, int], bool] | None = None,
    checkpoint: bool = False,
) -> FitResult:
    """Train `model` on `task` (see the module docstring); returns what happened.

    validate(model) -> float (lower is better) runs after every epoch on the unwrapped model
    in eval mode; training stops after `cfg.patience` epochs without improvement and the best
    trainable weights are restored. Without `validate`, or with `cfg.keep == "last"` (then
    `validate` is not called), the full epoch/step budget runs and the last weights are kept.
    `task.loss` receives the prepared model (a DDP wrapper under several processes;
    `unwrap(model)` gives the module) and batches already on the device
    (`runner.process_state().device`, where a task's other models belong), inside the
    precision's autocast. `desc` names this phase in log.jsonl, the progress bar and the
    checkpoint folder. `meter` (optional) accumulates the phase's seconds (checkpoint writes
    excluded, counted apart) and the optimizer steps and samples. `stop(model, step) -> bool`
    (optional) runs after every optimizer step on the unwrapped model (in train mode; it must
    restore any mode it changes); True ends training there (any process saying True stops all)
    and the last weights are kept. `checkpoint`: write the resumable checkpoint (needed by
    `resume`).
    """
    from accelerate import Accelerator

    own = accelerator is None
    if own:
        process_state()
        accelerator = Accelerator(cpu=use_cpu())
    run_dir = Path(run_dir)
    run = _start(recommender, model, task, cfg, accelerator, run_dir / CHECKPOINT_DIR / desc)
    run.desc, run.checkpoint = desc, checkpoint or resume
    saved = (
        ckpt.read_checkpoint(run.folder, dataclasses.asdict(cfg), _world(run)) if resume else None
    )
    if saved is not None and saved.get("complete"):
        ckpt.load_params(run.params, ckpt.load_weights(run.folder))
        _finish(run, own, meter, 0.0, (0, 0))
        return FitResult(**saved["result"])
    if saved is not None:
        _restore(run, saved)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            ckpt.trim_log(run_dir / LOG, desc, run.state.step)
    accelerator.wait_for_everyone()
    start = (run.state.step, run.state.samples)
    validate = None if cfg.keep == "last" else validate
    _train(run, run_dir / LOG, validate, stop)
    if validate is not None and run.best is not None:
        ckpt.load_params(run.params, run.best)
    result = run.state.result()
    if run.checkpoint:
        _save(run, {"complete": True, "result": dataclasses.asdict(result)}, final=True)
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - run.began - run.checkpoint_s
    _finish(run, own, meter, seconds, (run.state.step - start[0], run.state.samples - start[1]))
    return result


def _world(run: _Run) -> int:
    return run.accelerator.num_processes


def _start(
    recommender: Recommender,
    model: nn.Module,
    task: Task,
    cfg: LoopConfig,
    accelerator: Any,
    folder: Path,
) -> _Run:
    """Check the inputs, build the optimizer, schedule and precision, prepare the model."""
    cfg.check()
    for name, rows in task.streams.items():
        if not rows:
            raise E2URecError(f"training stream {name!r} is empty")
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise E2URecError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    world = accelerator.num_processes
    total = planned_steps(
        len(task.streams[task.main]), cfg.batch_size, cfg.epochs, cfg.max_steps, world,
        cfg.grad_accum,
    )  # fmt: skip
    run = _Run(
        recommender=recommender,
        task=task,
        cfg=cfg,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg, total),
        precision=Precision(cfg.precision, accelerator.device),
        params=params,
        folder=folder,
        desc="train",
        checkpoint=False,
    )
    run.state.streams = {name: [0, 0] for name in task.streams if name != task.main}
    return run


def _restore(run: _Run, saved: dict[str, Any]) -> None:
    """Continue from an interrupted fit's checkpoint."""
    ckpt.load_params(run.params, ckpt.load_weights(run.folder))
    ckpt.load_optimizer(run.folder, run.optimizer)
    if run.scheduler is not None:
        run.scheduler.load_state_dict(saved["scheduler"])
    if run.precision.scaler is not None:
        run.precision.scaler.load_state_dict(saved["scaler"])
    run.state = FitState(**saved["state"])
    if run.state.best_epoch is not None:
        run.best = (
            ckpt.snapshot(run.params)
            if run.state.best_is_current
            else ckpt.load_weights(run.folder, "best")
        )


def _train(
    run: _Run,
    log_path: Path,
    validate: Callable[[nn.Module], float] | None,
    stop: Callable[[nn.Module, int], bool] | None,
) -> None:
    """The epochs: steps, then validation, history and checkpoint after each."""
    from tqdm.auto import tqdm

    cfg, task, main = run.cfg, run.task, run.accelerator.is_main_process
    streams = task.streams
    run.cycles = {
        name: Cycle(len(streams[name]), cfg.seed, name, *pos)
        for name, pos in run.state.streams.items()
    }
    total = planned_steps(
        len(streams[task.main]), cfg.batch_size, cfg.epochs, cfg.max_steps, _world(run),
        cfg.grad_accum,
    )  # fmt: skip
    initial = min(run.state.step, total)
    run.bar = tqdm(total=total, initial=initial, desc=run.desc, disable=(not main) or None)
    run.log = open(log_path, "a", encoding="utf-8") if main else None
    run.began = time.perf_counter()
    try:
        epoch = run.state.epochs_done
        while not run.state.stopped and epoch < cfg.epochs:
            if cfg.max_steps is not None and run.state.step >= cfg.max_steps:
                break
            losses = _run_epoch(run, epoch, stop)
            _end_epoch(run, epoch, losses, validate)
            epoch += 1
    finally:
        run.bar.close()
        if run.log is not None:
            run.log.close()


def _run_epoch(run: _Run, epoch: int, stop: Callable[[nn.Module, int], bool] | None) -> list[float]:
    """One pass over the main stream; returns the optimizer steps' losses."""
    cfg, task, accelerator = run.cfg, run.task, run.accelerator
    torch.manual_seed(derive_seed(cfg.seed, "dropout", epoch, accelerator.process_index))
    run.model.train()
    size = len(task.streams[task.main])
    groups = epoch_groups(size, cfg.batch_size, cfg.seed, task.main, epoch, _world(run))
    losses = []
    for micro in step_groups(groups, cfg.grad_accum):
        if cfg.max_steps is not None and run.state.step >= cfg.max_steps:
            break
        losses.append(_optimizer_step(run, micro, epoch))
        if stop is not None and _any_process(accelerator, stop(unwrap(run.model), run.state.step)):
            run.state.stopped = True
            run.write({"event": "stop", "step": run.state.step, "epoch": epoch})
            break
    return losses


def _optimizer_step(run: _Run, micro: list[list[list[int]]], epoch: int) -> float:
    """Forward and backward over `micro` (grad_accum batch steps, each one index batch per
    process), then clip, step and schedule; returns the mean loss."""
    accelerator, task, rank = run.accelerator, run.task, run.accelerator.process_index
    device, world, parts = accelerator.device, _world(run), len(micro)
    values, logged = [], {}
    for i, group in enumerate(micro):
        batches = {task.main: _batch(run.recommender, task.streams[task.main], group[rank], device)}
        for name, cycle in run.cycles.items():
            drawn = [cycle.take(run.cfg.batch_size) for _ in range(world)]
            batches[name] = _batch(run.recommender, task.streams[name], drawn[rank], device)
        last = i == parts - 1
        sync = contextlib.nullcontext() if last or world == 1 else accelerator.no_sync(run.model)
        with sync:
            with run.precision.autocast():
                loss, logs = task.loss(run.model, batches, epoch)
            accelerator.backward(run.precision.scale(loss if parts == 1 else loss / parts))
        values.append(float(accelerator.reduce(loss.detach(), "mean")))
        for key, value in logs.items():
            logged[key] = logged.get(key, 0.0) + float(value) / parts
        run.state.samples += sum(len(index) for index in group)
    record: dict[str, Any] = {"lr": run.optimizer.param_groups[0]["lr"]}
    if run.cfg.max_grad_norm is not None:
        run.precision.unscale(run.optimizer)
        norm = accelerator.clip_grad_norm_(list(run.params.values()), run.cfg.max_grad_norm)
        record["grad_norm"] = float(norm)
    run.precision.step(run.optimizer)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scheduler is not None:
        run.scheduler.step()
    run.state.step += 1
    value = sum(values) / parts
    for name, cycle in run.cycles.items():
        run.state.streams[name] = [cycle.cycle, cycle.pos]
    run.bar.update(1)
    run.bar.set_postfix(epoch=epoch, loss=f"{value:.4f}", refresh=False)
    run.write(
        {"event": "step", "step": run.state.step, "epoch": epoch, "loss": value, **logged}
        | record
        | {"elapsed_s": run.elapsed()}
    )
    return value


def _end_epoch(
    run: _Run, epoch: int, losses: list[float], validate: Callable[[nn.Module], float] | None
) -> None:
    """Validation (early stopping), the epoch's record and the checkpoint."""
    state = run.state
    record: dict[str, Any] = {
        "epoch": epoch,
        "step": state.step,
        "train_loss": sum(losses) / len(losses) if losses else None,
    }
    state.best_is_current = True
    if validate is not None:
        raw = unwrap(run.model)
        raw.eval()
        with run.precision.autocast():
            valid = validate(raw)
        raw.train()
        if _world(run) > 1:  # every process must take the same stop decision
            valid = torch.tensor(valid, dtype=torch.float64, device=run.accelerator.device)
            valid = float(run.accelerator.reduce(valid, "mean"))
        record["valid_loss"] = valid
        improved = state.best_valid is None or (valid < state.best_valid and not math.isnan(valid))
        state.best_is_current = improved
        if improved:
            state.best_valid, state.best_epoch, state.bad_epochs = valid, epoch, 0
            run.best = ckpt.snapshot(run.params)
        else:
            state.bad_epochs += 1
            state.stopped = state.bad_epochs >= run.cfg.patience
    else:
        state.best_epoch = epoch
    state.history.append(record)
    run.write({"event": "epoch", **record, "elapsed_s": run.elapsed()})
    state.epochs_done = epoch + 1
    if run.checkpoint:
        _save(run, {"complete": False})
    run.accelerator.wait_for_everyone()


def _save(run: _Run, extra: dict[str, Any], final: bool = False) -> None:
    """Write the checkpoint (main process); its seconds are kept out of the phase's time."""
    if not run.accelerator.is_main_process:
        return
    began = time.perf_counter()
    state = {
        "state": dataclasses.asdict(run.state),
        "best_is_current": True if final else run.state.best_is_current,
        "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
        "scaler": None if run.precision.scaler is None else run.precision.scaler.state_dict(),
        "world": _world(run),
        "config": dataclasses.asdict(run.cfg),
        **extra,
    }
    optimizer, best = (None, None) if final else (run.optimizer, run.best)
    ckpt.save_checkpoint(run.folder, run.params, optimizer, best, state)
    run.checkpoint_s += time.perf_counter() - began


def _batch(
    recommender: Recommender, rows: Sequence[dict[str, Any]], index: list[int], device: Any
) -> Batch:
    batch = recommender.collate([rows[i] for i in index])
    batch["index"] = torch.tensor(index, dtype=torch.long)
    return {key: value.to(device) for key, value in batch.items()}


def _any_process(accelerator: Any, decision: bool) -> bool:
    """True on every process when `decision` is True on any of them."""
    if accelerator.num_processes == 1:
        return decision
    flag = torch.tensor(float(decision), device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum") > 0)


def _finish(
    run: _Run, own: bool, meter: CostMeter | None, seconds: float, counts: tuple[int, int]
) -> None:
    if meter is not None:
        meter.phases[run.desc] = meter.phases.get(run.desc, 0.0) + seconds
        meter.count(*counts)
        meter.exclude("checkpoint", run.checkpoint_s)
    if own:
        run.accelerator.free_memory()
