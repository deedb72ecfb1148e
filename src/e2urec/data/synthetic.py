"""Seeded synthetic rating logs in the MovieLens-1M format, with a learnable latent structure.

Ratings come from a latent-factor model: a user's liking of an item is a global level plus user
and item biases plus the dot product of user and item factors (item factors lean on the item's
genres, user biases on age and gender), plus noise; the scores are cut into 1..5 stars with the
MovieLens-1M star proportions. Users rate in sessions, so timestamps increase per user with short
gaps inside a session and long gaps between sessions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.artifacts import atomic_write_bytes
from e2urec.data.schema import GENDERS, ML1M_AGES, ML1M_OCCUPATIONS, RatingLog
from e2urec.errors import E2URecError

DEFAULT_SIZE = {"n_users": 600, "n_items": 400, "n_ratings": 30_000, "seed": 0}

GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
    "Western",
)  # fmt: skip
ADJECTIVES = (
    "Silent", "Crimson", "Hidden", "Last", "Broken", "Golden", "Midnight", "Wild", "Lost", "Secret",
    "Frozen", "Burning", "Electric", "Quiet", "Savage", "Distant", "Hollow", "Iron", "Velvet",
    "Restless", "Forgotten", "Shattered", "Endless", "Bright", "Dark", "Little", "Great", "Final",
    "Sweet", "Bitter", "Falling", "Rising", "Eternal", "Wandering", "Stolen", "Painted",
)  # fmt: skip
NOUNS = (
    "River", "Empire", "Garden", "Stranger", "Harbor", "Kingdom", "Shadow", "Island", "Summer",
    "Winter", "Highway", "Promise", "Voyage", "Letter", "Mirror", "Forest", "City", "Heart",
    "Storm", "Dream", "Tower", "Witness", "Horizon", "Circus", "Frontier", "Orchard", "Signal",
    "Lighthouse", "Canyon", "Detective", "Machine", "Rebel", "Dancer", "Ocean", "Mountain",
    "Legacy",
)  # fmt: skip
PATTERNS = ("{a} {n}", "The {a} {n}", "{n} of the {a}", "{a} {n} II")
YEARS = np.arange(1930, 2001)

# MovieLens-1M proportions of 1..5 stars (cumulative, without the last): 5.6, 10.8, 26.1, 34.9 %.
STAR_CUTS = np.array([0.056, 0.164, 0.425, 0.774])
AGE_CODES = np.array(list(ML1M_AGES))
AGE_WEIGHTS = np.array([222, 1103, 2096, 1193, 550, 496, 380], dtype=float)  # ML-1M users per age
START = 956_703_932  # 2000-04-25, the first MovieLens-1M rating
SPAN = 3 * 365 * 86_400
FACTORS = 8


def titles(n_items: int, rng: np.random.Generator) -> list[str]:
    """`n_items` distinct readable titles with a year, e.g. "The Hidden Harbor (1987)"."""
    total = len(ADJECTIVES) * len(NOUNS) * len(PATTERNS) * len(YEARS)
    if n_items > total:
        raise E2URecError(f"synthetic data: at most {total} items, got {n_items}")
    codes = rng.choice(total, size=n_items, replace=False)
    codes, year = np.divmod(codes, len(YEARS))
    codes, pattern = np.divmod(codes, len(PATTERNS))
    adjective, noun = np.divmod(codes, len(NOUNS))
    return [
        f"{PATTERNS[p].format(a=ADJECTIVES[a], n=NOUNS[n])} ({YEARS[y]})"
        for a, n, p, y in zip(adjective, noun, pattern, year, strict=True)
    ]


def rating_pairs(
    n_users: int, n_items: int, n_ratings: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`n_ratings` distinct (user, item) index pairs; heavy-tailed user activity, item popularity."""
    activity = rng.lognormal(0.0, 0.8, n_users)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity = popularity[rng.permutation(n_items)]
    pairs = np.empty(0, dtype=np.int64)
    for _ in range(20):
        need = n_ratings - len(pairs)
        if need <= 0:
            break
        draw = 2 * need + 100
        users = rng.choice(n_users, size=draw, p=activity / activity.sum())
        items = rng.choice(n_items, size=draw, p=popularity / popularity.sum())
        pairs = np.concatenate([pairs, users.astype(np.int64) * n_items + items])
        _, first = np.unique(pairs, return_index=True)
        pairs = pairs[np.sort(first)]
    if len(pairs) < n_ratings:  # very dense requests: top up uniformly from the unused pairs
        unused = np.setdiff1d(np.arange(n_users * n_items, dtype=np.int64), pairs)
        pairs = np.concatenate([pairs, rng.choice(unused, n_ratings - len(pairs), replace=False)])
    pairs = pairs[:n_ratings]
    return pairs // n_items, pairs % n_items


