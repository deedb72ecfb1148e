"""Batched scoring of prompt rows with a loaded run (and optionally a reference run).

Rows are scored in length-sorted batches (little padding) under `torch.no_grad()` with the
models in eval mode; results come back in the rows' original order. When a reference run is
given, both models score the same batch and only per-row divergences are kept, so memory stays
at one batch × vocabulary whatever the number of rows — unless the caller asks to keep the
reference's logits for an `AnswerLogitCache`, which lets later evaluations against the same
reference (the bench's every method against one Retrain) skip scoring it again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from e2urec.backbones import batches
from e2urec.errors import E2URecError
from e2urec.eval.metrics import FORGET_METRICS, SCOPES, p_yes_from_logits
from e2urec.eval.scoring import collate, to_device
from e2urec.runs import RunModel


@dataclass
class Scores:
    """Per-row results in the rows' original order.

    p_yes: P(Yes) = softmax over the Yes/No answer-token logits, shape [N].
    distances: scope ("vocab" | "yes_no") → metric ("paper_jsd" | "jsd" | "l2") → [N] values
    between the reference (p) and the scored run (q); None when no reference was given.
    reference_p_yes: the reference's P(Yes) per row; None when no reference was given.
    reference_logits: the reference's answer logits [N, V] on the CPU, when they were asked for
    and fit the budget; else None.
    """

    p_yes: np.ndarray
    distances: dict[str, dict[str, np.ndarray]] | None = None
    reference_p_yes: np.ndarray | None = None
    reference_logits: torch.Tensor | None = None


@dataclass
class AnswerLogitCache:
    """Answer logits [N, V] of runs already scored, kept in memory across evaluations.

    Keys name what the logits depend on (the run's manifest digest, the data, the split, the batch
    size and the device: rows are scored in the same length-sorted batches, so a cached entry is
    bit-identical to scoring again). Entries beyond `max_bytes` in total are dropped oldest first;
    an entry larger than the whole budget is never kept.
    """

    max_bytes: int = 2 * 1024**3
    _entries: OrderedDict[Hashable, torch.Tensor] = field(default_factory=OrderedDict)

    def get(self, key: Hashable) -> torch.Tensor | None:
        """The logits stored under `key` (now the most recently used), or None."""
        logits = self._entries.get(key)
        if logits is not None:
            self._entries.move_to_end(key)
        return logits

    def put(self, key: Hashable, logits: torch.Tensor) -> None:
        """Keep `logits` under `key`, dropping the oldest entries until the budget holds."""
        size = logits.numel() * logits.element_size()
        if size > self.max_bytes:
            return
        self._entries[key] = logits
        self._entries.move_to_end(key)
        while self.used_bytes > self.max_bytes:
            self._entries.popitem(last=False)

    @property
    def used_bytes(self) -> int:
        """Bytes held by the stored logits."""
        return sum(t.numel() * t.element_size() for t in self._entries.values())


def model_device(run_model: RunModel) -> torch.device:
    """The device of the run's (first) model parameters, where its batches must go."""
    return next(run_model.recommender.model.parameters()).device


def resolve_device(device: str | None) -> torch.device:
    """`device` (None: cuda when available, else cpu) as a torch device; a malformed name or a
    CUDA device this machine lacks is one clear error."""
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        raise E2URecError(f"unknown device {name!r}; use e.g. cpu, cuda or cuda:1") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if resolved.type == "cuda" and (resolved.index or 0) >= count:
        raise E2URecError(f"device {name!r} is not available: this machine has {count} CUDA GPU(s)")
    return resolved


def place(run_model: RunModel, device: str | torch.device) -> None:
    """Move a loaded run to `device` and put it in eval mode.

    Formats holding several modules provide `.to(device)` on the RunModel; single models are
    moved through their recommender.
    """
    mover = getattr(run_model, "to", None)
    if callable(mover):
        mover(device)
    else:
        run_model.recommender.model.to(device)
    run_model.recommender.model.eval()


