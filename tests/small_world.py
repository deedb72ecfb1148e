"""The small prepared dataset the method tests share (test_methods, test_apa, test_influence)."""

from __future__ import annotations

from pathlib import Path

from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.synthetic import generate, write_ml1m


def prepare_small(root: Path, shards: int = 4) -> Path:
    """A synthetic ML-1M log of 40 users (seed 0) prepared into `root/data`: the last 200
    samples, 3-item histories, `shards` shards, the least active 20% of users forgotten."""
    write_ml1m(generate(n_users=40, n_items=60, n_ratings=1500, seed=0), root / "raw")
    config = PrepareConfig(
        dataset="synthetic",
        out=str(root / "data"),
        raw=str(root / "raw"),
        last_n=200,
        history_len=3,
        shards=shards,
        forget_ratio=0.2,
        forget_strategy="least-active",
    )
    prepare(config)
    return root / "data"
