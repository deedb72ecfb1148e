"""One place for scoring rows with a model: batches moved to a device, per-row answer statistics
with named losses, and the one loss-based membership-inference AUC, whose loss is named.

Per row, at the first answer position (where Yes/No is decided), of the trained answer:
- `loss_vocab`: the cross-entropy over the full vocabulary (the deployment checks and E2URec's
  `stop=membership` rule use it);
- `loss_yes_no`: the cross-entropy over the two answer tokens, −log of the two-way P(answer)
  (`e2urec eval` and the bench use it: it needs only P(Yes), so prediction tables carry it).
`membership_auc(members, nonmembers, loss)` reads the named loss; every output that reports an
MIA AUC names its loss next to it (`mia_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from e2urec.backbones import Recommender, batches
from e2urec.errors import E2URecError
from e2urec.eval import metrics

Batch = dict[str, torch.Tensor]
Forward = Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]

LOSSES: dict[str, str] = {"vocab": "loss_vocab", "yes_no": "loss_yes_no"}
"""Membership-inference loss name → the per-row column that holds it."""


def to_device(batch: Batch, device: Any) -> Batch:
    """The batch's tensors on `device`."""
    return {k: v.to(device) for k, v in batch.items()}


def collate(
    recommender: Recommender, rows: Sequence[dict[str, Any]], index: list[int], device: Any = None
) -> Batch:
    """The rows at `index` collated into one batch (on `device` when given, else where the
    tokenizer puts it)."""
    batch = recommender.collate([rows[i] for i in index])
    return batch if device is None else to_device(batch, device)


def row_batches(
    recommender: Recommender,
    rows: Sequence[dict[str, Any]],
    batch_size: int,
    device: Any = None,
    by_length: bool = False,
) -> Iterator[tuple[list[int], Batch]]:
    """(positions of the batch's rows, the collated batch on `device`) over `rows`: consecutive
    batches, or with `by_length` batches of similar prompt length (little padding)."""
    if batch_size < 1:
        raise E2URecError(f"batch size must be at least 1, got {batch_size}")
    for index in batches(rows, batch_size, by_length=by_length):
        yield index, collate(recommender, rows, index, device)


def answer_tokens(
    labels: torch.Tensor, yes_id: int, no_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the trained answer token (first answer position) and the other answer token."""
    trained = labels[:, 0]
    return trained, torch.where(trained == yes_id, no_id, yes_id)


def logit_margin(z: torch.Tensor, trained: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """log P(trained answer) − log P(other answer) at the first answer position of logits
    z [B, T, V], per row."""
    first = z[:, 0].float()
    return first.gather(1, trained[:, None])[:, 0] - first.gather(1, other[:, None])[:, 0]


def loss_vocab(first: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
    """Per row, −log P(trained token) under the softmax over the full vocabulary of the
    first-answer-position logits `first` [B, V]."""
    return F.cross_entropy(first.float(), trained, reduction="none")


def loss_yes_no(labels: Any, p_yes: Any) -> np.ndarray:
    """Per row, −log P(trained answer) under the two-way Yes/No distribution P(Yes)."""
    return metrics.answer_loss(labels, p_yes)


def score_stats(
    recommender: Recommender,
    forward: Forward,
    rows: Sequence[dict[str, Any]],
    batch_size: int,
    device: Any,
    by_length: bool = False,
) -> dict[str, np.ndarray]:
    """Per-row answer statistics of `forward(batch) -> (logits [B, T, V], labels [B, T])` over
    `rows`, in the rows' order (float64): `label` (1 = Yes), `p_yes` (softmax over Yes/No),
    `margin` (log P(trained) − log P(other answer)), `loss_vocab` and `loss_yes_no`. Runs
    without gradients; the caller sets the model's mode."""
    n = len(rows)
    names = ("label", "p_yes", "margin", "loss_vocab")
    out = {name: np.empty(n, dtype=np.float64) for name in names}
    yes, no = recommender.yes_id, recommender.no_id
    with torch.no_grad():
        for index, batch in row_batches(recommender, rows, batch_size, device, by_length):
            logits, labels = forward(batch)
            trained, other = answer_tokens(labels, yes, no)
            first = logits[:, 0].float()
            out["label"][index] = (trained == yes).cpu().numpy()
            out["p_yes"][index] = metrics.p_yes_from_logits(first[:, yes], first[:, no])
            out["margin"][index] = logit_margin(logits, trained, other).cpu().double().numpy()
            out["loss_vocab"][index] = loss_vocab(first, trained).cpu().double().numpy()
    if n:
        out["loss_yes_no"] = loss_yes_no(out["label"], out["p_yes"])
    else:
        out["loss_yes_no"] = np.empty(0, dtype=np.float64)
    return out


def loss_column(loss: str) -> str:
    """The per-row column of a named membership-inference loss; unknown names are one error."""
    if loss not in LOSSES:
        raise E2URecError(f"unknown membership loss {loss!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[loss]


def yes_no_stats(labels: Any, p_yes: Any) -> dict[str, np.ndarray]:
    """The statistics a prediction table (label, P(Yes)) supports: `loss_yes_no` only."""
    return {LOSSES["yes_no"]: loss_yes_no(labels, p_yes)}


def membership_auc(members: Mapping[str, Any], nonmembers: Mapping[str, Any], loss: str) -> float:
    """Loss-based membership inference: the AUC of −loss separating `members` (the forget rows)
    from `nonmembers` (rows the model never saw); 0.5 = no leakage. `members` / `nonmembers`
    hold per-row statistics (`score_stats`, `yes_no_stats`, or a table with the column);
    `loss` names which (see LOSSES)."""
    column = loss_column(loss)
    for name, stats in (("members", members), ("non-members", nonmembers)):
        if column not in stats:
            raise E2URecError(f"the {name} carry no {loss!r} loss ({column}) to attack")
    return metrics.mia_auc(members[column], nonmembers[column])
