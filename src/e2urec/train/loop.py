"""The one training loop: any Task, AdamW on the trainable parameters, early stopping, resume.

Works alone (one process, GPU if present) and under `accelerate launch` (N processes; each takes
its share of every epoch's batches, gradients are averaged by DDP, the validation loss is
reduced so all processes stop together). `batch_size` is per process.

Determinism: the order of every stream and the torch RNG (dropout) are derived from
(seed, stream or epoch, process) at each epoch start, so a resumed run replays exactly what an
uninterrupted one would have done. Tasks that need randomness should draw it from torch.

Checkpoint (RUN/checkpoint/<desc>/, replaced whole after every epoch, safetensors + JSON only):
  weights.safetensors     trainable parameters now
  best.safetensors        trainable parameters of the best epoch (when not the current ones)
  optimizer.safetensors   optimizer state tensors, keyed "<param index>.<name>"
  optimizer.json          param_groups and non-tensor optimizer state
  state.json              epochs done, step, samples, stream positions, best-so-far, history
When fit ends the checkpoint holds the final weights and `complete: true`, so resuming a run
whose later phase was interrupted skips a finished phase; `runner.finish_run` removes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from e2urec.artifacts import atomic_write_json, atomic_write_text, read_json, staged_folder
from e2urec.backbones import Recommender
from e2urec.config import KEEP_CHOICES, check_ranges
from e2urec.errors import E2URecError
from e2urec.runs import LOG
from e2urec.train.cost import CostMeter
from e2urec.train.runner import CHECKPOINT_DIR, process_state, use_cpu
from e2urec.train.task import Batch, Task

# LoopConfig fields that must not change between an interrupted run and its resumption
RESUME_FIXED = ("lr", "batch_size", "weight_decay", "seed")


@dataclass
class LoopConfig:
    """Optimization settings; `batch_size` is per process, `max_steps` caps optimizer steps.
    `keep`: "best" (early stopping on the validation loss, best epoch kept) or "last" (no
    validation: the whole budget runs and the last weights are kept)."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.0
    patience: int = 3
    seed: int = 42
    max_steps: int | None = None
    eval_batch_size: int = 64
    keep: str = "best"

    def check(self, where: str = "") -> None:
        """One clear error for the first setting out of range (before anything is written)."""
        check_ranges(self, LOOP_RANGES, where)
        if self.keep not in KEEP_CHOICES:
            raise E2URecError(
                f"{where}keep must be one of {', '.join(KEEP_CHOICES)}, got {self.keep!r}"
            )


LOOP_RANGES = {
    "epochs": "count",
    "lr": "positive",
    "batch_size": "count",
    "weight_decay": "non-negative",
    "patience": "count",
    "max_steps": "count",
    "eval_batch_size": "count",
}


@dataclass
class FitResult:
    """What fit did: optimizer steps, samples seen (all processes), epochs, the kept epoch."""

    steps: int
    samples: int
    epochs_run: int
    best_epoch: int | None
    best_valid: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python runs)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def permutation(size: int, *seed_parts: Any) -> list[int]:
    """A seeded permutation of range(size)."""
    generator = torch.Generator().manual_seed(derive_seed(*seed_parts))
    return torch.randperm(size, generator=generator).tolist()


class _Cycle:
    """An endless, reshuffled-per-cycle order over a stream (the non-main streams)."""

    def __init__(self, size: int, seed: int, name: str, cycle: int = 0, pos: int = 0) -> None:
        self.size, self.seed, self.name, self.cycle, self.pos = size, seed, name, cycle, pos
        self._order: tuple[int, list[int]] | None = None

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        count = min(count, self.size)
        while len(out) < count:
            if self.pos >= self.size:
                self.cycle, self.pos = self.cycle + 1, 0
            if self._order is None or self._order[0] != self.cycle:
                self._order = (self.cycle, permutation(self.size, self.seed, self.name, self.cycle))
            chunk = self._order[1][self.pos : self.pos + count - len(out)]
            out += chunk
            self.pos += len(chunk)
        return out


def steps_per_epoch(size: int, batch_size: int, world: int) -> int:
    """Optimizer steps in one epoch over a main stream of `size` rows on `world` processes."""
    return math.ceil(math.ceil(size / batch_size) / world)


def planned_steps(
    size: int, batch_size: int, epochs: int, max_steps: int | None, world: int
) -> int:
    """Optimizer steps of a whole fit: `epochs` epochs over the main stream, capped by
    `max_steps`."""
    steps = epochs * steps_per_epoch(size, batch_size, world)
    return steps if max_steps is None else min(steps, max_steps)


def epoch_groups(
    size: int, batch_size: int, seed: int, name: str, epoch: int, world: int
) -> list[list[list[int]]]:
    """One epoch of the main stream: per step, one index batch per process.

    The shuffled batches are dealt round-robin; the last step is padded with batches from the
    start of the epoch so every process runs the same number of steps.
    """
    order = permutation(size, seed, name, "epoch", epoch)
    flat = [order[i : i + batch_size] for i in range(0, size, batch_size)]
    steps = steps_per_epoch(size, batch_size, world)
    padded = [flat[i % len(flat)] for i in range(steps * world)]
    return [padded[s * world : (s + 1) * world] for s in range(steps)]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _snapshot(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in params.items()}


