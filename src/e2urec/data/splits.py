"""The paper's splits: chronological samples, 60/20/20 split, forgotten users, SISA and RecEraser.

All functions are vectorised over rows (numpy index arithmetic); loops run over users or shards
only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from e2urec.data.settings import FORGET_STRATEGIES
from e2urec.errors import E2URecError

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass
class Samples:
    """Samples in global chronological order, with where their history lies in `entries`.

    frame:   id (chronological rank among all ratings), user_id, item_id, timestamp, rating
    starts, ends: sample j's history is `entries[starts[j]:ends[j]]`, oldest first, where
             `entries` is indexed by `entry_order` (ratings sorted by user, then time)
    entry_order: positions into the ratings frame, in user-then-chronological order
    """

    frame: pd.DataFrame
    starts: np.ndarray
    ends: np.ndarray
    entry_order: np.ndarray
    eligible: int


def chronological_samples(
    ratings: pd.DataFrame,
    history_len: int,
    min_history: int,
    last_n: int | None,
    per_user: int | None = None,
) -> Samples:
    """One sample per rating with at least `min_history` earlier ratings by the same user.

    Global order: timestamp, ties by user_id then item_id. A sample's history is its user's
    ratings strictly earlier in that order; the last `history_len` are shown. With `per_user`,
    each user's latest `per_user` samples are the only candidates (their histories still hold
    every earlier rating); then only the last `last_n` samples (all when None) are kept.
    """
    user = ratings["user_id"].to_numpy()
    item = ratings["item_id"].to_numpy()
    stamp = ratings["timestamp"].to_numpy()
    chron = np.lexsort((item, user, stamp))
    rank = np.empty(len(ratings), dtype=np.int64)
    rank[chron] = np.arange(len(ratings))
    by_user = np.lexsort((rank, user))
    sorted_user = user[by_user]
    index = np.arange(len(ratings))
    new_user = np.ones(len(ratings), dtype=bool)
    new_user[1:] = sorted_user[1:] != sorted_user[:-1]
    group_start = np.maximum.accumulate(np.where(new_user, index, 0))
    position = index - group_start
    keep = np.flatnonzero(position >= min_history)
    keep = keep[np.argsort(rank[by_user[keep]], kind="stable")]
    eligible = len(keep)
    if per_user is not None:
        owners = pd.Series(user[by_user[keep]])
        later = owners[::-1].groupby(owners[::-1]).cumcount()[::-1].to_numpy()
        keep = keep[later < per_user]
    if last_n is not None:
        keep = keep[-last_n:]
    rows = by_user[keep]
    frame = pd.DataFrame(
        {
            "id": rank[rows],
            "user_id": user[rows],
            "item_id": item[rows],
            "timestamp": stamp[rows],
            "rating": ratings["rating"].to_numpy()[rows],
        }
    )
    starts = keep - np.minimum(position[keep], history_len)
    return Samples(frame, starts, keep, by_user, eligible)


def chronological_split(n: int) -> tuple[slice, slice, slice]:
    """Train / valid / test slices of `n` chronological samples: 60% / 20% / 20%."""
    train_end = int(n * SPLIT_FRACTIONS[0])
    valid_end = int(n * (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]))
    return slice(0, train_end), slice(train_end, valid_end), slice(valid_end, n)


def choose_forgotten(train: pd.DataFrame, ratio: float, strategy: str, seed: int) -> np.ndarray:
    """`int(ratio × distinct train users)` user ids, sorted.

    random: a seeded choice; most-/least-active: by train sample count, ties by user id.
    """
    counts = train["user_id"].value_counts().sort_index()
    n_forget = int(ratio * len(counts))
    if n_forget < 1:
        raise E2URecError(
            f"forget_ratio {ratio:g} of {len(counts)} train user(s) forgets nobody; "
            "raise forget_ratio or last_n"
        )
    ids = counts.index.to_numpy()
    if strategy == "random":
        chosen = np.random.default_rng(seed).choice(ids, size=n_forget, replace=False)
    elif strategy in ("most-active", "least-active"):
        sign = -1 if strategy == "most-active" else 1
        chosen = ids[np.lexsort((ids, sign * counts.to_numpy()))][:n_forget]
    else:
        raise E2URecError(
            f"unknown forget strategy {strategy!r}; valid: {', '.join(FORGET_STRATEGIES)}"
        )
    return np.sort(chosen)


def sisa_shards(train: pd.DataFrame, forget_mask: np.ndarray, shards: int, seed: int) -> list:
    """SISA: a seeded permutation of train samples cut into `shards` near-equal shards, the
    forget samples then removed from each. Returns row positions into `train`, sorted."""
    order = np.random.default_rng([seed, 1]).permutation(len(train))
    return [np.sort(part[~forget_mask[part]]) for part in np.array_split(order, shards)]


def receraser_shards(retain: pd.DataFrame, shards: int, seed: int) -> list:
    """RecEraser user-based balanced shards of the retained users, by balanced k-means.

    Each user is a row of the users × items rating matrix of `retain`, reduced with TruncatedSVD
    (up to 16 components) and L2-normalised. Balanced k-means: seeded random initial centroids,
    then each round assigns users greedily by ascending user-centroid distance to the nearest
    shard with room (shard quotas n//k, plus one for the first n%k shards, so sizes differ by at
    most one user), and recomputes centroids, until assignments settle (at most 20 rounds).
    Returns row positions into `retain` per shard, sorted.
    """
    user_ids, user_index = np.unique(retain["user_id"].to_numpy(), return_inverse=True)
    if len(user_ids) < shards:
        raise E2URecError(
            f"only {len(user_ids)} retained user(s) for {shards} RecEraser shards; lower shards"
        )
    embedding = _user_embedding(retain, user_index, len(user_ids), seed)
    assignment = balanced_kmeans(embedding, shards, np.random.default_rng([seed, 2]))
    row_shard = assignment[user_index]
    return [np.flatnonzero(row_shard == k) for k in range(shards)]


def _user_embedding(retain: pd.DataFrame, user_index: np.ndarray, n_users: int, seed: int):
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD

    item_ids, item_index = np.unique(retain["item_id"].to_numpy(), return_inverse=True)
    matrix = csr_matrix(
        (retain["rating"].to_numpy(dtype=np.float64), (user_index, item_index)),
        shape=(n_users, len(item_ids)),
    )
    components = min(16, len(item_ids) - 1, n_users - 1)
    if components >= 1:
        dense = TruncatedSVD(n_components=components, random_state=seed).fit_transform(matrix)
    else:
        dense = matrix.toarray()
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    return dense / np.where(norms > 0, norms, 1.0)


def balanced_kmeans(x: np.ndarray, k: int, rng: np.random.Generator, rounds: int = 20):
    """Cluster rows of `x` into `k` clusters whose sizes differ by at most one."""
    n = len(x)
    quotas = np.full(k, n // k)
    quotas[: n % k] += 1
    centroids = x[rng.choice(n, size=k, replace=False)]
    assignment = np.full(n, -1)
    for _ in range(rounds):
        distance = (
            (x * x).sum(1)[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None]
        )
        new = _greedy_assign(distance, quotas)
        if np.array_equal(new, assignment):
            break
        assignment = new
        centroids = np.stack([x[assignment == j].mean(0) for j in range(k)])
    return assignment


def _greedy_assign(distance: np.ndarray, quotas: np.ndarray) -> np.ndarray:
    n, k = distance.shape
    assignment = np.full(n, -1)
    room = quotas.copy()
    left = n
    for flat in np.argsort(distance, axis=None, kind="stable").tolist():
        user, shard = divmod(flat, k)
        if assignment[user] < 0 and room[shard] > 0:
            assignment[user] = shard
            room[shard] -= 1
            left -= 1
            if not left:
                break
    return assignment
