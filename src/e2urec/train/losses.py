"""Losses over answer positions: hard-label CE, soft (teacher) CE, KL, and a no-grad evaluator.

Every loss takes logits [B, T, V] at the answer positions and the answer labels [B, T] that
`Recommender.target_logits` returns; positions labelled IGNORE (-100) are padding and skipped.
Logits are promoted to float32 before the softmax, so bf16/fp16 models give stable losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2urec.backbones import IGNORE, Recommender, batches


def answer_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (labels == IGNORE are skipped)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE
    )


def _masked_mean(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    mask = (labels != IGNORE).to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def soft_ce(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """H(softmax(teacher), softmax(student)) over the full vocabulary at every answer position,
    averaged over the non-pad positions; the teacher is treated as a constant."""
    target = torch.softmax(teacher_logits.detach().float(), dim=-1)
    per_position = -(target * torch.log_softmax(student_logits.float(), dim=-1)).sum(dim=-1)
    return _masked_mean(per_position, labels)


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) ‖ softmax(q)) over the full vocabulary, averaged over non-pad positions."""
    log_p = torch.log_softmax(p_logits.float(), dim=-1)
    log_q = torch.log_softmax(q_logits.float(), dim=-1)
    per_position = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return _masked_mean(per_position, labels)


@torch.no_grad()
def evaluate_ce(
    recommender: Recommender,
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    batch_size: int,
) -> float:
    """Mean answer-token CE of `model` on `rows` (no gradients, eval mode kept by the caller).

    Under torch.distributed (e.g. `accelerate launch`) each process scores its share of the rows
    and the token sums are all-reduced, so every process returns the same exact mean.
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        rows = list(rows)[dist.get_rank() :: dist.get_world_size()]
    device = next(model.parameters()).device
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for index in batches(rows, batch_size, by_length=True):
        batch = recommender.collate([rows[i] for i in index])
        batch = {k: v.to(device) for k, v in batch.items()}
        logits, labels = recommender.target_logits(batch, model)
        flat = labels.reshape(-1)
        totals[0] += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=IGNORE, reduction="sum"
        ).double()
        totals[1] += (flat != IGNORE).sum()
    if distributed:
        dist.all_reduce(totals)
    return float(totals[0] / totals[1].clamp(min=1.0))