@torch.no_grad()
def _load_params(params: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(params) - set(tensors))
    if missing:
        raise E2URecError(f"checkpoint lacks trainable parameters: {', '.join(missing[:5])}")
    for name, param in params.items():
        param.copy_(tensors[name].to(param.device, param.dtype))


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_checkpoint(
    folder: Path,
    params: dict[str, nn.Parameter],
    optimizer: Any,
    best: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
) -> None:
    with staged_folder(folder, overwrite=True) as stage:
        save_file(_snapshot(params), stage / "weights.safetensors")
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, stage / "optimizer.safetensors")
            atomic_write_json(stage / "optimizer.json", meta)
        if best is not None and not state["best_is_current"]:
            save_file(best, stage / "best.safetensors")
        atomic_write_json(stage / "state.json", state)


def _read_checkpoint(folder: Path, cfg: LoopConfig, world: int) -> dict[str, Any] | None:
    if not (folder / "state.json").is_file():
        return None
    state = read_json(folder / "state.json", "checkpoint state")
    changed = [k for k in RESUME_FIXED if state["config"].get(k) != getattr(cfg, k)]
    if changed:
        raise E2URecError(
            f"cannot resume {folder}: {', '.join(changed)} differ from the interrupted run"
        )
    if state["world"] != world:
        raise E2URecError(
            f"cannot resume {folder}: it ran on {state['world']} process(es), now {world}"
        )
    return state


