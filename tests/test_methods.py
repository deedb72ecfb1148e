"""Every registered method on a tiny prepared folder and a tiny original run; bad inputs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from small_world import prepare_small

from e2urec import cli
from e2urec.artifacts import sha256_file
from e2urec.data.dataset import load_split
from e2urec.data.prepare import split_file
from e2urec.methods import METHODS
from e2urec.methods.ensemble import Recipe, train_ensemble
from e2urec.runs import load_run_model
from e2urec.train.recipes import train
from e2urec.unlearn import unlearn


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Prepared data (4 shards, the least active user forgotten: 2 rows) and a tiny original run trained 2 steps."""
    root = tmp_path_factory.mktemp("methods")
    prepare_small(root)
    train(root / "data", "train", "t5-tiny", root / "original", epochs=1, max_steps=2)
    return {"root": root, "data": root / "data", "original": root / "original"}


def original_for(world: dict[str, Path], method: str) -> Path:
    """The --from run a method starts from (ensembles are built once, on first use)."""
    if METHODS.get(method).base_format == "single":
        return world["original"]
    run = world["root"] / f"{method}-original"
    if not run.exists():
        train_ensemble(method, world["data"], run, Recipe(epochs=1, max_steps=1, agg_epochs=20))
    return run


def forget_logits(run: Path, data: Path) -> torch.Tensor:
    model = load_run_model(run)
    rows = load_split(data, "forget").to_dict("records")[:8]
    with torch.no_grad():
        return model.answer_logits(model.recommender.collate(rows))


def quick_sets(method: str) -> list[str]:
    fields = {f.name for f in dataclasses.fields(METHODS.get(method).params)}
    sets = ["max_steps=2"] if "max_steps" in fields else []
    return sets + (["aug_epochs=1"] if method == "e2urec" else [])


@pytest.mark.parametrize("method", METHODS.names())
def test_method_yields_loadable_run_that_differs(world, method):
    base = original_for(world, method)
    out = world["root"] / f"unlearned-{method}"
    manifest = unlearn(method, base, world["data"], out, quick_sets(method))
    assert manifest["complete"] and manifest["method"] == method
    cost = manifest["cost"]
    assert {"wall_s", "phases", "trainable_params", "peak_memory_mb", "optimizer_steps"} <= set(
        cost
    )
    assert cost["optimizer_steps"] > 0
    assert not (out / "checkpoint").exists()
    before, after = forget_logits(base, world["data"]), forget_logits(out, world["data"])
    assert before.shape == after.shape
    assert not torch.allclose(before, after)


def test_e2urec_saves_only_adapters_and_exports_merged(world):
    out = world["root"] / "e2urec-export"
    run = world["root"] / "e2urec-adapters"
    unlearn("e2urec", world["original"], world["data"], run, ["max_steps=2", "aug_epochs=1"])
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert not (run / "model").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["forget_p_yes"]) == {"original", "augmented", "forgetting_teacher"}
    assert all(0.0 < p < 1.0 for p in manifest["forget_p_yes"].values())
    cache = manifest["teacher_cache"]
    # two steps draw 32 retained rows, fewer than the retain set holds: none is cached
    assert cache["forget_rows"] > 0 and not cache["retain_enabled"] and cache["retain_rows"] == 0
    assert cli.main(["export", str(run), "--merge", "--out", str(out)]) == 0
    assert json.loads((out / "manifest.json").read_text())["format"] == "single"
    assert torch.allclose(
        forget_logits(run, world["data"]), forget_logits(out, world["data"]), atol=1e-4
    )


def test_sisa_reuses_unaffected_shards_byte_identical(world):
    base = original_for(world, "sisa")
    members = json.loads((base / "manifest.json").read_text())["members"]
    affected = {m["name"] for m in members if m["forget_samples"]}
    assert affected and len(affected) < len(members)  # the fixture forgets one user
    out = world["root"] / "sisa-reuse"
    manifest = unlearn("sisa", base, world["data"], out)
    assert set(manifest["retrained_shards"]) == affected
    for m in members:
        files = sorted(p.name for p in (base / m["path"]).iterdir())
        same = all(
            sha256_file(base / m["path"] / f) == sha256_file(out / m["path"] / f) for f in files
        )
        assert same == (m["name"] not in affected)
    other_seed = unlearn("sisa", base, world["data"], world["root"] / "sisa-seed7", seed=7)
    assert set(other_seed["retrained_shards"]) == affected


