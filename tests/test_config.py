"""Settings from --set: YAML values coerced to each field's type, one clear error otherwise."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from e2urec.config import build, parse_set_options
from e2urec.errors import E2URecError


@dataclass
class Settings:
    lr: float = 5e-5
    epochs: int = 2
    cache: bool = True


@pytest.mark.parametrize("text", ["1e-3", "1.0e-3", "0.001", "1E-3"])
def test_floats_in_every_spelling(text: str) -> None:
    settings = build(Settings, parse_set_options([f"lr={text}"]), "test")
    assert settings.lr == pytest.approx(0.001)


def test_int_to_float_and_wrong_types() -> None:
    assert build(Settings, parse_set_options(["lr=1"]), "test").lr == 1.0
    with pytest.raises(E2URecError, match="'lr' expects float, got 'fast'"):
        build(Settings, parse_set_options(["lr=fast"]), "test")
    with pytest.raises(E2URecError, match="'epochs' expects int"):
        build(Settings, parse_set_options(["epochs=1.5"]), "test")
