"""Run folders: what a trained or unlearned model leaves on disk, and how to load it back.

A run folder holds `manifest.json` (format, backbone, data, seed, versions, cost, and
`complete: true` written last), `config.resolved.yaml`, `log.jsonl`, the weights, and after
`e2urec eval` also `metrics.json` and `predictions/<split>.parquet`.

Formats (manifest "format"), each registered with a loader in RUN_FORMATS:
- "single": a whole model in `model/` (save_recommender).
- others are registered by the modules that write them (adapters on a base run, ensembles).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from e2urec.artifacts import MANIFEST, read_json
from e2urec.backbones import Recommender, load_recommender
from e2urec.errors import E2URecError
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
    """The manifest of a complete run, or one clear error for a missing or unfinished run."""
    run = Path(run)
    if not run.is_dir():
        raise E2URecError(f"run folder not found: {run}")
    manifest = read_json(run / MANIFEST, "run manifest")
    if not manifest.get("complete"):
        raise E2URecError(f"run {run} is incomplete (interrupted?); rerun it or use --resume")
    return manifest


def load_run_model(run: str | Path) -> RunModel:
    """Load any complete run for scoring, whatever its format."""
    import e2urec.methods  # noqa: F401  (registers the "adapter" and "ensemble" formats)

    run = Path(run)
    manifest = read_run_manifest(run)
    return RUN_FORMATS.get(manifest.get("format", "single"))(run, manifest)
