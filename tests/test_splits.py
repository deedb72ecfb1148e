"""Split logic on small hand-made logs: chronology, histories, forgetting and shards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from e2urec.data import splits
from e2urec.data.prepare import PrepareConfig, build_splits
from e2urec.data.schema import RatingLog
from e2urec.errors import E2URecError


def random_log(n_users: int = 40, n_items: int = 60, n_ratings: int = 1500, seed: int = 0):
    """A seeded log with many timestamp ties (times drawn from a small range)."""
    rng = np.random.default_rng(seed)
    pairs = rng.choice(n_users * n_items, size=n_ratings, replace=False)
    ratings = pd.DataFrame(
        {
            "user_id": pairs // n_items + 1,
            "item_id": pairs % n_items + 1,
            "rating": rng.integers(1, 6, size=n_ratings).astype(float),
            "timestamp": rng.integers(0, 300, size=n_ratings),
        }
    )
    items = pd.DataFrame(
        {"item_id": range(1, n_items + 1), "title": [f"M{i}" for i in range(1, n_items + 1)]}
    )
    return RatingLog(ratings, items, None)


def config(**overrides) -> PrepareConfig:
    values = {"dataset": "ml-100k", "out": "unused", "last_n": 1000, "min_history": 5}
    return PrepareConfig(**{**values, **overrides})


def test_samples_are_chronological_and_histories_strictly_earlier():
    log = random_log()
    samples = splits.chronological_samples(log.ratings, history_len=4, min_history=3, last_n=None)
    frame = samples.frame
    key = list(zip(frame["timestamp"], frame["user_id"], frame["item_id"], strict=True))
    assert key == sorted(key)
    assert frame["id"].is_monotonic_increasing
    ordered = log.ratings.iloc[samples.entry_order].reset_index(drop=True)
    for j, row in enumerate(frame.itertuples()):
        history = ordered.iloc[samples.starts[j] : samples.ends[j]]
        assert (history["user_id"] == row.user_id).all()
        assert (history["timestamp"] <= row.timestamp).all()
        earlier = log.ratings[
            (log.ratings["user_id"] == row.user_id)
            & (
                (log.ratings["timestamp"] < row.timestamp)
                | (
                    (log.ratings["timestamp"] == row.timestamp)
                    & (log.ratings["item_id"] < row.item_id)
                )
            )
        ].sort_values(["timestamp", "item_id"])
        assert len(earlier) >= 3
        assert history["item_id"].tolist() == earlier["item_id"].tolist()[-4:]


def test_min_history_and_last_n():
    log = random_log()
    counts = log.ratings["user_id"].value_counts()
    everything = splits.chronological_samples(log.ratings, 10, 5, None)
    assert everything.eligible == int((counts - 5).clip(lower=0).sum())
    last = splits.chronological_samples(log.ratings, 10, 5, 100)
    assert last.frame["id"].tolist() == everything.frame["id"].tolist()[-100:]


def test_per_user_keeps_each_users_latest_samples_before_last_n():
    log = random_log()
    everything = splits.chronological_samples(log.ratings, 10, 5, None).frame
    capped = splits.chronological_samples(log.ratings, 10, 5, None, per_user=2).frame
    latest = everything.groupby("user_id").tail(2)  # chronological order: the tail is the latest
    assert capped["id"].tolist() == latest["id"].tolist()
    assert capped["user_id"].value_counts().max() <= 2
    both = splits.chronological_samples(log.ratings, 10, 5, 30, per_user=2).frame
    assert both["id"].tolist() == latest["id"].tolist()[-30:]


def test_split_60_20_20_and_forget_retain():
    frame, rows, info = build_splits(random_log(), config())
    n = len(frame)
    assert [len(rows[s]) for s in ("train", "valid", "test")] == [
        int(0.6 * n),
        int(0.8 * n) - int(0.6 * n),
        n - int(0.8 * n),
    ]
    assert np.array_equal(
        np.concatenate([rows["train"], rows["valid"], rows["test"]]), np.arange(n)
    )
    train_users = frame.iloc[rows["train"]]["user_id"].unique()
    forgotten = set(info["forgotten_users"])
    assert len(forgotten) == int(0.2 * len(train_users))
    assert not forgotten & set(frame.iloc[rows["retain"]]["user_id"])
    assert set(frame.iloc[rows["forget"]]["user_id"]) == forgotten
    assert sorted(np.concatenate([rows["retain"], rows["forget"]])) == rows["train"].tolist()


def test_sisa_shards_partition_retain():
    _, rows, _ = build_splits(random_log(), config(shards=3))
    parts = [rows[f"sisa-{k}"] for k in range(3)]
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined)) and set(joined) == set(rows["retain"])


def test_receraser_shards_are_balanced_user_partition_of_retain():
    frame, rows, _ = build_splits(random_log(), config(shards=3))
    users = [set(frame.iloc[rows[f"receraser-{k}"]]["user_id"]) for k in range(3)]
    retain_users = set(frame.iloc[rows["retain"]]["user_id"])
    assert set().union(*users) == retain_users
    assert sum(len(u) for u in users) == len(retain_users)
    sizes = [len(u) for u in users]
    assert max(sizes) - min(sizes) <= 1
    joined = np.concatenate([rows[f"receraser-{k}"] for k in range(3)])
    assert sorted(joined) == sorted(rows["retain"])


def test_balanced_kmeans_sizes_differ_by_at_most_one():
    x = np.random.default_rng(1).normal(size=(103, 5))
    for k in (1, 2, 4, 7):
        sizes = np.bincount(splits.balanced_kmeans(x, k, np.random.default_rng(0)), minlength=k)
        assert sizes.sum() == 103 and sizes.max() - sizes.min() <= 1


def test_seed_controls_forgotten_users():
    log = random_log()
    a = build_splits(log, config(seed=1))[2]["forgotten_users"]
    b = build_splits(log, config(seed=1))[2]["forgotten_users"]
    c = build_splits(log, config(seed=2))[2]["forgotten_users"]
    assert a == b and a != c


@pytest.mark.parametrize("strategy", ["most-active", "least-active"])
def test_activity_strategies(strategy):
    frame, rows, info = build_splits(random_log(), config(forget_strategy=strategy))
    counts = frame.iloc[rows["train"]]["user_id"].value_counts()
    chosen = counts[counts.index.isin(info["forgotten_users"])]
    others = counts[~counts.index.isin(info["forgotten_users"])]
    if strategy == "most-active":
        assert chosen.min() >= others.max()
    else:
        assert chosen.max() <= others.min()


def test_too_few_train_users_to_forget():
    log = random_log(n_users=3, n_ratings=150)
    with pytest.raises(E2URecError, match="forgets nobody"):
        build_splits(log, config())