def generate(n_users: int, n_items: int, n_ratings: int, seed: int) -> RatingLog:
    """A seeded MovieLens-1M-like RatingLog; the same arguments always give identical frames."""
    if min(n_users, n_items, n_ratings) < 1:
        raise E2URecError("synthetic data: users, items and ratings must all be at least 1")
    if n_ratings > n_users * n_items:
        raise E2URecError(
            f"synthetic data: {n_ratings} ratings exceed {n_users} users x {n_items} items"
        )
    rng = np.random.default_rng(seed)

    gender = rng.choice(np.array(["M", "F"]), size=n_users, p=[0.72, 0.28])
    age = rng.choice(AGE_CODES, size=n_users, p=AGE_WEIGHTS / AGE_WEIGHTS.sum())
    job = rng.integers(0, len(ML1M_OCCUPATIONS), size=n_users)

    n_genres = rng.choice([1, 2, 3], size=n_items, p=[0.5, 0.35, 0.15])
    genre_sets = [np.sort(rng.choice(len(GENRES), size=k, replace=False)) for k in n_genres]
    genre_matrix = np.zeros((n_items, len(GENRES)))
    for item, chosen in enumerate(genre_sets):
        genre_matrix[item, chosen] = 1.0 / len(chosen)

    genre_factors = rng.normal(0.0, 1.0, (len(GENRES), FACTORS))
    item_factors = 0.7 * genre_matrix @ genre_factors + 0.5 * rng.normal(0, 1, (n_items, FACTORS))
    user_factors = rng.normal(0.0, 1.0, (n_users, FACTORS))
    age_bias = np.linspace(-0.2, 0.3, len(AGE_CODES))[np.searchsorted(AGE_CODES, age)]
    user_bias = 0.4 * rng.normal(0, 1, n_users) + age_bias
    user_bias += np.where(gender == "F", 0.05, 0.0)
    item_bias = 0.5 * rng.normal(0, 1, n_items)

    users, items = rating_pairs(n_users, n_items, n_ratings, rng)
    affinity = np.einsum("ij,ij->i", user_factors[users], item_factors[items]) / np.sqrt(FACTORS)
    score = user_bias[users] + item_bias[items] + affinity + 0.4 * rng.normal(0, 1, n_ratings)
    stars = 1 + np.searchsorted(np.quantile(score, STAR_CUTS), score)

    # Sessions: order each user's ratings at random; gaps are minutes inside a session, days between.
    order = np.lexsort((rng.random(n_ratings), users))
    users, items, stars = users[order], items[order], stars[order]
    new_session = rng.random(n_ratings) < 0.15
    gaps = np.where(
        new_session, rng.exponential(5 * 86_400, n_ratings), rng.exponential(90, n_ratings)
    )
    gaps = np.ceil(gaps).astype(np.int64) + 1
    first = np.r_[True, users[1:] != users[:-1]]
    elapsed = np.cumsum(gaps)
    elapsed -= np.maximum.accumulate(np.where(first, elapsed, 0))
    user_start = START + rng.integers(0, SPAN, n_users)
    timestamps = user_start[users] + elapsed

    ratings = pd.DataFrame(
        {
            "user_id": users + 1,
            "item_id": items + 1,
            "rating": stars.astype("float64"),
            "timestamp": timestamps.astype("int64"),
        }
    )
    items_frame = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1, dtype="int64"),
            "title": titles(n_items, rng),
            "genres": ["|".join(GENRES[g] for g in chosen) for chosen in genre_sets],
        }
    )
    users_frame = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype="int64"),
            "gender": [GENDERS[g] for g in gender],
            "age": [ML1M_AGES[a] for a in age],
            "job": [ML1M_OCCUPATIONS[j] for j in job],
        }
    )
    return RatingLog(ratings, items_frame, users_frame).validate("synthetic data")


def codes(frame: pd.DataFrame, column: str, labels: dict) -> pd.Series:
    """Invert a label mapping (label → code); a label outside it is one clear error."""
    inverse = {label: code for code, label in labels.items()}
    coded = frame[column].map(inverse)
    if coded.isna().any():
        bad = frame[column][coded.isna()].iloc[0]
        raise E2URecError(
            f"cannot write ML-1M users.dat: {column} {bad!r} is not one of {', '.join(inverse)}"
        )
    return coded.astype(str)


def dat_lines(frame: pd.DataFrame, columns: list[str], name: str) -> bytes:
    """`::`-joined lines of the given columns, Latin-1; text holding `::` or newlines is an error."""
    text = frame[columns[0]].astype(str)
    for column in columns[1:]:
        values = frame[column].astype(str)
        is_text = not pd.api.types.is_numeric_dtype(frame[column])
        if is_text and values.str.contains("::|\n", regex=True).any():
            raise E2URecError(f"cannot write ML-1M {name}: a {column} holds '::' or a newline")
        text = text + "::" + values
    try:
        return ("\n".join(text) + "\n").encode("latin-1")
    except UnicodeEncodeError as exc:
        raise E2URecError(
            f"cannot write ML-1M {name}: text outside Latin-1 ({exc.reason})"
        ) from None


def write_ml1m(log: RatingLog, folder: str | Path) -> Path:
    """Write `log` as MovieLens-1M users.dat, movies.dat and ratings.dat (each file atomically).

    The `ml-1m` reader reads the files back into identical frames. Needs user profiles with ML-1M
    labels, whole-star ratings and titles without `::`; zip codes are written as 00000.
    """
    folder = Path(folder)
    if log.users is None:
        raise E2URecError("cannot write ML-1M users.dat: the rating log has no user profiles")
    stars = log.ratings["rating"]
    if ((stars % 1) != 0).any():
        raise E2URecError("cannot write ML-1M ratings.dat: ratings must be whole stars 1..5")
    users = pd.DataFrame(
        {
            "user_id": log.users["user_id"],
            "gender": codes(log.users, "gender", GENDERS),
            "age": codes(log.users, "age", ML1M_AGES),
            "job": codes(log.users, "job", ML1M_OCCUPATIONS),
            "zip": "00000",
        }
    )
    items = log.items.assign(genres=log.items["genres"] if "genres" in log.items else "")
    ratings = log.ratings.assign(rating=stars.astype("int64"))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        folder / "users.dat", dat_lines(users, ["user_id", "gender", "age", "job", "zip"], "users")
    )
    atomic_write_bytes(
        folder / "movies.dat", dat_lines(items, ["item_id", "title", "genres"], "movies")
    )
    atomic_write_bytes(
        folder / "ratings.dat",
        dat_lines(ratings, ["user_id", "item_id", "rating", "timestamp"], "ratings"),
    )
    return folder