def check_same_vocabulary(run_model: RunModel, reference: RunModel) -> None:
    """Vocabulary-scope distances need one tokenizer: same vocabulary and Yes/No ids, else error."""
    a, b = run_model.recommender, reference.recommender
    if len(a.tokenizer) != len(b.tokenizer) or a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise E2URecError(
            f"the run and the reference use different tokenizer vocabularies "
            f"({len(a.tokenizer)} vs {len(b.tokenizer)} tokens); distances over the vocabulary "
            "need runs of one backbone on one prepared data folder"
        )
    if (a.yes_id, a.no_id) != (b.yes_id, b.no_id):
        raise E2URecError(
            f"the run and the reference resolve Yes/No to different token ids "
            f"({a.yes_id}/{a.no_id} vs {b.yes_id}/{b.no_id}); compare runs of one backbone"
        )


def score_rows(
    run_model: RunModel,
    rows: Sequence[dict[str, Any]],
    batch_size: int = 64,
    reference: RunModel | None = None,
    desc: str = "scoring",
    progress: bool = True,
    run_logits: torch.Tensor | None = None,
    reference_logits: torch.Tensor | None = None,
    keep_reference_within: int = 0,
) -> Scores:
    """Score `rows` (dicts with `prompt` and `target`): P(Yes) per row, and per-row distances to
    `reference` on the first answer position (full vocabulary and Yes/No) when one is given.

    `run_logits` / `reference_logits` are the models' answer logits for these rows, batch size
    and device from an earlier call (an `AnswerLogitCache`); they are used instead of running the
    model. `keep_reference_within` > 0 returns the reference's logits in `Scores.reference_logits`
    when [N, V] of them take at most that many bytes.
    """
    if batch_size < 1:
        raise E2URecError(f"batch size must be at least 1, got {batch_size}")
    recommender = run_model.recommender
    answer_ids = [recommender.yes_id, recommender.no_id]
    n = len(rows)
    p_yes = np.empty(n, dtype=np.float64)
    distances = (
        {
            scope: {name: np.empty(n, dtype=np.float64) for name in FORGET_METRICS}
            for scope in SCOPES
        }
        if reference is not None
        else None
    )
    ref_p_yes = np.empty(n, dtype=np.float64) if reference is not None else None
    device = model_device(run_model)
    ref_device = model_device(reference) if reference is not None else None
    kept: torch.Tensor | None = None
    needs_batches = run_logits is None or (reference is not None and reference_logits is None)
    bar = tqdm(total=n, desc=desc, unit="row", disable=None if progress else True, leave=False)
    with torch.no_grad(), bar:
        for index in batches(rows, batch_size, by_length=True):
            batch = collate(recommender, rows, index) if needs_batches else {}
            q = _answer_logits(run_model, run_logits, batch, index, device)
            p_yes[index] = p_yes_from_logits(q[:, answer_ids[0]], q[:, answer_ids[1]])
            if reference is not None:
                p = _answer_logits(reference, reference_logits, batch, index, ref_device)
                if p.shape != q.shape:
                    raise E2URecError(
                        f"the run and the reference give logits of different shapes "
                        f"{tuple(q.shape)} vs {tuple(p.shape)}; compare runs of one backbone"
                    )
                if kept is None and n * p.shape[1] * p.element_size() <= keep_reference_within:
                    kept = torch.empty((n, p.shape[1]), dtype=p.dtype)
                if kept is not None:
                    kept[index] = p.cpu()
                p = p.to(q.device)
                ref_p_yes[index] = p_yes_from_logits(p[:, answer_ids[0]], p[:, answer_ids[1]])
                pairs = {"vocab": (p, q), "yes_no": (p[:, answer_ids], q[:, answer_ids])}
                for scope, (ref_scores, run_scores) in pairs.items():
                    for name, metric in FORGET_METRICS.items():
                        distances[scope][name][index] = metric(ref_scores, run_scores)
            bar.update(len(index))
    return Scores(
        p_yes=p_yes, distances=distances, reference_p_yes=ref_p_yes, reference_logits=kept
    )


def _answer_logits(
    run_model: RunModel,
    cached: torch.Tensor | None,
    batch: dict[str, torch.Tensor],
    index: list[int],
    device: torch.device,
) -> torch.Tensor:
    """The batch's answer logits: the cached rows (moved to `device`) or the model's output."""
    if cached is not None:
        return cached[index].to(device)
    return run_model.answer_logits(to_device(batch, device))
