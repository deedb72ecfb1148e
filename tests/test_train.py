"""The training loop, losses, run lifecycle and `e2urec train` on tiny models (CPU, seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from e2urec import api, cli
from e2urec.backbones import create_recommender, save_recommender
from e2urec.errors import E2URecError
from e2urec.runs import MODEL_DIR, load_run_model, read_run_manifest
from e2urec.train import losses
from e2urec.train.cost import CostMeter
from e2urec.train.loop import LoopConfig, epoch_groups, fit
from e2urec.train.recipes import SupervisedTask
from e2urec.train.runner import finish_run, start_run

MAX_LENGTH = 128


def _corpus(rows: dict[str, list[dict]]) -> list[str]:
    return [t for split in rows.values() for r in split for t in (r["prompt"], r["target"])]


def _recommender(rows: dict[str, list[dict]], backbone: str = "t5-tiny", seed: int = 0):
    return create_recommender(backbone, _corpus(rows), seed, max_length=MAX_LENGTH)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _records(run: Path, event: str) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


# ---------------------------------------------------------------- losses
def test_answer_ce_ignores_padding_and_soft_ce_is_kl_plus_entropy() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 4, 11), torch.randn(3, 4, 11)
    labels = torch.tensor([[1, 2, -100, -100], [3, 4, 5, -100], [6, -100, -100, -100]])
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(student[keep], labels[keep])
    assert torch.allclose(losses.answer_ce(student, labels), expected)
    p = torch.softmax(teacher, -1)[keep]
    entropy = -(p * p.log()).sum(-1).mean()
    assert torch.allclose(
        losses.soft_ce(teacher, student, labels), losses.kl(teacher, student, labels) + entropy
    )
    # a near one-hot teacher gives the hard-label CE
    sharp = torch.nn.functional.one_hot(labels.clamp(min=0), 11).float() * 100
    assert torch.allclose(losses.soft_ce(sharp, student, labels), expected, atol=1e-4)
    assert losses.kl(student, student, labels).abs() < 1e-6


def test_epoch_groups_cover_the_stream_with_equal_steps_per_process() -> None:
    groups = epoch_groups(10, 3, seed=1, name="train", epoch=0, world=2)
    assert len(groups) == 2 and all(len(g) == 2 for g in groups)  # 4 batches over 2 processes
    seen = sorted(i for g in groups for batch in g for i in batch)
    assert seen == list(range(10))
    assert epoch_groups(10, 3, 1, "train", 0, 2) == groups
    assert epoch_groups(10, 3, 1, "train", 1, 2) != groups


# ---------------------------------------------------------------- loop
@pytest.mark.parametrize("backbone", ["t5-tiny", "causal-tiny"])
def test_loss_falls(rows, tmp_path: Path, backbone: str) -> None:
    rec = _recommender(rows, backbone)
    cfg = LoopConfig(epochs=5, batch_size=16, max_steps=15, seed=0)
    meter = CostMeter()
    result = fit(rec, rec.model, SupervisedTask(rec, rows["train"]), cfg, tmp_path, meter=meter)
    assert result.steps == 15 and result.best_valid is None
    steps = _records(tmp_path, "step")
    assert [r["step"] for r in steps] == list(range(1, 16))
    first = sum(r["loss"] for r in steps[:3]) / 3
    last = sum(r["loss"] for r in steps[-3:]) / 3
    assert last < 0.85 * first
    summary = meter.summary(rec.model)
    assert summary["optimizer_steps"] == 15 and summary["samples"] == result.samples
    assert summary["trainable_pct"] == 100.0 and summary["phases"]["train"] > 0
    assert summary["peak_memory_kind"] == "process_peak_rss"
    assert not (tmp_path / "checkpoint" / "train" / "optimizer.safetensors").exists()


def test_early_stopping_restores_best_weights(rows, tmp_path: Path) -> None:
    rec = _recommender(rows)
    script = iter([3.0, 2.0, 2.5, 2.6, 2.7, 0.5])
    snapshots = []

    def validate(model):
        snapshots.append(_weights(model))
        return next(script)

    cfg = LoopConfig(epochs=6, batch_size=16, patience=3, seed=0)
    task = SupervisedTask(rec, rows["train"][:32])
    result = fit(rec, rec.model, task, cfg, tmp_path, validate=validate)
    assert result.epochs_run == 5 and result.best_epoch == 1 and result.best_valid == 2.0
    assert [h["valid_loss"] for h in result.history] == [3.0, 2.0, 2.5, 2.6, 2.7]
    assert _same(_weights(rec.model), snapshots[1])
    assert not _same(snapshots[1], snapshots[4])


def test_keep_last_skips_validation_and_keeps_the_last_epoch(rows, tmp_path: Path) -> None:
    rec = _recommender(rows)

    def validate(model):
        raise AssertionError("keep='last' must not validate")

    cfg = LoopConfig(epochs=3, batch_size=16, patience=1, seed=0, keep="last")
    result = fit(
        rec, rec.model, SupervisedTask(rec, rows["train"][:32]), cfg, tmp_path, validate=validate
    )
    assert result.epochs_run == 3 and result.best_epoch == 2 and result.best_valid is None
    with pytest.raises(E2URecError, match="keep must be one of best, last, got 'worst'"):
        LoopConfig(keep="worst").check()


def test_same_seed_same_weights(rows, tmp_path: Path) -> None:
    def run(name: str, seed: int):
        rec = _recommender(rows, "causal-tiny", seed=seed)
        cfg = LoopConfig(epochs=1, batch_size=16, seed=seed)
        fit(rec, rec.model, SupervisedTask(rec, rows["train"][:48]), cfg, tmp_path / name)
        return _weights(rec.model)

    assert _same(run("a", 1), run("b", 1))
    assert not _same(run("a2", 1), run("c", 2))


def test_resume_after_interruption_equals_uninterrupted_run(rows, tmp_path: Path) -> None:
    cfg = LoopConfig(epochs=3, batch_size=16, seed=3)

    def run(folder: Path, fail_at: int | None = None, resume: bool = False):
        rec = _recommender(rows, seed=3)
        calls = []

        def validate(model):
            calls.append(1)
            if len(calls) == fail_at:
                raise RuntimeError("injected failure")
            return losses.evaluate_ce(rec, model, rows["valid"][:32], 64)

        task = SupervisedTask(rec, rows["train"][:48])
        result = fit(
            rec, rec.model, task, cfg, folder, validate=validate, resume=resume, checkpoint=True
        )
        return _weights(rec.model), result

    whole, expected = run(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="injected"):
        run(tmp_path / "cut", fail_at=2)
    state = json.loads((tmp_path / "cut" / "checkpoint" / "train" / "state.json").read_text())
    assert state["state"]["epochs_done"] == 1
    resumed, result = run(tmp_path / "cut", resume=True)
    assert _same(whole, resumed)
    assert result == expected
    assert [r["step"] for r in _records(tmp_path / "cut", "step")] == list(
        range(1, expected.steps + 1)
    )
    # a finished phase resumes to its final weights without training again
    again, result2 = run(tmp_path / "cut", resume=True)
    assert _same(whole, again) and result2 == expected


def test_save_load_gives_identical_answer_logits(rows, data_dir: Path, tmp_path: Path) -> None:
    rec = _recommender(rows, "causal-tiny")
    run = start_run(tmp_path / "run", {"x": 1}, overwrite=False, resume=False)
    cfg = LoopConfig(epochs=1, batch_size=16)
    fit(rec, rec.model, SupervisedTask(rec, rows["train"][:48]), cfg, run)
    save_recommender(rec, run / MODEL_DIR)
    manifest = finish_run(run, {"format": "single", "data_dir": str(data_dir), "seed": 42})
    assert manifest["complete"] and manifest["processes"] == 1
    assert len(manifest["data_manifest_sha256"]) == 64 and "torch" in manifest["versions"]
    assert not (run / "checkpoint").exists()
    loaded = load_run_model(run)
    batch = rec.collate(rows["test"][:8])
    rec.model.eval()
    with torch.no_grad():
        assert torch.equal(rec.answer_logits(batch), loaded.answer_logits(batch))


# ---------------------------------------------------------------- CLI and api
def _train_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--max-length",
        str(MAX_LENGTH),
        *extra,
    ]


def test_cli_train_resume_and_refusals(data_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    whole = tmp_path / "whole"
    assert cli.main(_train_args(data_dir, whole, "--on", "sisa-0")) == 0
    manifest = read_run_manifest(whole)
    assert manifest["kind"] == "shard" and manifest["trained_on"] == "sisa-0"
    assert manifest["format"] == "single" and manifest["fit"]["epochs_run"] == 2
    assert manifest["data_dir"] == str(data_dir.absolute())
    assert "shard" in capsys.readouterr().out

    # interrupt after the first epoch's checkpoint: the second validation raises
    real, calls = losses.evaluate_ce, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    cut = tmp_path / "cut"
    monkeypatch.setattr(losses, "evaluate_ce", flaky)
    assert cli.main(_train_args(data_dir, cut, "--on", "sisa-0")) == 130
    monkeypatch.setattr(losses, "evaluate_ce", real)
    assert not json.loads((cut / "manifest.json").read_text())["complete"]
    capsys.readouterr()
    assert cli.main(_train_args(data_dir, cut, "--on", "sisa-0")) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(_train_args(data_dir, cut, "--on", "sisa-0", "--epochs", "3", "--resume")) == 2
    assert "different configuration" in capsys.readouterr().err
    assert cli.main(_train_args(data_dir, cut, "--on", "sisa-0", "--resume")) == 0
    a = load_file(whole / MODEL_DIR / "model.safetensors")
    b = load_file(cut / MODEL_DIR / "model.safetensors")
    assert _same(a, b)
    assert read_run_manifest(cut)["fit"] == manifest["fit"]

    capsys.readouterr()
    assert cli.main(_train_args(data_dir, whole, "--on", "sisa-0")) == 2
    err = capsys.readouterr().err
    assert "complete run already exists" in err and len(err.strip().splitlines()) == 1
    retrain = ["--on", "retain", "--max-steps", "2", "--overwrite"]
    assert cli.main(_train_args(data_dir, whole, *retrain)) == 0
    assert read_run_manifest(whole)["kind"] == "retrain"


def test_lora_training_saves_a_merged_single_model(data_dir: Path, rows, tmp_path: Path) -> None:
    manifest = api.train(
        data_dir,
        "train",
        "causal-tiny",
        tmp_path / "lora",
        finetune="lora",
        epochs=1,
        max_steps=3,
        batch_size=32,
        max_length=MAX_LENGTH,
    )
    assert 0 < manifest["cost"]["trainable_pct"] < 100
    assert manifest["finetune"] == "lora" and manifest["format"] == "single"
    weights = load_file(tmp_path / "lora" / MODEL_DIR / "model.safetensors")
    assert not any("lora" in key for key in weights)
    model = load_run_model(tmp_path / "lora")
    logits = model.answer_logits(model.recommender.collate(rows["test"][:4]))
    assert logits.shape[0] == 4 and torch.isfinite(logits).all()


def test_keep_last_needs_no_valid_split(data_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "valid.jsonl").write_text("", encoding="utf-8")
    options = dict(epochs=1, max_steps=2, batch_size=32, max_length=MAX_LENGTH)
    with pytest.raises(E2URecError, match="split 'valid' .* is empty; early stopping needs it"):
        api.train(data, "train", "t5-tiny", tmp_path / "best", **options)
    manifest = api.train(data, "train", "t5-tiny", tmp_path / "last", keep="last", **options)
    assert manifest["validation"] == "none (keep=last: the last epoch kept)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--data": "missing"}, "data folder not found"),
        ({"--on": "nope"}, "unknown split 'nope'"),
        ({"--backbone": "nope"}, "unknown backbone 'nope'"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(
    data_dir: Path, tmp_path: Path, capsys, change: dict[str, str], message: str
) -> None:
    args = _train_args(data_dir, tmp_path / "run")
    for flag, value in change.items():
        if flag in args:
            args[args.index(flag) + 1] = str(tmp_path / value) if flag == "--data" else value
        else:
            args += [flag, value]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    if flag == "--on":
        assert "valid: train, valid, test, retain, forget" in err
    assert not (tmp_path / "run").exists()
