"""Readers: one per raw dataset format, registered by name; each returns a validated RatingLog."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from e2urec.data.schema import RatingLog
from e2urec.errors import E2URecError
from e2urec.registry import Registry

Reader = Callable[[Path], RatingLog]
READERS: Registry[Reader] = Registry("dataset")

GENDERS = {"M": "male", "F": "female"}


def require_file(folder: Path, name: str) -> Path:
    """`folder/name`, or one clear error that names the missing file."""
    path = Path(folder) / name
    if not path.is_file():
        raise E2URecError(f"missing file {path} (is --raw the right folder?)")
    if path.stat().st_size == 0:
        raise E2URecError(f"empty file {path}")
    return path


def read_table(path: Path, sep: str, names: list[str], dtypes: dict[str, str]) -> pd.DataFrame:
    """Read a headerless delimited file; a wrong separator, column count or type is one clear error."""
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            header=None,
            names=names,
            usecols=range(len(names)),
            encoding="latin-1",
            engine="python" if len(sep) > 1 else "c",
            dtype=str,
            keep_default_na=False,
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise E2URecError(f"{path}: cannot parse as {sep!r}-separated {names} ({exc})") from None
    if frame.empty:
        raise E2URecError(f"empty file {path}")
    if (frame[names[-1]] == "").all() and len(names) > 1:
        raise E2URecError(f"{path}: expected {len(names)} {sep!r}-separated columns {names}")
    for column, dtype in dtypes.items():
        converted = pd.to_numeric(frame[column], errors="coerce")
        bad = converted.isna()
        if bad.any():
            row = int(bad.idxmax()) + 1
            raise E2URecError(
                f"{path}: line {row}: column {column!r} is not numeric ({frame[column][bad].iloc[0]!r})"
            )
        frame[column] = converted.astype(dtype)
    return frame


def check_ratings(path: Path, ratings: pd.DataFrame, low: float, high: float) -> None:
    """Ratings outside [low, high] are one clear error naming the first offending line."""
    bad = (ratings["rating"] < low) | (ratings["rating"] > high)
    if bad.any():
        row = int(bad.idxmax()) + 1
        raise E2URecError(
            f"{path}: line {row}: rating {ratings['rating'][bad].iloc[0]} outside [{low:g}, {high:g}]"
        )


@READERS.register("ml-100k", description="MovieLens 100K (u.user, u.item, u.data)", source="GroupLens")
def read_ml100k(folder: Path) -> RatingLog:
    """MovieLens-100K: `u.data` (tab), `u.item` and `u.user` (`|`), Latin-1."""
    folder = Path(folder)
    data = require_file(folder, "u.data")
    ratings = read_table(
        data,
        "\t",
        ["user_id", "item_id", "rating", "timestamp"],
        {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"},
    )
    check_ratings(data, ratings, 1, 5)
    items = read_table(require_file(folder, "u.item"), "|", ["item_id", "title"], {"item_id": "int64"})
    users = read_table(
        require_file(folder, "u.user"),
        "|",
        ["user_id", "age", "gender", "job"],
        {"user_id": "int64"},
    )
    users["gender"] = users["gender"].map(GENDERS).fillna("person")
    return RatingLog(ratings, items, users[["user_id", "gender", "age", "job"]]).validate(str(folder))
