"""The in-memory form every reader returns: a rating log with item titles and optional profiles."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from e2urec.errors import E2URecError

RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
ITEM_COLUMNS = ("item_id", "title")
USER_COLUMNS = ("user_id", "gender", "age", "job")

# Profile vocabularies (MovieLens codes → the words the prompts use).
GENDERS = {"M": "male", "F": "female"}

# MovieLens-1M README: age and occupation codes in users.dat.
ML1M_AGES = {
    1: "Under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}
ML1M_OCCUPATIONS = {
    0: "other",
    1: "academic/educator",
    2: "artist",
    3: "clerical/admin",
    4: "college/grad student",
    5: "customer service",
    6: "doctor/health care",
    7: "executive/managerial",
    8: "farmer",
    9: "homemaker",
    10: "K-12 student",
    11: "lawyer",
    12: "programmer",
    13: "retired",
    14: "sales/marketing",
    15: "scientist",
    16: "self-employed",
    17: "technician/engineer",
    18: "tradesman/craftsman",
    19: "unemployed",
    20: "writer",
}


@dataclass
class RatingLog:
    """Ratings plus the text the prompts need.

    ratings: user_id (int64), item_id (int64), rating (float64), timestamp (int64, unix seconds)
    items:   item_id (int64), title (str), and optionally genres (str)
    users:   user_id (int64), gender ("male"/"female"), age (str label), job (str), or None
             when the dataset has no profiles (GoodReads, MovieLens "latest")
    domain:  "movies" or "books", which selects the prompt template
    """

    ratings: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None
    domain: str = "movies"

    def validate(self, source: str) -> RatingLog:
        """Check columns, emptiness and types; raise one clear error naming `source`."""
        for name, frame, columns in (
            ("ratings", self.ratings, RATING_COLUMNS),
            ("items", self.items, ITEM_COLUMNS),
            ("users", self.users, USER_COLUMNS),
        ):
            if frame is None:
                continue
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise E2URecError(f"{source}: {name} lack column(s) {', '.join(missing)}")
        if self.ratings.empty:
            raise E2URecError(f"{source}: no ratings found")
        if self.domain not in ("movies", "books"):
            raise E2URecError(f"{source}: unknown domain {self.domain!r}")
        return self
