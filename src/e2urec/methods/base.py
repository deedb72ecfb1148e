"""The method contract: a params dataclass and `run(ctx) -> manifest fields`, registered by name.

Every unlearning method is one module that builds a `Method` and passes it to `register`. The
orchestration (`e2urec.unlearn`) checks the inputs, builds the params from `--set key=value`,
opens the run folder and hands the method an `UnlearnContext`; the method writes its weights
into `ctx.run_dir` and returns the manifest fields it owns ("format" and its own facts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2urec.backbones import Recommender, load_recommender
from e2urec.config import check_settings, override, settings_of
from e2urec.registry import Registry
from e2urec.train.options import StepSettings, check_precision


@dataclass(frozen=True)
class Method:
    """A registered unlearning method.

    base_format: the run format `--from` must have ("single" for one model, "ensemble" for a
    SISA/RecEraser original, "apa"). source: "paper", "paper's code" or "this project".
    streams: the prepared splits `run` trains on; `e2urec.unlearn` reads them (and forget)
    before the run folder exists and refuses an empty one.
    check(base_run, base_manifest, data_dir, params): the method's own checks of the run and
    the data, before the run folder exists (optional). needs_pretrained: the bench's
    `methods: all` leaves it out on a tiny backbone (trained from scratch, no pretrained base).
    """

    name: str
    params: type
    run: Callable[[UnlearnContext], dict[str, Any]]
    description: str
    source: str
    base_format: str = "single"
    streams: tuple[str, ...] = ("forget", "retain")
    check: Callable[..., None] | None = None
    needs_pretrained: bool = False


METHODS: Registry[Method] = Registry("method")


def register(method: Method) -> Method:
    """Add `method` to METHODS under its name."""
    return METHODS.register(method.name, description=method.description, source=method.source)(
        method
    )


def param_defaults(params: type) -> dict[str, Any]:
    """Field name → default of a params dataclass."""
    return {f.name: f.default for f in dataclasses.fields(params)}


def check_params(params: Any, where: str) -> None:
    """One clear error for the first setting out of range, before anything is written: every
    declared setting (`config.check_settings`: Literal choices, range rules), the precision's
    support on this device, then the params' own `check()` if it has one. Errors start with
    `where`, e.g. "method 'npo' parameter "."""
    check_settings(params, where)
    if isinstance(params, TrainParams):
        check_precision(params.precision, where)
    if callable(getattr(params, "check", None)):
        params.check()


@dataclass
class UnlearnContext:
    """What a method gets: the original run, the data, its run folder, seed, cost meter, params."""

    base_run: Path
    base_manifest: dict[str, Any]
    data_dir: Path
    run_dir: Path
    seed: int
    meter: Any  # e2urec.train.cost.CostMeter
    params: Any
    _rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    def rows(self, split: str) -> list[dict[str, Any]]:
        """Rows of a prepared split (train, valid, retain, forget, sisa-K, ...), loaded once."""
        if split not in self._rows:
            from e2urec.data.dataset import load_split

            self._rows[split] = load_split(self.data_dir, split).to_dict("records")
        return self._rows[split]

    def original(self, editable: bool = False) -> Recommender:
        """A fresh copy of the original run's whole model (single-format runs; an APA run's
        frozen base). A LoRA Original stored as its adapter comes merged, or with `editable`
        as its trainable adapter over the frozen base (the method then edits and saves the
        adapter)."""
        from e2urec.mixture import BASE_DIR
        from e2urec.runs import MODEL_DIR

        folder = BASE_DIR if self.base_manifest.get("format") == "apa" else MODEL_DIR
        return load_recommender(self.base_run / folder, editable=editable)


@dataclass
class TrainParams(StepSettings):
    """Optimisation settings shared by the trained methods (`train.options.StepSettings`:
    epochs, lr, batch_size, max_steps and the TrainOptions: `--set precision=bf16`, ...); each
    method overrides defaults with `config.override` and declares its own settings with
    `config.setting` (help text, range rule, `Literal` choices), which `check_params` tests."""

    lr: float = override(StepSettings, "lr", 5e-5)
    epochs: int = override(StepSettings, "epochs", 1)

    def loop_config(self, seed: int) -> Any:
        """The training loop's config for these settings (no early stopping: keep the last)."""
        from e2urec.train.loop import LoopConfig

        return LoopConfig(**settings_of(StepSettings, self), seed=seed)