def _trim_log(log: Path, phase: str, last_step: int) -> None:
    """Drop this phase's records after `last_step` (written after the checkpoint we resume)."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("phase") != phase or record.get("step", 0) <= last_step:
            kept.append(line)
    atomic_write_text(log, "".join(f"{line}\n" for line in kept))


def _batch(
    recommender: Recommender, rows: Sequence[dict[str, Any]], index: list[int], device: Any
) -> Batch:
    batch = recommender.collate([rows[i] for i in index])
    batch["index"] = torch.tensor(index, dtype=torch.long)
    return {key: value.to(device) for key, value in batch.items()}


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
) -> FitResult:
    """Train `model` on `task` (see the module docstring); returns what happened.

    validate(model) -> float (lower is better) runs after every epoch on the unwrapped model
    in eval mode; training stops after `cfg.patience` epochs without improvement and the best
    trainable weights are restored. Without `validate`, or with `cfg.keep == "last"` (then
    `validate` is not called), the full epoch/step budget runs and the last weights are kept.
    `task.loss` receives the prepared model (a DDP wrapper under several processes;
    `unwrap(model)` gives the module) and batches already on the device
    (`runner.process_state().device`, where a task's other models belong). `desc` names this
    phase in log.jsonl, the progress bar and the checkpoint folder (a run may fit several
    phases). `meter` (optional) accumulates wall time under phase `desc` and the optimizer steps
    and samples.
    `stop(model, step) -> bool` (optional) runs after every optimizer step on the unwrapped
    model (in train mode; it must restore any mode it changes); True ends training there (the
    processes agree: any one saying True stops all) and the last weights are kept.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    own_accelerator = accelerator is None
    if accelerator is None:
        process_state()
        accelerator = Accelerator(cpu=use_cpu())
    world, rank, main = (
        accelerator.num_processes,
        accelerator.process_index,
        accelerator.is_main_process,
    )
    cfg.check()
    if cfg.keep == "last":
        validate = None
    streams = task.streams
    for name, rows in streams.items():
        if not rows:
            raise E2URecError(f"training stream {name!r} is empty")
    params = _trainable(model)
    if not params:
        raise E2URecError("the model has no trainable parameters")
    folder = run_dir / CHECKPOINT_DIR / desc
    log_path = run_dir / LOG
    saved = _read_checkpoint(folder, cfg, world) if resume else None

    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device

    step = samples = epochs_done = bad_epochs = 0
    best_valid: float | None = None
    best_epoch: int | None = None
    best: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    positions = {name: (0, 0) for name in streams if name != task.main}
    if saved is not None:
        _load_params(params, load_file(folder / "weights.safetensors"))
        if saved.get("complete"):
            result = FitResult(**saved["result"])
            _finish(accelerator, own_accelerator, meter, desc, 0.0, 0, 0)
            return result
        optimizer.load_state_dict(
            _unflatten_optimizer(
                load_file(folder / "optimizer.safetensors"),
                read_json(folder / "optimizer.json", "checkpoint optimizer"),
            )
        )
        step, samples, epochs_done = saved["step"], saved["samples"], saved["epochs_done"]
        best_valid, best_epoch, bad_epochs = (
            saved["best_valid"],
            saved["best_epoch"],
            saved["bad_epochs"],
        )
        history = saved["history"]
        positions = {name: tuple(pos) for name, pos in saved["streams"].items()}
        if best_epoch is not None:
            best = (
                _snapshot(params)
                if saved["best_is_current"]
                else load_file(folder / "best.safetensors")
            )
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            _trim_log(log_path, desc, step)
    accelerator.wait_for_everyone()
    stopped = (saved or {}).get("stopped", False)
    start_step, start_samples = step, samples

    cycles = {
        name: _Cycle(len(streams[name]), cfg.seed, name, *positions[name]) for name in positions
    }
    main_rows = streams[task.main]
    total = planned_steps(len(main_rows), cfg.batch_size, cfg.epochs, cfg.max_steps, world)
    bar = tqdm(total=total, initial=min(step, total), desc=desc, disable=(not main) or None)
    began = time.perf_counter()
    log = open(log_path, "a", encoding="utf-8") if main else None

    def write(record: dict[str, Any]) -> None:
        if log is not None:
            log.write(json.dumps({"phase": desc, **record}) + "\n")
            log.flush()

    try:
        epoch = epochs_done
        while not stopped and epoch < cfg.epochs:
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
            torch.manual_seed(derive_seed(cfg.seed, "dropout", epoch, rank))
            model.train()
            losses = []
            groups = epoch_groups(len(main_rows), cfg.batch_size, cfg.seed, task.main, epoch, world)
            for group in groups:
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    break
                batches = {task.main: _batch(recommender, main_rows, group[rank], device)}
                for name, cycle in cycles.items():
                    drawn = [cycle.take(cfg.batch_size) for _ in range(world)]
                    batches[name] = _batch(recommender, streams[name], drawn[rank], device)
                loss, logs = task.loss(model, batches, epoch)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                samples += sum(len(index) for index in group)
                value = float(accelerator.reduce(loss.detach(), "mean"))
                losses.append(value)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{value:.4f}", refresh=False)
                write(
                    {
                        "event": "step",
                        "step": step,
                        "epoch": epoch,
                        "loss": value,
                        **{k: float(v) for k, v in logs.items()},
                        "lr": optimizer.param_groups[0]["lr"],
                        "elapsed_s": round(time.perf_counter() - began, 3),
                    }
                )
                if stop is not None and _any_process(accelerator, stop(unwrap(model), step)):
                    stopped = True
                    write({"event": "stop", "step": step, "epoch": epoch})
                    break
            record: dict[str, Any] = {
                "epoch": epoch,
                "step": step,
                "train_loss": sum(losses) / len(losses) if losses else None,
            }
            improved = True
            if validate is not None:
                raw = unwrap(model)
                raw.eval()
                valid = validate(raw)
                raw.train()
                if world > 1:  # every process must take the same stop decision
                    valid = torch.tensor(valid, dtype=torch.float64, device=device)
                    valid = float(accelerator.reduce(valid, "mean"))
                record["valid_loss"] = valid
                improved = best_valid is None or (valid < best_valid and not math.isnan(valid))
                if improved:
                    best_valid, best_epoch, bad_epochs = valid, epoch, 0
                    best = _snapshot(params)
                else:
                    bad_epochs += 1
                    stopped = bad_epochs >= cfg.patience
            else:
                best_epoch = epoch
            history.append(record)
            write({"event": "epoch", **record, "elapsed_s": round(time.perf_counter() - began, 3)})
            epoch += 1
            if main:
                _save_checkpoint(
                    folder,
                    params,
                    optimizer,
                    best,
                    {
                        "epochs_done": epoch,
                        "step": step,
                        "samples": samples,
                        "best_valid": best_valid,
                        "best_epoch": best_epoch,
                        "bad_epochs": bad_epochs,
                        "best_is_current": improved,
                        "stopped": stopped,
                        "history": history,
                        "streams": {n: [c.cycle, c.pos] for n, c in cycles.items()},
                        "world": world,
                        "config": dataclasses.asdict(cfg),
                        "complete": False,
                    },
                )
            accelerator.wait_for_everyone()
    finally:
        bar.close()
        if log is not None:
            log.close()

    if validate is not None and best is not None:
        _load_params(params, best)
    result = FitResult(
        steps=step,
        samples=samples,
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_valid=best_valid,
        history=history,
    )
    if main:
        _save_checkpoint(
            folder,
            params,
            None,
            None,
            {
                "complete": True,
                "best_is_current": True,
                "world": world,
                "config": dataclasses.asdict(cfg),
                "result": dataclasses.asdict(result),
            },
        )
    accelerator.wait_for_everyone()
    _finish(
        accelerator,
        own_accelerator,
        meter,
        desc,
        time.perf_counter() - began,
        step - start_step,
        samples - start_samples,
    )
    return result


def _any_process(accelerator: Any, decision: bool) -> bool:
    """True on every process when `decision` is True on any of them."""
    if accelerator.num_processes == 1:
        return decision
    flag = torch.tensor(float(decision), device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum") > 0)


def _finish(
    accelerator: Any,
    own: bool,
    meter: CostMeter | None,
    desc: str,
    seconds: float,
    steps: int,
    samples: int,
) -> None:
    if meter is not None:
        meter.phases[desc] = meter.phases.get(desc, 0.0) + seconds
        meter.count(steps, samples)
    if own:
        accelerator.free_memory()
