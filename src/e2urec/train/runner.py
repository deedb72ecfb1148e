"""The run-folder lifecycle shared by every command that produces a run (train, unlearn).

start_run: check the output folder, then write `config.resolved.yaml` and a manifest with
  `complete: false`. A complete run is replaced only with `overwrite`; an incomplete one (an
  interrupted job) needs `resume` (same config, continue from its checkpoint; only commands
  that can resume offer it) or `overwrite`. Callers check every other input first, so a
  refused command leaves no run folder behind.
finish_run: write the final `manifest.json` atomically with `complete: true`, the data
  manifest hash, the sha256 of every weight file (`weights_sha256`, checked when the run is
  loaded), library versions and seed, then drop the training checkpoint.

Under `accelerate launch` every process runs the same checks (so all raise the same error),
only the main process writes, and the processes wait for each other afterwards.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Any

import yaml

from e2urec.artifacts import (
    MANIFEST,
    atomic_write_json,
    atomic_write_yaml,
    environment_versions,
    read_json,
    sha256_file,
    weights_sha256,
)
from e2urec.errors import E2URecError
from e2urec.runs import CONFIG

CHECKPOINT_DIR = "checkpoint"


def use_cpu() -> bool:
    """Whether processes run on CPU: `ACCELERATE_USE_CPU` is set (`accelerate launch --cpu`)
    or no GPU is visible. On CPU, a multi-process launch (torchrun or `accelerate launch
    --multi_gpu`) then forms a gloo process group instead of N independent runs."""
    import torch
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def process_state() -> Any:
    """accelerate's shared process state (rank, world size, barriers), initialized consistently
    with `use_cpu()` whichever of the library's functions touches it first."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu())


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _existing_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    manifest = read_json(path, "run manifest")
    if not isinstance(manifest, dict):
        raise E2URecError(f"{path} is not a run manifest; pass --overwrite to replace {out}")
    return manifest


def _config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return diffs


def _check(
    out: Path, config: dict[str, Any], overwrite: bool, resume: bool, can_resume: bool
) -> str:
    """What to do with `out`: "create", "replace" or "resume" (or one clear error)."""
    if overwrite and resume:
        raise E2URecError("--overwrite and --resume exclude each other")
    if out.exists() and not out.is_dir():
        raise E2URecError(f"output path exists and is not a folder: {out}")
    if not out.exists() or not any(out.iterdir()):
        return "create"  # `resume` with nothing to resume simply starts the run
    if overwrite:
        return "replace"
    manifest = _existing_manifest(out)
    if manifest is None:
        raise E2URecError(f"{out} is not empty and holds no run; pass --overwrite to replace it")
    if manifest.get("complete"):
        raise E2URecError(f"a complete run already exists in {out}; pass --overwrite to replace it")
    if not resume:
        offer = "pass --resume to continue it or --overwrite" if can_resume else "pass --overwrite"
        raise E2URecError(f"an interrupted run exists in {out}; {offer} to start again")
    old = (
        yaml.safe_load((out / CONFIG).read_text(encoding="utf-8"))
        if (out / CONFIG).is_file()
        else {}
    )
    diffs = _config_differences(old or {}, config)
    if diffs:
        raise E2URecError(f"cannot resume {out} with a different configuration: {', '.join(diffs)}")
    return "resume"


def start_run(
    out: str | Path,
    config: dict[str, Any],
    overwrite: bool,
    resume: bool,
    can_resume: bool = True,
) -> Path:
    """Prepare run folder `out` for a job with `config` (see the module docstring);
    `can_resume`: whether the command offers --resume (the error for an interrupted run says
    only what the command accepts)."""
    out = Path(out).absolute()
    state = process_state()
    action = _check(out, config, overwrite, resume, can_resume)
    state.wait_for_everyone()  # all processes judge the folder before the main one changes it
    if state.is_main_process and action != "resume":
        if action == "replace":
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(out / CONFIG, config)
        atomic_write_json(out / MANIFEST, {"complete": False, "started_at": _now()})
    state.wait_for_everyone()
    return out


def finish_run(run_dir: str | Path, manifest_fields: dict[str, Any]) -> dict[str, Any]:
    """Write the final manifest (complete=true) and remove the checkpoint; returns the manifest.

    Adds `data_manifest_sha256` (from `data_dir`/manifest.json when `data_dir` is given),
    `weights_sha256` (every safetensors file of the run but the checkpoint's), `versions`,
    `processes` and timestamps to `manifest_fields`.
    """
    run_dir = Path(run_dir)
    state = process_state()
    previous = _existing_manifest(run_dir) or {}
    manifest = {**previous, **manifest_fields}
    data_dir = manifest_fields.get("data_dir")
    if data_dir is not None and "data_manifest_sha256" not in manifest_fields:
        manifest["data_manifest_sha256"] = sha256_file(Path(data_dir) / MANIFEST)
    manifest.setdefault("seed", None)
    manifest.update(
        versions=environment_versions(),
        processes=state.num_processes,
        finished_at=_now(),
        complete=True,
    )
    if state.is_main_process:  # only the main process wrote the weights: it hashes them
        manifest["weights_sha256"] = weights_sha256(run_dir, skip=(CHECKPOINT_DIR,))
        atomic_write_json(run_dir / MANIFEST, manifest)
        shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    state.wait_for_everyone()
    return manifest
