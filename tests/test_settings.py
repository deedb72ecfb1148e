"""Settings declared once (`config.setting`): the command line's options, the validation, the
presets and `e2urec list methods` all derive from the dataclass fields."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Literal

import pytest

from e2urec.cli import build_parser, main
from e2urec.config import (
    add_settings,
    check_settings,
    describe_settings,
    override,
    setting,
    settings_of,
)
from e2urec.data.settings import PrepareConfig, PrepareSettings, parse_last_n
from e2urec.errors import E2URecError
from e2urec.methods import METHODS, TrainParams
from e2urec.methods.ensemble import Recipe
from e2urec.presets import BenchData, BenchTrain
from e2urec.train.loop import LoopConfig
from e2urec.train.options import (
    LoopSettings,
    StepSettings,
    SupervisedSettings,
    TrainJob,
    TrainOptions,
)


@dataclass
class Toy:
    name: str = setting(help="who")
    count: int = setting(3, "how many", rule="count")
    ratio: float | None = setting(None, "a share", rule="fraction")
    mode: Literal["a", "b"] = setting("a", "which mode")
    loud: bool = setting(False, "shout")
    last: int | None = setting(7, "the last N or 'all'", parse=parse_last_n)


@dataclass
class Louder(Toy):
    count: int = override(Toy, "count", 5)


def toy_parser(cls: type = Toy, **options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_settings(parser, cls, **options)
    return parser


def test_options_derived_from_the_declarations() -> None:
    args = toy_parser().parse_args(["--name", "x"])
    assert settings_of(Toy, args) == {
        "name": "x",
        "count": 3,
        "ratio": None,
        "mode": "a",
        "loud": False,
        "last": 7,
    }
    args = toy_parser().parse_args(
        ["--name", "x", "--count", "4", "--ratio", "0.5", "--mode", "b", "--loud", "--last", "all"]
    )
    assert Toy(**settings_of(Toy, args)) == Toy("x", 4, 0.5, "b", True, None)
    actions = {a.dest: a for a in toy_parser()._actions}
    assert actions["name"].required and actions["mode"].choices == ("a", "b")
    assert actions["count"].type is int and actions["ratio"].type is float
    assert actions["count"].help == "how many (default 3)"
    assert actions["ratio"].help == "a share (default none)"


def test_include_exclude_and_overridden_defaults() -> None:
    only = {a.dest for a in toy_parser(include=("count", "mode"))._actions} - {"help"}
    assert only == {"count", "mode"}
    assert "loud" not in {a.dest for a in toy_parser(exclude=("loud",))._actions}
    louder = {a.dest: a for a in toy_parser(Louder)._actions}
    assert louder["count"].default == 5 and louder["count"].help == "how many (default 5)"


def test_a_choice_outside_the_literal_is_refused_by_the_parser() -> None:
    with pytest.raises(argparse.ArgumentError, match="invalid choice: 'c'"):
        toy_parser().parse_args(["--name", "x", "--mode", "c"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"count": 0}, "count must be an integer of at least 1, got 0"),
        ({"count": 1.5}, "count must be an integer of at least 1, got 1.5"),
        ({"ratio": 1.0}, "ratio must be in [0, 1), got 1.0"),
        ({"ratio": float("nan")}, "ratio must be in [0, 1), got nan"),
        ({"mode": "c"}, "mode must be one of a, b, got 'c'"),
    ],
)
def test_validation_names_the_setting(changes: dict, message: str) -> None:
    with pytest.raises(E2URecError) as info:
        check_settings(dataclasses.replace(Toy("x"), **changes), "toy.")
    assert str(info.value) == f"toy.{message}"


def test_valid_values_pass_and_none_is_allowed_where_declared() -> None:
    check_settings(Toy("x", ratio=None, last=None))
    check_settings(Toy("x", count=2, ratio=0.0, mode="b"))


def test_description_lists_type_choices_range_default_and_help() -> None:
    lines = describe_settings(Toy)
    assert lines[0] == "name = required (str): who"
    assert "count = 3 (int ≥ 1): how many" in lines
    assert "ratio = none (float in [0, 1) or none): a share" in lines
    assert "mode = a (a | b): which mode" in lines


# ---------------------------------------------------------------- the package's declarations
def _options(command: list[str]) -> set[str]:
    parser = build_parser()
    for name in command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return {a.dest for a in parser._actions}


def test_data_prepare_offers_every_preparation_setting() -> None:
    fields = {f.name for f in dataclasses.fields(PrepareConfig)}
    assert fields <= _options(["data", "prepare"])


def test_bench_data_extends_the_preparation_settings_with_the_same_declarations() -> None:
    base = {f.name: f for f in dataclasses.fields(PrepareSettings)}
    bench = {f.name: f for f in dataclasses.fields(BenchData)}
    assert set(base) <= set(bench)
    for name, field in base.items():
        assert bench[name].metadata == field.metadata
        assert name == "dataset" or bench[name].default == field.default


def test_loop_settings_are_declared_once() -> None:
    """Every loop settings class extends the shared bases; a field it shares keeps the base's
    help and range rule (only the default may change)."""
    for cls, base in [
        (LoopConfig, LoopSettings),
        (TrainParams, StepSettings),
        (Recipe, SupervisedSettings),
        (BenchTrain, SupervisedSettings),
        (TrainJob, SupervisedSettings),
    ]:
        assert issubclass(cls, base)
        own = {f.name: f for f in dataclasses.fields(cls)}
        for field in dataclasses.fields(base):
            assert own[field.name].metadata == field.metadata, (cls, field.name)
    for name in METHODS:
        spec = METHODS.get(name)
        if issubclass(spec.params, TrainOptions):
            assert issubclass(spec.params, TrainParams), name


def test_train_options_parse_to_the_job_defaults() -> None:
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert TrainJob(**settings_of(TrainJob, args)) == TrainJob()
    assert {f.name for f in dataclasses.fields(TrainJob)} <= set(vars(args))
    ensemble = _options(["train-ensemble"])
    assert {f.name for f in dataclasses.fields(SupervisedSettings)} <= ensemble


def test_every_method_parameter_has_help() -> None:
    for name in METHODS:
        spec = METHODS.get(name)
        for field in dataclasses.fields(spec.params):
            assert field.metadata.get("help"), f"{name}.{field.name} has no help"


def test_list_methods_shows_each_parameter(capsys) -> None:
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "    aug = full (full | lora): the augmented model" in out
    assert "    mode = remove (remove | flip):" in out
    assert "    damping = 0.3 (float > 0): " in out
    assert "trainer options" in out and "    precision = fp32 (fp32 | bf16 | fp16):" in out
    for name in METHODS:
        spec = METHODS.get(name)
        assert f"\n{name} [{spec.source}]" in f"\n{out}"
        for field in dataclasses.fields(spec.params):
            assert f"    {field.name} = " in out


def test_a_bad_method_parameter_names_the_setting(tmp_path, capsys) -> None:
    with pytest.raises(E2URecError, match="e2urec parameter aug must be one of full, lora"):
        METHODS.get("e2urec").params(aug="half")
    code = main(["data", "prepare", "--dataset", "synthetic", "--out", str(tmp_path / "d")]
                + ["--holdout-ratio", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err == "e2urec: error: holdout_ratio must be in [0, 1), got 1.0\n"
    assert list(tmp_path.iterdir()) == []
