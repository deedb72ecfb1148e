"""Run folders: what a trained or unlearned model leaves on disk, and how to load it back.

A run folder holds `manifest.json` (format, backbone, data, seed, versions, cost, the sha256
of every weight file, and `complete: true` written last), `config.resolved.yaml`, `log.jsonl`,
the weights, and after `e2urec eval` also `metrics.json` and `predictions/<split>.parquet`.
Loading a run checks its weight files against the recorded hashes (runs written before hashes
were recorded only have their files' safetensors headers checked).

Formats (manifest "format"), each registered with a loader in RUN_FORMATS:
- "single": a whole model in `model/` (save_recommender);
- "adapter": PEFT LoRA adapters in `adapter/` on the model of the run named by "base_run"
  (E2URec's student);
- "ensemble": one model per shard in `members/` plus a mean or attention aggregate (SISA,
  RecEraser; see methods.ensemble);
- "apa": one frozen base in `base/` with one LoRA adapter per shard in `adapters/`, mixed per
  row in one forward pass (APA; see e2urec.mixture and methods.apa).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from e2urec.artifacts import MANIFEST, check_safetensors, read_json, sha256_file
from e2urec.backbones import Recommender, load_recommender
from e2urec.errors import E2URecError, first_line
from e2urec.registry import Registry

MODEL_DIR = "model"
LOG = "log.jsonl"
CONFIG = "config.resolved.yaml"
METRICS = "metrics.json"
PREDICTIONS_DIR = "predictions"
ADAPTER_DIR = "adapter"
AGGREGATOR = "aggregator.safetensors"


class RunModel(Protocol):
    """A loaded run: the shared recommender (tokenizer, answer ids) and answer-position logits."""

    recommender: Recommender

    def answer_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full-vocabulary logits [B, V] at the first answer position."""
        ...


RUN_FORMATS: Registry[Callable[[Path, dict[str, Any]], RunModel]] = Registry("run format")


@dataclass(frozen=True)
class Served:
    """How a deployment serves a run format whose weights are not one model (e.g. "apa"), as a
    version folder of that format, unlearned by the methods that start from it:
    - check(run, manifest, rows): the deployment's training rows must be the ones the run was
      trained on (one clear error, before anything is written);
    - write(run, stage, link): the run's weight files into a version folder being staged
      (hardlinked with `link`, else copied); the caller writes the manifest;
    - load(run, manifest, serving): an unlearning run as a model over a copy of the frozen
      parts of `serving` (the version that served it, in memory).
    """

    check: Callable[[Path, dict[str, Any], list[dict[str, Any]]], None]
    write: Callable[[Path, Path, bool], None]
    load: Callable[[Path, dict[str, Any], Any], RunModel]


SERVED: Registry[Served] = Registry("run format a deployment serves as it is")


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
    run = Path(run)
    manifest = read_run_manifest(run)
    verify_weights(run, manifest)
    loader = RUN_FORMATS.get(manifest.get("format", "single"))
    try:
        return loader(run, manifest)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise E2URecError(f"cannot load run {run}: {first_line(exc)}") from None


@RUN_FORMATS.register("adapter")
def load_adapter_run(run: Path, manifest: dict[str, Any], base: RunModel | None = None) -> RunModel:
    """The base run's model with this run's LoRA adapters (run format "adapter"); `base`: the
    base model already in memory (it is changed in place) instead of loading the base run."""
    from peft import PeftModel

    base = base if base is not None else load_run_model(manifest["base_run"])
    if not isinstance(base, SingleModel):
        raise E2URecError(f"adapter run {run}: its base run is not a single model")
    recommender = base.recommender
    recommender.model = PeftModel.from_pretrained(recommender.model, run / ADAPTER_DIR)
    return SingleModel(recommender)


class AttentionAggregator(nn.Module):
    """RecEraser's aggregation: attention weights over the K shard outputs.

    Each shard's feature is its Yes/No log-probabilities plus a learned shard embedding;
    score_k = v·tanh(W f_k + e_k), weights = softmax over k, output = Σ_k weight_k · z_k where
    z_k are the shard's logits (full vocabulary or Yes/No only).
    """

    def __init__(self, shards: int, hidden: int):
        super().__init__()
        self.project = nn.Linear(2, hidden)
        self.shard = nn.Embedding(shards, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def weights(self, yes_no: torch.Tensor) -> torch.Tensor:
        """Attention weights [B, K] from Yes/No logits [B, K, 2]."""
        features = torch.log_softmax(yes_no.float(), dim=-1)
        ids = torch.arange(yes_no.shape[1], device=yes_no.device)
        hidden = torch.tanh(self.project(features) + self.shard(ids))
        return torch.softmax(self.score(hidden).squeeze(-1), dim=-1)

    def forward(self, logits: torch.Tensor, yes_no: torch.Tensor) -> torch.Tensor:
        """Aggregate shard logits [B, K, V] with the weights from their Yes/No logits."""
        weights = self.weights(yes_no).to(logits.dtype)
        return (weights.unsqueeze(-1) * logits).sum(dim=1)


class EnsembleModel:
    """A loaded ensemble run: member models sharing one tokenizer, mean or attention aggregate."""

    def __init__(self, members: list[Recommender], aggregator: AttentionAggregator | None):
        self.recommender = members[0]
        self.models = [m.model.eval() for m in members]
        self.aggregator = aggregator.eval() if aggregator is not None else None

    def to(self, device: str | torch.device) -> EnsembleModel:
        """Move every member (and the aggregator) to `device`."""
        for model in self.models:
            model.to(device)
        if self.aggregator is not None:
            self.aggregator.to(device)
        return self

    def member_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Answer-position logits of every member [B, K, V]."""
        rec = self.recommender
        return torch.stack([rec.answer_logits(batch, model) for model in self.models], dim=1)

    def answer_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The aggregate's full-vocabulary logits [B, V] at the first answer position."""
        logits = self.member_logits(batch)
        if self.aggregator is None:
            return logits.mean(dim=1)
        yes_no = logits[..., [self.recommender.yes_id, self.recommender.no_id]]
        return self.aggregator(logits, yes_no)


@RUN_FORMATS.register("ensemble")
def load_ensemble_run(run: Path, manifest: dict[str, Any]) -> RunModel:
    """Load an ensemble run (format "ensemble")."""
    from safetensors.torch import load_file

    members = [load_recommender(run / m["path"]) for m in manifest["members"]]
    aggregator = None
    if manifest.get("aggregate") == "attention":
        aggregator = AttentionAggregator(len(members), manifest["recipe"]["agg_hidden"])
        aggregator.load_state_dict(load_file(run / AGGREGATOR))
    return EnsembleModel(members, aggregator)


@RUN_FORMATS.register("apa")
def load_apa_run(run: Path, manifest: dict[str, Any]) -> RunModel:
    """One frozen base with K LoRA adapters mixed per row (format "apa"; see e2urec.mixture)."""
    from e2urec.mixture import load_mixture

    return load_mixture(run, manifest)
