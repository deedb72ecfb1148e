"""Forgetting scenarios on top of the paper's split: polluted forget sets and a holdout.

* label-flip (IFRU, Zhang et al., TORS 2024): the forgotten users' train rows carry flipped
  labels (noisy or malicious accounts). Valid, test and retain stay clean, so Retrain is the
  clean model and the Original is measurably hurt.
* shilling: `fake_users` injected accounts rate `targets` target items 5 stars plus filler items
  drawn by real item popularity, at times spread over the train period. Fillers are rated at
  their item's mean rating (rounded; the "average attack") or 1 star (`love-hate`: the push form
  of Mobasher et al.'s love/hate attack, whose fillers contradict real tastes). The forget set is
  exactly the fake users; the target items are recorded so target uplift can be measured on test.
* holdout: a seeded sample of the remaining train users whose train rows nobody trains on —
  exchangeable non-members for membership tests (later test rows would confound membership
  with time).

Functions return row positions or new sample frames; `e2urec.data.prepare` assembles them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from e2urec.data.schema import RatingLog
from e2urec.errors import E2URecError

FAKE_ID_BASE = 1_000_000_000  # fake user ids start here, far from any real MovieLens/GoodReads id
TARGET_MIN_TEST_ROWS = 3


def flip_labels(frame: pd.DataFrame, positions: np.ndarray, targets: dict[int, str]) -> None:
    """Flip label (0 ↔ 1) and target text of `frame` rows at `positions`, in place."""
    column = frame.columns.get_loc("label")
    flipped = 1 - frame.iloc[positions, column].to_numpy()
    frame.iloc[positions, column] = flipped
    frame.iloc[positions, frame.columns.get_loc("target")] = [targets[v] for v in flipped]


def choose_holdout(
    train: pd.DataFrame, excluded: np.ndarray, ratio: float, seed: int
) -> np.ndarray:
    """`round(ratio × distinct train users)` user ids (at least one) from the train users not in
    `excluded`, seeded; sorted."""
    users = np.setdiff1d(np.unique(train["user_id"].to_numpy()), excluded)
    n_total = train["user_id"].nunique()
    n = max(1, int(round(ratio * n_total)))
    if n >= len(users):
        raise E2URecError(
            f"holdout_ratio {ratio:g} holds out {n} of the {len(users)} train user(s) left "
            "after forgetting; nothing would remain to train on (lower holdout_ratio)"
        )
    return np.sort(np.random.default_rng([seed, 3]).choice(users, size=n, replace=False))


@dataclass
class ShillingAttack:
    """Fake accounts' ratings and profiles, and the items they promote."""

    ratings: pd.DataFrame
    users: pd.DataFrame | None
    target_items: np.ndarray
    fake_users: np.ndarray


def choose_targets(test: pd.DataFrame, n_targets: int, seed: int) -> np.ndarray:
    """`n_targets` items to promote, seeded: among items with at least 3 test rows, those the
    test users like least (positive rate ≤ the median item's) first — promoting an item people
    dislike is what hurts a recommender. Raises when there are fewer candidate items."""
    stats = test.groupby("item_id")["label"].agg(["size", "mean"])
    stats = stats[stats["size"] >= TARGET_MIN_TEST_ROWS]
    if n_targets > len(stats):
        raise E2URecError(
            f"targets {n_targets} exceeds the {len(stats)} item(s) with at least "
            f"{TARGET_MIN_TEST_ROWS} test rows; lower targets or raise last_n"
        )
    rng = np.random.default_rng([seed, 4])
    disliked = stats.index[stats["mean"] <= stats["mean"].median()].to_numpy()
    liked = np.setdiff1d(stats.index.to_numpy(), disliked)
    first = rng.permutation(disliked)
    chosen = np.concatenate([first, rng.permutation(liked)])[:n_targets]
    return np.sort(chosen)


def shilling_attack(
    log: RatingLog,
    train: pd.DataFrame,
    target_items: np.ndarray,
    n_fake: int,
    min_history: int,
    seed: int,
    attack: str = "average",
) -> ShillingAttack:
    """Ratings of `n_fake` fake users over the train period of `train` (samples with timestamps).

    Each fake user rates the median number of ratings a real train user has in that period
    (at least `min_history` + 1 fillers, so every target becomes a sample): fillers drawn
    without replacement by popularity among the ratings up to the period's end, each at its
    item's mean rating rounded (`average`) or 1 star (`love-hate`); the targets 5 stars, shuffled
    among the fillers after the first `min_history` of them, so every target is a sample with a
    full history whose context is mostly ordinary items (a model then ties the promotion to the
    item, not to a history of other targets). Profiles are copied from random real users (seeded).
    """
    rng = np.random.default_rng([seed, 5])
    start, end = int(train["timestamp"].min()), int(train["timestamp"].max())
    ratings = log.ratings
    seen = ratings[ratings["timestamp"] <= end]
    popularity = seen["item_id"].value_counts()
    popularity = popularity.drop(target_items, errors="ignore")
    mean_rating = seen.groupby("item_id")["rating"].mean()
    per_user = train.groupby("user_id").size()
    n_filler = max(min_history + 1, int(per_user.median()))
    n_filler = min(n_filler, len(popularity))
    items = popularity.index.to_numpy()
    weights = popularity.to_numpy(dtype=np.float64) / popularity.sum()
    fake_ids = FAKE_ID_BASE + np.arange(n_fake, dtype=np.int64)
    frames = []
    for user in fake_ids:
        fillers = rng.choice(items, size=n_filler, replace=False, p=weights)
        if attack == "love-hate":
            stars = np.ones(len(fillers))
        else:
            stars = np.clip(np.rint(mean_rating.reindex(fillers).to_numpy()), 1, 5)
        head = min_history  # fillers only: the first target already has a full history
        rest_items = np.concatenate([fillers[head:], target_items])
        rest_stars = np.concatenate([stars[head:], np.full(len(target_items), 5.0)])
        order = rng.permutation(len(rest_items))
        item_seq = np.concatenate([fillers[:head], rest_items[order]])
        star_seq = np.concatenate([stars[:head], rest_stars[order]])
        times = np.sort(rng.integers(start, end + 1, size=len(item_seq)))
        frames.append(
            pd.DataFrame(
                {"user_id": user, "item_id": item_seq, "rating": star_seq, "timestamp": times}
            )
        )
    fake_ratings = pd.concat(frames, ignore_index=True).astype(
        {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"}
    )
    profiles = None
    if log.users is not None:
        donors = log.users.iloc[rng.integers(0, len(log.users), size=n_fake)].copy()
        donors["user_id"] = fake_ids
        profiles = donors.reset_index(drop=True)
    return ShillingAttack(fake_ratings, profiles, np.asarray(target_items), fake_ids)
