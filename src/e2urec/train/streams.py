"""The loop's data order: seeded permutations, the main stream's epochs dealt to processes and
grouped into optimizer steps, and the other streams cycled alongside.

Every order is derived from (seed, stream, epoch or cycle), so a resumed run replays exactly
what an uninterrupted one would have done.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python runs)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def permutation(size: int, *seed_parts: Any) -> list[int]:
    """A seeded permutation of range(size)."""
    generator = torch.Generator().manual_seed(derive_seed(*seed_parts))
    return torch.randperm(size, generator=generator).tolist()


def sample_rows(rows: Sequence[Any], size: int, *seed_parts: Any) -> list[Any]:
    """The one seeded row sampler (E2URec's stop rule and control rows, the deployment's
    checks): the first `size` rows of the `permutation` seeded by `seed_parts` (every row,
    shuffled, when there are fewer)."""
    return [rows[i] for i in permutation(len(rows), *seed_parts)[:size]]


class Cycle:
    """An endless, reshuffled-per-cycle order over a stream (the non-main streams)."""

    def __init__(self, size: int, seed: int, name: str, cycle: int = 0, pos: int = 0) -> None:
        self.size, self.seed, self.name, self.cycle, self.pos = size, seed, name, cycle, pos
        self._order: tuple[int, list[int]] | None = None

    def take(self, count: int) -> list[int]:
        """The next `count` indices (at most one whole cycle)."""
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


def batches_per_process(size: int, batch_size: int, world: int) -> int:
    """Batches each process runs in one epoch over a main stream of `size` rows."""
    return math.ceil(math.ceil(size / batch_size) / world)


def steps_per_epoch(size: int, batch_size: int, world: int, grad_accum: int = 1) -> int:
    """Optimizer steps in one epoch over a main stream of `size` rows on `world` processes,
    `grad_accum` batches per step (the last step of an epoch may take fewer)."""
    return math.ceil(batches_per_process(size, batch_size, world) / grad_accum)


def planned_steps(
    size: int,
    batch_size: int,
    epochs: int,
    max_steps: int | None,
    world: int,
    grad_accum: int = 1,
) -> int:
    """Optimizer steps of a whole fit: `epochs` epochs over the main stream, capped by
    `max_steps`."""
    steps = epochs * steps_per_epoch(size, batch_size, world, grad_accum)
    return steps if max_steps is None else min(steps, max_steps)


def epoch_groups(
    size: int, batch_size: int, seed: int, name: str, epoch: int, world: int
) -> list[list[list[int]]]:
    """One epoch of the main stream: per batch step, one index batch per process.

    The shuffled batches are dealt round-robin; the last step is padded with batches from the
    start of the epoch so every process runs the same number of steps.
    """
    order = permutation(size, seed, name, "epoch", epoch)
    flat = [order[i : i + batch_size] for i in range(0, size, batch_size)]
    steps = batches_per_process(size, batch_size, world)
    padded = [flat[i % len(flat)] for i in range(steps * world)]
    return [padded[s * world : (s + 1) * world] for s in range(steps)]


def step_groups(groups: list[Any], grad_accum: int) -> list[list[Any]]:
    """Consecutive batch steps grouped into optimizer steps of `grad_accum` batches each: with
    batch b and accumulation N a step sees the same rows as one batch of N·b."""
    return [groups[i : i + grad_accum] for i in range(0, len(groups), grad_accum)]
