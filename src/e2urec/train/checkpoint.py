"""The loop's resumable checkpoint (RUN/checkpoint/<desc>/, replaced whole, safetensors + JSON):

weights.safetensors     trainable parameters now
best.safetensors        trainable parameters of the best epoch (when not the current ones)
optimizer.safetensors   optimizer state tensors, keyed "<param index>.<name>"
optimizer.json          param_groups and non-tensor optimizer state
state.json              the loop's FitState, the scheduler's and scaler's state, the world
                        size and the LoopConfig it ran with (`complete` once fit ended)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from e2urec.artifacts import atomic_write_json, atomic_write_text, read_json, staged_folder
from e2urec.errors import E2URecError

# LoopConfig fields that must not change between an interrupted run and its resumption
RESUME_FIXED = (
    "lr",
    "batch_size",
    "weight_decay",
    "seed",
    "precision",
    "grad_accum",
    "max_grad_norm",
    "scheduler",
    "warmup_ratio",
)


def snapshot(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """A CPU copy of the parameters."""
    return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in params.items()}


@torch.no_grad()
def load_params(params: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` into `params` (every parameter must be there)."""
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


def save_checkpoint(
    folder: Path,
    params: dict[str, nn.Parameter],
    optimizer: Any,
    best: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
) -> None:
    """Replace the checkpoint in `folder` (optimizer None: weights and state only)."""
    with staged_folder(folder, overwrite=True) as stage:
        save_file(snapshot(params), stage / "weights.safetensors")
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, stage / "optimizer.safetensors")
            atomic_write_json(stage / "optimizer.json", meta)
        if best is not None and not state["best_is_current"]:
            save_file(best, stage / "best.safetensors")
        atomic_write_json(stage / "state.json", state)


def read_checkpoint(folder: Path, config: dict[str, Any], world: int) -> dict[str, Any] | None:
    """The saved state.json, or None without a checkpoint; one clear error when the settings in
    RESUME_FIXED or the number of processes changed."""
    if not (folder / "state.json").is_file():
        return None
    state = read_json(folder / "state.json", "checkpoint state")
    changed = [k for k in RESUME_FIXED if state["config"].get(k) != config.get(k)]
    if changed:
        raise E2URecError(
            f"cannot resume {folder}: {', '.join(changed)} differ from the interrupted run"
        )
    if state["world"] != world:
        raise E2URecError(
            f"cannot resume {folder}: it ran on {state['world']} process(es), now {world}"
        )
    return state


def load_optimizer(folder: Path, optimizer: Any) -> None:
    """Restore the optimizer state written by `save_checkpoint`."""
    optimizer.load_state_dict(
        _unflatten_optimizer(
            load_file(folder / "optimizer.safetensors"),
            read_json(folder / "optimizer.json", "checkpoint optimizer"),
        )
    )


def load_weights(folder: Path, name: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of `name`.safetensors in the checkpoint."""
    return load_file(folder / f"{name}.safetensors")


def trim_log(log: Path, phase: str, last_step: int) -> None:
    """Drop this phase's records after `last_step` (written after the checkpoint we resume)."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("phase") != phase or record.get("step", 0) <= last_step:
            kept.append(line)
    atomic_write_text(log, "".join(f"{line}\n" for line in kept))
