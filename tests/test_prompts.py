"""Prompt text: the paper's template exactly, the no-profile and books variants, star wording."""

from __future__ import annotations

import pandas as pd
import pytest

from e2urec.data import prompts
from e2urec.data.prepare import PrepareConfig, labelled_samples
from e2urec.data.schema import RatingLog
from e2urec.errors import E2URecError


def one_user_log(users: pd.DataFrame | None, domain: str = "movies") -> RatingLog:
    """User 7 rates items 1..7 at increasing times; items 3 and 4 share a timestamp."""
    ratings = pd.DataFrame(
        {
            "user_id": [7] * 7,
            "item_id": [6, 2, 1, 4, 3, 5, 7],
            "rating": [5.0, 4.0, 1.0, 2.0, 3.5, 3.0, 4.0],
            "timestamp": [600, 200, 100, 300, 300, 500, 700],
        }
    )
    items = pd.DataFrame({"item_id": range(1, 8), "title": [f"T{i} (199{i})" for i in range(1, 8)]})
    return RatingLog(ratings, items, users, domain)


def prompts_of(log: RatingLog, **overrides) -> pd.DataFrame:
    config = PrepareConfig(dataset="ml-100k", out="unused", history_len=3, min_history=5)
    for key, value in overrides.items():
        setattr(config, key, value)
    return labelled_samples(log, config)[0]


PROFILE = pd.DataFrame({"user_id": [7], "gender": ["female"], "age": ["24"], "job": ["writer"]})


def test_paper_template_exact_text():
    frame = prompts_of(one_user_log(PROFILE))
    assert frame["item_id"].tolist() == [6, 7]
    assert frame["prompt"].iloc[0] == (
        "The user is a female. Her job is writer. Her age is 24.\n"
        "She watched the following movies in order in the past, and rated them:\n"
        "T3 (1993) (3.5 stars)\n"
        "T4 (1994) (2 stars)\n"
        "T5 (1995) (3 stars)\n"
        "Based on the movies she has watched, deduce if she will like the movie "
        "***T6 (1996)***.\n"
        "Note that more stars the user rated the movie, the user liked the movie more.\n"
        "You should ONLY tell me yes or no."
    )
    assert frame["target"].tolist() == ["Yes.", "Yes."]
    assert frame["label"].tolist() == [1, 1]


def test_male_pronouns_and_history_len_cap():
    male = PROFILE.assign(gender="male")
    prompt = prompts_of(one_user_log(male), history_len=10)["prompt"].iloc[1]
    assert prompt.startswith("The user is a male. His job is writer. His age is 24.\nHe watched")
    assert "Based on the movies he has watched, deduce if he will like" in prompt
    history = prompt.split("rated them:\n")[1].split("\nBased on")[0].splitlines()
    assert history == [
        "T1 (1991) (1 star)",
        "T2 (1992) (4 stars)",
        "T3 (1993) (3.5 stars)",
        "T4 (1994) (2 stars)",
        "T5 (1995) (3 stars)",
        "T6 (1996) (5 stars)",
    ]


def test_no_profile_and_books_variant():
    prompt = prompts_of(one_user_log(None, domain="books"))["prompt"].iloc[0]
    assert prompt == (
        "The user read the following books in order in the past, and rated them:\n"
        "T3 (1993) (3.5 stars)\n"
        "T4 (1994) (2 stars)\n"
        "T5 (1995) (3 stars)\n"
        "Based on the books they have read, deduce if they will like the book ***T6 (1996)***.\n"
        "Note that more stars the user rated the book, the user liked the book more.\n"
        "You should ONLY tell me yes or no."
    )


def test_user_missing_from_profiles_uses_no_profile_wording():
    other = PROFILE.assign(user_id=8)
    prompt = prompts_of(one_user_log(other))["prompt"].iloc[0]
    assert prompt.startswith("The user watched the following movies")


def test_named_template_and_unknown_template():
    frame = prompts_of(one_user_log(PROFILE), template="simple-books")
    assert "read the following books" in frame["prompt"].iloc[0]
    with pytest.raises(E2URecError, match="valid: simple, simple-books"):
        prompts_of(one_user_log(PROFILE), template="fancy")


def test_stars_wording():
    assert [prompts.stars(r) for r in (1.0, 4.0, 3.5, 0.5)] == [
        "1 star",
        "4 stars",
        "3.5 stars",
        "0.5 stars",
    ]


def test_template_must_show_history_before_title():
    with pytest.raises(ValueError, match="before"):
        prompts.PromptTemplate("movies", "", "{title} {history}")
    with pytest.raises(ValueError, match="unknown template field"):
        prompts.PromptTemplate("movies", "", "{history} {title} {mood}")
