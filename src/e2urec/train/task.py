"""What a training job optimizes: named row streams and a loss over one batch of each.

Original/Retrain training is a Task with one stream ("train") and answer cross-entropy.
Unlearning methods are Tasks over several streams (e.g. "retain" and "forget") with their own
loss; the training loop (`e2urec.train.loop.fit`) is the same for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class Task(Protocol):
    """The contract between a method and the training loop.

    streams: named lists of rows (dicts with at least `prompt` and `target`). One epoch is
             one pass over `streams[main]`, shuffled with the run's seed; every other stream is
             drawn in parallel, reshuffled and cycled as needed, so each step sees one batch of
             every stream. Each collated batch also carries `index`: the rows' positions in
             their stream (for looking up cached teacher outputs).
    main:    the stream that defines an epoch.
    loss(model, batches, epoch) -> (loss, logs): `batches` maps stream name → collated batch;
             `epoch` counts from 0; `logs` are floats written to log.jsonl (e.g. loss parts).
    """

    streams: dict[str, Sequence[dict[str, Any]]]
    main: str

    def loss(
        self, model: nn.Module, batches: dict[str, Batch], epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]]: ...
