"""Run folders: what a trained or unlearned model leaves on disk, and how to load it back.

A run folder holds `manifest.json` (format, backbone, data, seed, versions, cost, the sha256
of every weight file, and `complete: true` written last), `config.resolved.yaml`, `log.jsonl`,
the weights, and after `e2urec eval` also `metrics.json` and `predictions/<split>.parquet`.
Loading a run checks its weight files against the recorded hashes (runs written before hashes
were recorded only have their files' safetensors headers checked).

Formats (manifest "format"), each registered with a loader in RUN_FORMATS:
- "single": a whole model in `model/` (save_recommender).
- others are registered by the modules that write them (adapters on a base run, ensembles).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from e2urec.artifacts import MANIFEST, check_safetensors, read_json, sha256_file
from e2urec.backbones import Recommender, load_recommender
from e2urec.errors import E2URecError, first_line
from e2urec.registry import Registry

MODEL_DIR = "model"
LOG = "log.jsonl"
CONFIG = "config.resolved.yaml"
METRICS = "metrics.json"
PREDICTIONS_DIR = "predictions"


class RunModel(Protocol):
    """A loaded run: the shared recommender (tokenizer, answer ids) and answer-position logits."""

    recommender: Recommender

    def answer_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full-vocabulary logits [B, V] at the first answer position."""
        ...


RUN_FORMATS: Registry[Callable[[Path, dict[str, Any]], RunModel]] = Registry("run format")


class SingleModel:
    """A run whose weights are one whole model."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender
        self.recommender.model.eval()

    def answer_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.recommender.answer_logits(batch)


@RUN_FORMATS.register("single")
def _load_single(run: Path, manifest: dict[str, Any]) -> RunModel:
    return SingleModel(load_recommender(run / MODEL_DIR))


def read_run_manifest(run: str | Path) -> dict[str, Any]:
    """The manifest of a complete run, or one clear error for a missing folder, a folder that
    is not a run (no manifest.json, or another kind of manifest) or an unfinished run."""
    run = Path(run)
    if not run.is_dir():
        raise E2URecError(f"run folder not found: {run}")
    if not (run / MANIFEST).is_file():
        raise E2URecError(f"not a run folder (no {MANIFEST}): {run}")
    manifest = read_json(run / MANIFEST, "run manifest")
    if not isinstance(manifest, dict) or "complete" not in manifest:
        from e2urec.data.prepare import FORMAT

        if isinstance(manifest, dict) and manifest.get("format") == FORMAT:
            raise E2URecError(f"not a run folder ({MANIFEST} describes prepared data): {run}")
        raise E2URecError(f"not a run folder ({MANIFEST} is not a run manifest): {run}")
    if not manifest["complete"]:
        raise E2URecError(f"run {run} is incomplete (interrupted?); {_finish_hint(run)}")
    return manifest


def _finish_hint(run: Path) -> str:
    """How the command that wrote an incomplete run finishes it (only flags it accepts)."""
    import yaml

    try:
        config = yaml.safe_load((run / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        config = None
    if isinstance(config, dict) and config.get("command") == "train":
        return "continue it with the same `e2urec train` command and --resume"
    return "rerun the command that wrote it with --overwrite"


def verify_weights(run: Path, manifest: dict[str, Any]) -> None:
    """Every weight file the manifest records must still have its recorded sha256; a run written
    before hashes were recorded has its files' safetensors headers checked instead."""
    recorded = manifest.get("weights_sha256")
    if recorded is None:
        for path in sorted(run.rglob("*.safetensors")):
            check_safetensors(path)
        return
    for name, expected in recorded.items():
        path = run / name
        if not path.is_file():
            raise E2URecError(f"weight file missing: {path} (listed in {run / MANIFEST})")
        actual = sha256_file(path)
        if actual != expected:
            raise E2URecError(
                f"weight file {path} changed after the run was written (sha256 {actual[:12]}, "
                f"manifest records {expected[:12]}); refusing to load it"
            )


def check_weights(run: Path, manifest: dict[str, Any]) -> None:
    """Refuse a run whose weights would not load, without loading them when the manifest records
    their hashes (`verify_weights`); a run from before hashes were recorded is loaded once."""
    if manifest.get("weights_sha256") is None:
        load_run_model(run)
    else:
        verify_weights(run, manifest)


def load_run_model(run: str | Path) -> RunModel:
    """Load any complete run for scoring, whatever its format, after `verify_weights`."""
    import e2urec.methods  # noqa: F401  (registers the "adapter" and "ensemble" formats)

    run = Path(run)
    manifest = read_run_manifest(run)
    verify_weights(run, manifest)
    loader = RUN_FORMATS.get(manifest.get("format", "single"))
    try:
        return loader(run, manifest)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise E2URecError(f"cannot load run {run}: {first_line(exc)}") from None
