"""`e2urec unlearn` and `e2urec export`: check the inputs, run a registered method, write the run.

unlearn: method name + `--set key=value` → the method's params dataclass (unknown names listed,
values out of range refused); the `--from` run must be a complete original run (trained on the
full train split, of the format the method starts from, its weight files unchanged) on the same
prepared data (data manifest sha256) with a non-empty forget set; the forget split and the
splits the method trains on (`Method.streams`) are read and must hold rows. All of that is
checked before anything is written. The method then runs inside a run folder opened by
`runner.start_run` and closed by `runner.finish_run` with the method's manifest fields plus
kind, method, params, base run, data, seed and cost. An interrupted unlearning run is started
again with --overwrite (there is no --resume).

export: a self-contained single-format run from an adapter run (`--merge` folds the LoRA
weights into the base model) or a copy of a single-format run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from e2urec.artifacts import (
    MANIFEST,
    atomic_write_json,
    check_output,
    sha256_file,
    staged_folder,
    weights_sha256,
)
from e2urec.backbones import holds_adapter, is_lora
from e2urec.config import as_dict, build, parse_set_options
from e2urec.errors import E2URecError
from e2urec.quiet import quiet_transformers
from e2urec.runs import CONFIG, MODEL_DIR, check_weights, read_run_manifest


def method_params(name: str, sets: list[str] | None) -> Any:
    """The params dataclass of method `name` built from `--set key=value` items, with every
    value checked against its range (`methods.check_params`)."""
    from e2urec.methods import METHODS, check_params

    params = build(METHODS.get(name).params, parse_set_options(sets), f"method {name!r}")
    check_params(params, f"method {name!r} parameter ")
    return params


def check_base(method: Any, base_run: Path, base: dict[str, Any]) -> None:
    """`base` must be an original run (trained on train, not unlearned) of the method's format."""
    trained_on = base.get("trained_on")
    if base.get("kind") == "unlearned" or trained_on != "train":
        raise E2URecError(
            f"--from {base_run} is not an original run (kind {base.get('kind')!r}, trained on "
            f"{trained_on!r}); unlearning starts from a run trained on the full train split"
        )
    fmt = base.get("format", "single")
    if method.base_format == "ensemble":
        if fmt != "ensemble" or base.get("ensemble") != method.name:
            raise E2URecError(
                f"--from {base_run} is not a {method.name} ensemble (format {fmt!r}); build one "
                f"with `e2urec train-ensemble --method {method.name}`"
            )
    elif method.base_format != "single" and fmt != method.base_format:
        raise E2URecError(
            f"--from {base_run} has format {fmt!r}; method {method.name!r} starts from a "
            f"{method.base_format} original (`e2urec train-ensemble --method {method.name}`)"
        )
    elif method.base_format == "single" and fmt != "single":
        raise E2URecError(
            f"--from {base_run} has format {fmt!r}; method {method.name!r} starts from a "
            "single-model original run (`e2urec train --on train`)"
        )


def check_data(data_dir: Path, base_run: Path, base: dict[str, Any]) -> str:
    """The data manifest's sha256; the data must be the base run's and the forget set non-empty."""
    from e2urec.data.dataset import read_manifest
    from e2urec.data.prepare import split_file

    manifest = read_manifest(data_dir)
    sha = sha256_file(data_dir / MANIFEST)
    if base.get("data_manifest_sha256") != sha:
        raise E2URecError(
            f"--data {data_dir} is not the prepared data run {base_run} was trained on "
            "(data manifest sha256 differs)"
        )
    if not manifest["files"].get(split_file("forget"), {}).get("samples"):
        raise E2URecError(f"the forget set of {data_dir} is empty: nothing to unlearn")
    return sha


def check_streams(ctx: Any, method: Any) -> None:
    """Read the forget split and every split the method trains on (`Method.streams`) before the
    run folder exists; an empty one is one clear error (the manifest's counts may not match the
    files: a split edited by hand)."""
    for split in dict.fromkeys(("forget", *method.streams)):
        if not ctx.rows(split):
            why = "nothing to unlearn" if split == "forget" else f"{method.name} trains on it"
            raise E2URecError(f"the {split} set of {ctx.data_dir} is empty: {why}")