def test_sisa_original_shards_hold_the_forget_samples(world):
    from e2urec.methods.sisa import original_shards

    shards, counts = original_shards(world["data"])
    forget = set(load_split(world["data"], "forget")["id"])
    assert sum(counts) == len(forget)
    assert {r["id"] for s in shards for r in s} == set(load_split(world["data"], "train")["id"])


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err.strip()


def unlearn_args(world, method="neggrad", base=None, data=None, extra=()):
    out = world["root"] / "never-written"
    return [
        "unlearn",
        "--method",
        method,
        "--from",
        str(base or world["original"]),
        "--data",
        str(data or world["data"]),
        "--out",
        str(out),
        *extra,
    ]


def copy_run(world, name: str, **changes) -> Path:
    run = world["root"] / name
    shutil.copytree(world["original"], run)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, **changes}))
    return run


def copy_data(world, name: str, empty_forget: bool = False) -> Path:
    data = world["root"] / name
    shutil.copytree(world["data"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    if empty_forget:
        (data / "forget.jsonl").write_text("")
        manifest["files"]["forget.jsonl"]["samples"] = 0
    manifest["note"] = name
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data


def test_bad_inputs_exit_2_with_one_line(world, capsys):
    not_original = copy_run(world, "retrain-like", trained_on="retain", kind="retrain")
    other_data = copy_data(world, "other-data")
    empty = copy_data(world, "empty-forget", empty_forget=True)
    empty_base = copy_run(
        world, "empty-base", data_manifest_sha256=sha256_file(empty / "manifest.json")
    )
    cases = {
        "unknown method 'nope'": unlearn_args(world, method="nope"),
        "parameter(s): bogus": unlearn_args(world, extra=["--set", "bogus=1"]),
        "expects float": unlearn_args(world, extra=["--set", "lr=fast"]),
        "is not an original run": unlearn_args(world, base=not_original),
        "not a sisa ensemble": unlearn_args(world, method="sisa"),
        "data manifest sha256 differs": unlearn_args(world, data=other_data),
        "forget set": unlearn_args(world, base=empty_base, data=empty),
        "run folder not found": unlearn_args(world, base=world["root"] / "missing"),
    }
    for expected, args in cases.items():
        code, err = run_cli(args, capsys)
        assert code == 2, expected
        assert expected in err and len(err.splitlines()) == 1, err
    assert not (world["root"] / "never-written").exists()


def test_library_calls_leave_transformers_logging_as_the_caller_set_it(world):
    from transformers.utils import logging

    logging.set_verbosity_info()
    logging.enable_progress_bar()
    try:
        out = world["root"] / "quiet-neggrad"
        unlearn("neggrad", world["original"], world["data"], out, ["max_steps=1"])
        assert logging.get_verbosity() == logging.INFO
        assert logging.is_progress_bar_enabled()
    finally:
        logging.set_verbosity_warning()


def emptied(world, split: str) -> Path:
    """A copy of the data with the `split` file emptied by hand and its manifest (so its sha256,
    which the original run records) unchanged: the counts no longer match the file."""
    data = world["root"] / f"emptied-{split}"
    if not data.exists():
        shutil.copytree(world["data"], data)
        (data / split_file(split)).write_text("")
    return data


@pytest.mark.parametrize("method", METHODS.names())
def test_empty_streams_are_refused_before_the_run_folder_exists(world, method, capsys):
    """What the issue met: neggrad on an emptied forget split failed in the training loop after
    the run folder existed (complete: false), which blocked the corrected rerun."""
    base = original_for(world, method)
    for split in dict.fromkeys(("forget", *METHODS.get(method).streams)):
        out = world["root"] / f"refused-{method}-{split}"
        args = ["unlearn", "--method", method, "--from", str(base),
                "--data", str(emptied(world, split)), "--out", str(out)]  # fmt: skip
        code, err = run_cli(args, capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"the {split} set of" in err and "is empty" in err, err
        assert not out.exists()
