"""Bench presets: YAML files shipped as package data, resolved into a typed BenchConfig.

Precedence: dataclass defaults < preset YAML < --config file < --set a.b=c.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from e2urec import config as cfg
from e2urec.data.settings import PrepareSettings
from e2urec.errors import E2URecError
from e2urec.train.options import SupervisedSettings


@dataclass
class BenchData(PrepareSettings):
    """How to prepare the data (`data.settings.PrepareSettings`, as `e2urec data prepare`).
    Raw files are looked for under --data-root, then in the download cache; with `fetch` a
    downloadable dataset missing from both is downloaded into the cache (not when
    $E2UREC_OFFLINE is set); `fallback_dataset` is used when the files are still not there (the
    demo falls back to the synthetic set)."""

    dataset: str = cfg.override(PrepareSettings, "dataset", "ml-100k")
    fetch: bool = cfg.setting(False, "download a missing downloadable dataset into the cache")
    fallback_dataset: str = cfg.setting("", "dataset used when the raw files are not found")


@dataclass
class BenchTrain(SupervisedSettings):
    """How Original and Retrain are trained (`train.options.SupervisedSettings`, as
    `e2urec train`; the seed comes from the bench's seeds)."""

    lr: float = cfg.override(SupervisedSettings, "lr", 1e-3)


@dataclass
class BenchConfig:
    """A whole experiment: data, training recipe, seeds, methods and their parameters."""

    description: str = ""
    data: BenchData = field(default_factory=BenchData)
    train: BenchTrain = field(default_factory=BenchTrain)
    seeds: list = field(default_factory=lambda: [0, 1])
    # Extra Retrain seeds trained only for the noise floor (no method runs at them): one seed
    # of every method plus `floor_seeds: [1]` gives the floor at the cost of one more Retrain.
    floor_seeds: list = field(default_factory=list)
    methods: Any = "all"
    method_params: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)  # row name -> {method, params}
    # the stream bench (`bench --stream N`): {methods: [row names], fractions: [of N where it
    # is measured]} (defaults: `stream.DEFAULT_METHODS`, ¼, ½, ¾ and all of N)
    stream: dict = field(default_factory=dict)


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("e2urec") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_values(name: str) -> dict[str, Any]:
    """The raw mapping of preset `name`; an unknown name lists the valid ones."""
    if name not in preset_names():
        raise E2URecError(f"unknown preset {name!r}; valid: {', '.join(preset_names())}")
    text = (resources.files("e2urec") / "presets" / f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def resolve(
    preset: str, config_file: str | None = None, overrides: list[str] | None = None
) -> BenchConfig:
    """BenchConfig from a preset, an optional YAML file and --set overrides (in that order)."""
    values = preset_values(preset)
    if config_file:
        values = cfg.merge(values, cfg.load_yaml(config_file))
    values = cfg.merge(values, cfg.parse_set_options(overrides))
    sections = {"data": BenchData, "train": BenchTrain}
    top = {k: v for k, v in values.items() if k not in sections}
    built = cfg.build(BenchConfig, top, "bench")
    for name, cls in sections.items():
        section = values.get(name) or {}
        if not isinstance(section, dict):
            raise E2URecError(f"bench section {name!r} must be a mapping")
        setattr(built, name, cfg.build(cls, section, f"bench {name}"))
    if not built.seeds or not all(isinstance(s, int) for s in built.seeds):
        raise E2URecError(f"bench seeds must be a non-empty list of integers, got {built.seeds!r}")
    if not isinstance(built.floor_seeds, list) or not all(
        isinstance(s, int) for s in built.floor_seeds
    ):
        raise E2URecError(
            f"bench floor_seeds must be a list of integers, got {built.floor_seeds!r}"
        )
    return built


def as_dict(config: BenchConfig) -> dict[str, Any]:
    """Plain mapping of a BenchConfig (for config.resolved.yaml)."""
    return dataclasses.asdict(config)