@quiet_transformers()
def unlearn(
    method: str,
    base_run: str | Path,
    data_dir: str | Path,
    out: str | Path,
    sets: list[str] | None = None,
    seed: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Unlearn the forget set of `data_dir` from `base_run` with `method`; returns the manifest."""
    from e2urec.methods import METHODS, UnlearnContext
    from e2urec.train.cost import CostMeter
    from e2urec.train.runner import finish_run, start_run

    spec = METHODS.get(method)
    params = method_params(method, sets)
    base_run, data_dir = Path(base_run).absolute(), Path(data_dir).absolute()
    base = read_run_manifest(base_run)
    check_base(spec, base_run, base)
    check_weights(base_run, base)
    sha = check_data(data_dir, base_run, base)
    seed = int(base.get("seed") or 42) if seed is None else seed
    run_dir = Path(out).absolute()
    ctx = UnlearnContext(base_run, base, data_dir, run_dir, seed, CostMeter(), params)
    check_streams(ctx, spec)
    if hasattr(params, "check_data"):  # a method setting that needs a split the data lacks
        params.check_data(data_dir)
    if spec.check is not None:  # the method's own checks of the run and the data
        spec.check(base_run, base, data_dir, params)
    config = {
        "command": "unlearn",
        "method": method,
        "params": as_dict(params),
        "base_run": str(base_run),
        "data_dir": str(data_dir),
        "seed": seed,
    }
    start_run(run_dir, config, overwrite=overwrite, resume=False, can_resume=False)
    fields = spec.run(ctx)
    manifest = {
        "kind": "unlearned",
        "method": method,
        "params": as_dict(params),
        "base_run": str(base_run),
        "backbone": base.get("backbone"),
        "family": base.get("family"),
        "data_dir": str(data_dir),
        "data_manifest_sha256": sha,
        "trained_on": "train",
        "unlearned": "forget",
        "seed": seed,
        **fields,
    }
    return finish_run(run_dir, manifest)


def describe_methods() -> list[str]:
    """Each method: name, source, description, then its parameters (name = default (type,
    choices, range): help, from their declarations); the trainer options that every method
    built on TrainParams takes are listed once, at the end."""
    from e2urec.config import describe_settings
    from e2urec.methods import METHODS
    from e2urec.train.options import TrainOptions

    shared = option_names()
    lines = []
    for name in METHODS:
        spec = METHODS.get(name)
        lines.append(f"{name} [{spec.source}] {spec.description}")
        params = describe_settings(spec.params, exclude=shared)
        if issubclass(spec.params, TrainOptions):
            params.append("and the trainer options below")
        lines += [f"    {line}" for line in params or [NO_PARAMS]]
    lines.append("trainer options (methods that train; also `e2urec train --help`):")
    return lines + [f"    {line}" for line in describe_settings(TrainOptions)]


NO_PARAMS = "no parameters: the original run's recipe is reused"


def option_names() -> list[str]:
    """The trainer options' names (TrainOptions fields)."""
    import dataclasses

    from e2urec.train.options import TrainOptions

    return [f.name for f in dataclasses.fields(TrainOptions)]


@quiet_transformers()
def export(
    run: str | Path,
    out: str | Path,
    merge: bool,
    overwrite: bool = False,
    keep_adapter: bool = False,
) -> Path:
    """Write `run` as a self-contained single-format run in `out` (see the module docstring);
    `keep_adapter`: a single run stored as an adapter over a named base is copied as it is
    (a deployment's versions share the base)."""
    from e2urec.runs import load_run_model

    run = Path(run).absolute()
    manifest = read_run_manifest(run)
    fmt = manifest.get("format", "single")
    if fmt not in ("adapter", "single"):
        raise E2URecError(f"cannot export a run of format {fmt!r} (only adapter or single runs)")
    adapter = fmt == "adapter" or (holds_adapter(run / MODEL_DIR) and not keep_adapter)
    if adapter and not merge:
        raise E2URecError(f"{run} holds LoRA adapters: pass --merge to fold them into the model")
    check_output(out, overwrite)  # refused before the model is loaded
    if not adapter:
        check_weights(run, manifest)
        recommender = None
    else:
        recommender = load_run_model(run).recommender
        if is_lora(recommender.model):
            recommender.model = recommender.model.merge_and_unload()
        recommender.base = None  # standalone: the merged weights are written whole
    exported = {k: v for k, v in manifest.items() if k not in ("base_run", "weights_sha256")}
    exported.update(format="single", exported_from=str(run))
    with staged_folder(out, overwrite=overwrite) as stage:
        write_single(stage, run / MODEL_DIR if recommender is None else recommender, run, exported)
    return Path(out)


def write_single(stage: Path, model: Any, config_from: Path, manifest: dict) -> dict[str, str]:
    """Fill folder `stage` as a single-format run: `model` (a recommender, saved, or a model
    folder, copied), the config of run `config_from` when it has one, and `manifest` with the
    weights' sha256 (checked on loading); returns those hashes."""
    from e2urec.backbones import save_recommender

    if isinstance(model, Path):
        shutil.copytree(model, stage / MODEL_DIR)
    else:
        save_recommender(model, stage / MODEL_DIR)
    return finish_staged_run(stage, config_from, manifest)


def finish_staged_run(stage: Path, config_from: Path, manifest: dict) -> dict[str, str]:
    """Complete run folder `stage`, whose weights are written: the config of run `config_from`
    when it has one, and `manifest` with the weights' sha256 (checked on loading); returns
    those hashes."""
    if (config_from / CONFIG).is_file():
        shutil.copy2(config_from / CONFIG, stage / CONFIG)
    hashes = weights_sha256(stage)
    atomic_write_json(stage / MANIFEST, {**manifest, "weights_sha256": hashes})
    return hashes
