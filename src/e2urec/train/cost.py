"""Cost accounting for a run: wall time per phase, parameter counts, peak memory, steps."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

TIME_NOTE = (
    "compute_s = wall_s less excluded_s (resumable checkpoint writes); model loading, "
    "teacher caches and saving the result count as compute; the bench's time_s is compute_s"
)


class CostMeter:
    """Wall seconds since creation and per named phase, plus optimizer steps and samples.

    `with meter.phase("student"): ...` adds the block's wall seconds to that phase (phases may
    nest; the total is wall time since the meter was created, not the sum of phases).
    `fit(..., meter=meter)` counts its optimizer steps and samples here, and reports the
    seconds of its resumable checkpoints with `exclude`: they are kept out of `compute_s`.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.optimizer_steps = 0
        self.samples = 0
        self.excluded: dict[str, float] = {}
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block and add its wall seconds to phase `name`."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - begin

    def count(self, steps: int, samples: int) -> None:
        """Add optimizer steps and training samples."""
        self.optimizer_steps += steps
        self.samples += samples

    def exclude(self, name: str, seconds: float) -> None:
        """Add `seconds` of work that is not the job's compute (e.g. checkpoint writes)."""
        if seconds:
            self.excluded[name] = self.excluded.get(name, 0.0) + seconds

    def summary(self, model: nn.Module | None = None) -> dict[str, Any]:
        """Totals as a JSON-ready dict; parameter counts come from `model` (trainable = requires_grad)."""
        trainable = total = 0
        if model is not None:
            for param in model.parameters():
                total += param.numel()
                if param.requires_grad:
                    trainable += param.numel()
        memory, kind = peak_memory_mb()
        wall = time.perf_counter() - self.start
        return {
            "wall_s": round(wall, 3),
            "compute_s": round(wall - sum(self.excluded.values()), 3),
            "excluded_s": {name: round(s, 3) for name, s in self.excluded.items()},
            "time_note": TIME_NOTE,
            "phases": {name: round(seconds, 3) for name, seconds in self.phases.items()},
            "trainable_params": trainable,
            "total_params": total,
            "trainable_pct": round(100.0 * trainable / total, 4) if total else 0.0,
            "peak_memory_mb": round(memory, 1),
            "peak_memory_kind": kind,
            "optimizer_steps": self.optimizer_steps,
            "samples": self.samples,
        }


def peak_memory_mb() -> tuple[float, str]:
    """(MB, kind): CUDA peak allocated memory when a GPU was used, else the process peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "process_peak_rss"
