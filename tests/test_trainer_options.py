"""The trainer's options (precision, accumulation, clipping, schedule, weight decay): defaults
that leave the weights bit for bit as before, the same update as an N× batch, options that act,
manifests that record them, and bad input refused before anything is written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from e2urec import cli
from e2urec.backbones import create_recommender
from e2urec.train import losses
from e2urec.train.loop import LoopConfig, fit
from e2urec.train.recipes import SupervisedTask

# sum, |sum| and squared sum of every t5-tiny weight after `_golden_run`, measured with the
# trainer before these options existed (commit 8f865a8): the defaults must reproduce them
GOLDEN_T5 = (651.4535361515209, 55011.98942854637, 53704.83231880254)


def _recommender(rows, backbone: str = "t5-tiny"):
    corpus = [t for split in rows.values() for r in split for t in (r["prompt"], r["target"])]
    return create_recommender(backbone, corpus, 0, max_length=128)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def _golden_run(rows, folder: Path, **options) -> torch.Tensor:
    rec = _recommender(rows)
    cfg = LoopConfig(epochs=2, batch_size=16, max_steps=5, seed=7, **options)
    fit(
        rec,
        rec.model,
        SupervisedTask(rec, rows["train"][:48]),
        cfg,
        folder,
        validate=lambda m: losses.evaluate_ce(rec, m, rows["valid"][:32], 64),
    )
    return _flat(rec.model)


def test_defaults_reproduce_the_weights_of_the_trainer_before_the_options(rows, tmp_path):
    weights = _golden_run(rows, tmp_path / "a")
    got = (float(weights.sum()), float(weights.abs().sum()), float((weights * weights).sum()))
    assert got == pytest.approx(GOLDEN_T5, rel=1e-9)
    neutral = _golden_run(
        rows, tmp_path / "b", precision="fp32", grad_accum=1, max_grad_norm=None,
        scheduler="constant", warmup_ratio=0.0, weight_decay=0.0,
    )  # fmt: skip
    assert torch.equal(weights, neutral)


@pytest.mark.parametrize(
    "option",
    [
        {"weight_decay": 0.1},
        {"max_grad_norm": 0.01},
        {"scheduler": "linear"},
        {"scheduler": "cosine"},
        {"warmup_ratio": 0.5},
        {"precision": "bf16"},
    ],
)
def test_every_option_changes_the_update(rows, tmp_path, option):
    base = _golden_run(rows, tmp_path / "a")
    other = _golden_run(rows, tmp_path / "b", **option)
    assert not torch.equal(base, other)
    assert torch.isfinite(other).all()


def test_grad_accum_equals_a_larger_batch_after_one_step(rows, tmp_path):
    def one_step(batch_size: int, grad_accum: int) -> torch.Tensor:
        rec = _recommender(rows, "causal-tiny")  # no dropout: the two runs see the same model
        cfg = LoopConfig(
            epochs=1, batch_size=batch_size, grad_accum=grad_accum, max_steps=1, seed=5, keep="last"
        )
        result = fit(rec, rec.model, SupervisedTask(rec, rows["train"][:64]), cfg, tmp_path)
        assert result.steps == 1 and result.samples == batch_size * grad_accum
        return _flat(rec.model)

    start = _flat(_recommender(rows, "causal-tiny").model)
    big, accumulated = one_step(16, 1), one_step(4, 4)
    assert (big - start).abs().max() > 1e-4  # the step moved the weights
    assert (big - accumulated).abs().max() < 1e-5
    assert (big - one_step(4, 1)).abs().max() > 1e-4  # a 4-row step is a different update


def test_schedule_and_clipping_are_logged(rows, tmp_path):
    rec = _recommender(rows)
    cfg = LoopConfig(
        epochs=1, batch_size=8, max_steps=4, keep="last", scheduler="linear", warmup_ratio=0.5,
        max_grad_norm=1.0, lr=1e-3,
    )  # fmt: skip
    fit(rec, rec.model, SupervisedTask(rec, rows["train"][:64]), cfg, tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["event"] == "step"]
    # warm-up over 2 of 4 steps, then linear decay to 0: 0, 0.5, 1, 0.5 (× lr)
    assert [round(r["lr"] / 1e-3, 6) for r in steps] == [0.0, 0.5, 1.0, 0.5]
    assert all(r["grad_norm"] > 0 for r in steps)


def _train_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data_dir), "--backbone", "t5-tiny", "--out", str(out),
        "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--max-length", "128", *extra,
    ]  # fmt: skip


def test_cli_options_are_recorded_in_config_and_manifest(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["--precision", "bf16", "--grad-accum", "2", "--max-grad-norm", "1"]
    extra += ["--scheduler", "cosine", "--warmup-ratio", "0.1", "--weight-decay", "0.01"]
    assert cli.main(_train_args(data_dir, out, *extra)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    loop = manifest["loop"]
    assert (loop["precision"], loop["grad_accum"], loop["max_grad_norm"]) == ("bf16", 2, 1.0)
    assert (loop["scheduler"], loop["warmup_ratio"], loop["weight_decay"]) == ("cosine", 0.1, 0.01)
    assert manifest["fit"]["steps"] == 2 and manifest["fit"]["samples"] == 32
    cost = manifest["cost"]
    excluded = sum(cost["excluded_s"].values())
    assert cost["compute_s"] == pytest.approx(cost["wall_s"] - excluded, abs=0.01)
    assert "checkpoint" in cost["excluded_s"] and "compute_s" in cost["time_note"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--grad-accum", "0"], "grad_accum must be an integer of at least 1"),
        (["--max-grad-norm", "-1"], "max_grad_norm must be positive"),
        (["--weight-decay", "-0.1"], "weight_decay must be at least 0"),
        (["--scheduler", "step"], "argument --scheduler: invalid choice: 'step'"),
        (["--warmup-ratio", "1"], "warmup_ratio must be in [0, 1)"),
        (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
        (["--precision", "fp16"], "precision fp16 needs a CUDA GPU"),
    ],
)
def test_bad_trainer_options_exit_2_with_one_line(data_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert cli.main(_train_args(data_dir, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("e2urec: error:") and message in err[0]
    assert not out.exists()


def test_bf16_on_a_gpu_without_it_is_refused(data_dir, tmp_path, capsys, monkeypatch):
    from e2urec.train import options

    monkeypatch.setattr(options, "device_type", lambda: "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    out = tmp_path / "run"
    assert cli.main(_train_args(data_dir, out, "--precision", "bf16")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bf16 is not supported by this GPU" in err[0]
    assert not out.exists()


def test_methods_take_the_options_through_set(tmp_path):
    from e2urec.methods import METHODS, TrainParams
    from e2urec.unlearn import method_params

    trained = [m for m in METHODS.names() if issubclass(METHODS.get(m).params, TrainParams)]
    assert {"neggrad", "npo", "e2urec"} <= set(trained)
    params = method_params("npo", ["precision=bf16", "grad_accum=2", "scheduler=cosine"])
    cfg = params.loop_config(0)
    assert (cfg.precision, cfg.grad_accum, cfg.scheduler) == ("bf16", 2, "cosine")
    assert dataclasses.asdict(params)["grad_accum"] == 2


def test_only_resumable_fits_write_checkpoints(rows, tmp_path):
    from e2urec.train.cost import CostMeter

    rec = _recommender(rows)
    meter = CostMeter()
    cfg = LoopConfig(epochs=2, batch_size=16, max_steps=4, keep="last")
    task = SupervisedTask(rec, rows["train"][:48])
    fit(rec, rec.model, task, cfg, tmp_path / "method", meter=meter, desc="unlearn")
    assert not (tmp_path / "method" / "checkpoint").exists()  # an unlearning phase never resumes
    assert meter.summary()["excluded_s"] == {}
    fit(rec, rec.model, task, cfg, tmp_path / "train", meter=meter, checkpoint=True)
    state = json.loads((tmp_path / "train" / "checkpoint" / "train" / "state.json").read_text())
    assert state["complete"] and state["result"]["steps"] == 4
    summary = meter.summary()
    assert summary["excluded_s"]["checkpoint"] > 0
    assert summary["compute_s"] < summary["wall_s"]
