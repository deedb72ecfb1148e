"""Prompt templates: the paper's "simple" LLMRec prompt (movies) and its books variant.

A template is one `PromptTemplate` entry in `TEMPLATES`. Its `body` holds `{history}` (the last
K history items, one per line, each `Title (N stars)`) followed by `{title}` (the target item);
every other placeholder depends only on the user:

- `{profile}`: the profile sentence (`profile` formatted with gender, job, age and pronouns),
  empty when the dataset has no profile for the user;
- `{He}`, `{he}`, `{His}`, `{has}`: "He"/"he"/"His"/"has" or "She"/"she"/"Her"/"has" with a
  profile, "They"/"they"/"Their"/"have" for a profile with an unknown gender, and
  "The user"/"they"/"Their"/"have" without a profile.

The history list is one item per line (the DESIGN's `Title (N stars)`), not the official code's
Python-list rendering `["Toy Story (1995) (4 stars)", ...]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from e2urec.registry import Registry

_USER_FIELDS = {"profile", "He", "he", "His", "has"}


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt: `profile` sentence (user fields) and `body` with `{history}` then `{title}`."""

    domain: str
    profile: str
    body: str

    def __post_init__(self) -> None:
        fields = re.findall(r"{(\w+)}", self.body)
        if fields.count("history") != 1 or fields.count("title") != 1:
            raise ValueError("a template body needs exactly one {history} and one {title}")
        if fields.index("history") > fields.index("title"):
            raise ValueError("a template body must show {history} before {title}")
        unknown = set(fields) - _USER_FIELDS - {"history", "title"}
        if unknown:
            raise ValueError(f"unknown template field(s): {', '.join(sorted(unknown))}")

    def parts(self, user: dict[str, str]) -> tuple[str, str, str]:
        """The body split around `{history}` and `{title}`, user fields filled in."""
        head, rest = self.body.split("{history}")
        middle, tail = rest.split("{title}")
        return head.format(**user), middle.format(**user), tail.format(**user)


TEMPLATES: Registry[PromptTemplate] = Registry("prompt template")

_TAIL = (
    "Note that more stars the user rated the {noun}, the user liked the {noun} more.\n"
    "You should ONLY tell me yes or no."
)
_PROFILE = "The user is a {gender}. {His} job is {job}. {His} age is {age}.\n"

TEMPLATES.register("simple", description="the paper's template (movies)")(
    PromptTemplate(
        domain="movies",
        profile=_PROFILE,
        body="{profile}{He} watched the following movies in order in the past, and rated them:\n"
        "{history}\nBased on the movies {he} {has} watched, deduce if {he} will like the movie "
        "***{title}***.\n" + _TAIL.replace("{noun}", "movie"),
    )
)
TEMPLATES.register("simple-books", description="the paper's template, books variant")(
    PromptTemplate(
        domain="books",
        profile=_PROFILE,
        body="{profile}{He} read the following books in order in the past, and rated them:\n"
        "{history}\nBased on the books {he} {has} read, deduce if {he} will like the book "
        "***{title}***.\n" + _TAIL.replace("{noun}", "book"),
    )
)

DEFAULT_TEMPLATE = {"movies": "simple", "books": "simple-books"}

_PRONOUNS = {
    "male": {"He": "He", "he": "he", "His": "His", "has": "has"},
    "female": {"He": "She", "he": "she", "His": "Her", "has": "has"},
}
_THEY = {"He": "They", "he": "they", "His": "Their", "has": "have"}
_NO_PROFILE = {"profile": "", "He": "The user", "he": "they", "His": "Their", "has": "have"}


def template_name(name: str, domain: str) -> str:
    """`name`, or the domain's default template when `name` is "auto"."""
    return DEFAULT_TEMPLATE[domain] if name == "auto" else name


def stars(rating: float) -> str:
    """`4.0` → "4 stars", `3.5` → "3.5 stars", `1.0` → "1 star"."""
    value = f"{rating:g}"
    return f"{value} star" if value == "1" else f"{value} stars"


def history_entries(titles: pd.Series, ratings: pd.Series) -> list[str]:
    """One `Title (N stars)` string per rating (the pieces of every history list)."""
    star_text = ratings.map({r: stars(r) for r in ratings.unique()}).astype(str)
    return (titles.astype(str) + " (" + star_text + ")").tolist()


def user_fields(user_ids: np.ndarray, users: pd.DataFrame | None, template: PromptTemplate) -> dict:
    """user id → template fields (profile sentence and pronouns); users without a profile get
    the "The user"/"they" wording."""
    fields = {int(u): _NO_PROFILE for u in user_ids}
    if users is None:
        return fields
    known = users[users["user_id"].isin(user_ids)]
    for uid, gender, job, age in zip(
        known["user_id"].tolist(),
        known["gender"].astype(str).tolist(),
        known["job"].astype(str).tolist(),
        known["age"].astype(str).tolist(),
        strict=True,
    ):
        words = _PRONOUNS.get(gender, _THEY)
        profile = template.profile.format(gender=gender, job=job, age=age, **words)
        fields[int(uid)] = {"profile": profile, **words}
    return fields


def render(
    template: PromptTemplate,
    user_ids: np.ndarray,
    target_titles: list[str],
    entries: list[str],
    starts: np.ndarray,
    ends: np.ndarray,
    users: pd.DataFrame | None,
) -> list[str]:
    """Prompts for samples: sample j shows `entries[starts[j]:ends[j]]` as its history list.

    User-level parts are formatted once per user; each row is one join and one concatenation.
    """
    unique = np.unique(user_ids)
    fields = user_fields(unique, users, template)
    parts = {uid: template.parts(fields[uid]) for uid in fields}
    return [
        (p := parts[u])[0] + "\n".join(entries[a:b]) + p[1] + t + p[2]
        for u, t, a, b in zip(
            user_ids.tolist(), target_titles, starts.tolist(), ends.tolist(), strict=True
        )
    ]
