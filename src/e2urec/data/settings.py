"""The preparation protocol's settings, declared once: `data prepare` (PrepareConfig), the
bench presets' `data` section (BenchData) and their validation all derive from `PrepareSettings`.
Light on purpose (no numpy/pandas), so the command line can build its options from it."""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass
from typing import Literal

from e2urec.config import check_settings, setting
from e2urec.errors import E2URecError

ForgetStrategy = Literal["random", "most-active", "least-active"]
Pollution = Literal["none", "label-flip", "shilling"]
Attack = Literal["average", "love-hate"]
FORGET_STRATEGIES = typing.get_args(ForgetStrategy)
POLLUTIONS = typing.get_args(Pollution)
ATTACKS = typing.get_args(Attack)


def parse_last_n(value: str) -> int | None:
    """The command line's --last-n: an integer, or 'all' (None: keep every sample)."""
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {value!r}") from None


@dataclass
class PrepareSettings:
    """What defines a preparation besides where its files are; defaults are the paper's
    protocol (see `e2urec.data.prepare`)."""

    dataset: str = setting(help="reader name (see `e2urec list datasets`)")
    last_n: int | None = setting(
        100_000, "keep the last N samples, or 'all'", rule="count", parse=parse_last_n
    )
    per_user: int | None = setting(
        None,
        "keep only each user's latest N samples before --last-n, or 'all' (spreads a small "
        "split over more users)",
        rule="count",
        parse=parse_last_n,
    )
    history_len: int = setting(10, "history items shown in the prompt", rule="count")
    min_history: int = setting(5, "drop samples with fewer earlier ratings", rule="count")
    forget_ratio: float = setting(0.2, "share of train users to forget", rule="share")
    forget_strategy: ForgetStrategy = setting("random", "which train users are forgotten")
    shards: int = setting(4, "SISA and RecEraser shards", rule="count")
    seed: int = setting(42, "seed for forget/holdout users, fake users and shards")
    template: str = setting("auto", "prompt template name; auto: the domain's")
    pollute: Pollution = setting(
        "none",
        "none (the paper's); label-flip: the forgotten users' train labels are flipped; "
        "shilling: fake users promoting target items are injected and form the forget set",
    )
    targets: int = setting(10, "shilling: items the fake users promote", rule="count")
    fake_users: int = setting(20, "shilling: fake users injected", rule="count")
    attack: Attack = setting(
        "average",
        "shilling: how fake users rate their fillers: average (each item's mean rating) or "
        "love-hate (1 star, against real tastes)",
    )
    holdout_ratio: float = setting(
        0.0,
        "share of train users whose train rows nobody trains on: same-period non-members for "
        "membership tests (split 'holdout'); 0 is the paper's split",
        rule="fraction",
    )


@dataclass(kw_only=True)
class PrepareConfig(PrepareSettings):
    """Everything that defines a preparation: the protocol's settings and where the files are."""

    out: str = setting(help="output folder", metavar="DIR")
    raw: str | None = setting(None, "raw data folder or file (optional for synthetic)")

    def validate(self, where: str = "") -> None:
        """Raise one clear E2URecError for the first invalid value (errors name the setting,
        prefixed by `where`, e.g. "data." in a bench preset)."""
        from e2urec.data import prompts
        from e2urec.data.readers import READERS

        READERS.get(self.dataset)
        if self.template != "auto":
            prompts.TEMPLATES.get(self.template)
        check_settings(self, where)
        if self.pollute != "shilling" and self.forget_ratio + self.holdout_ratio >= 1:
            raise E2URecError(
                f"{where}forget_ratio {self.forget_ratio:g} + {where}holdout_ratio "
                f"{self.holdout_ratio:g} leaves no train user to retain"
            )
