"""APA: balanced K-means partition, per-row adapter mixture in one pass, exact unlearning."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from small_world import prepare_small

from e2urec import cli
from e2urec.artifacts import sha256_file
from e2urec.backbones import BACKBONES, load_recommender
from e2urec.data.dataset import load_split
from e2urec.errors import E2URecError
from e2urec.methods.apa import (
    APARecipe,
    balanced_assign,
    balanced_kmeans,
    retained_shards,
    train_adapter,
)
from e2urec.mixture import ASSIGNMENT, BASE_DIR, PARTITION, VALIDATION, load_adapters
from e2urec.runs import load_run_model
from e2urec.train.cost import CostMeter
from e2urec.unlearn import unlearn

RECIPE = {"epochs": 1, "max_steps": 2, "neighbours": 5, "max_length": 128}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Prepared data (4 shards, the least active user forgotten) and an APA original run."""
    from e2urec.methods.apa import train_apa

    root = tmp_path_factory.mktemp("apa")
    prepare_small(root)
    train_apa(root / "data", root / "apa", APARecipe(**RECIPE))
    return {"root": root, "data": root / "data", "apa": root / "apa"}


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_balanced_assign_respects_capacity_and_distance():
    reps = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0.8, 0.2], [0, 1]]))
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # the three rows near centre 0 compete for 2 places: the farthest of them goes to centre 1
    assert balanced_assign(reps, centres, 2).tolist() == [0, 0, 1, 1]
    gen = torch.Generator().manual_seed(0)
    many = torch.nn.functional.normalize(torch.randn(103, 8, generator=gen), dim=-1)
    first, centres = balanced_kmeans(many, 4, seed=3, iters=10)
    again, _ = balanced_kmeans(many, 4, seed=3, iters=10)
    assert (first == again).all() and centres.shape == (4, 8)
    assert np.bincount(first, minlength=4).max() <= math.ceil(103 / 4)


def test_partition_is_balanced_and_saved(world):
    m = manifest(world["apa"])
    assert m["format"] == "apa" and m["kind"] == "original"
    train = load_split(world["data"], "train")
    partition = json.loads((world["apa"] / ASSIGNMENT).read_text())
    assert partition["ids"] == list(train["id"])
    sizes = np.bincount(partition["shards"], minlength=4)
    assert sizes.max() <= math.ceil(len(train) / 4) and sizes.min() > 0
    assert load_file(world["apa"] / PARTITION)["centres"].shape[0] == 4
    forget = set(load_split(world["data"], "forget")["id"])
    counts = [
        sum(
            i in forget
            for i, s in zip(partition["ids"], partition["shards"], strict=True)
            if s == k
        )
        for k in range(4)
    ]
    assert [a["forget_samples"] for a in m["adapters"]] == counts
    valid = load_file(world["apa"] / VALIDATION)
    assert valid["log_loss"].shape == (4, len(load_split(world["data"], "valid")))


def _peft_logits(run: Path, adapter: dict, batch: dict) -> torch.Tensor:
    from peft import PeftModel

    rec = load_recommender(run / BASE_DIR)
    rec.model = PeftModel.from_pretrained(rec.model, run / adapter["path"]).eval()
    with torch.no_grad():
        return rec.answer_logits(batch)


def test_mixture_is_one_pass_of_the_weighted_adapters(world):
    run = world["apa"]
    adapters = manifest(run)["adapters"]
    model = load_run_model(run)
    rows = load_split(world["data"], "test").to_dict("records")[:6]
    batch = model.recommender.collate(rows)
    # one-hot weights: exactly the PEFT model with that adapter
    for k in (0, 3):
        omega = torch.nn.functional.one_hot(torch.full((6,), k), 4).float()
        assert torch.allclose(
            model.mixed_logits(batch, omega), _peft_logits(run, adapters[k], batch), atol=1e-5
        )
    # mixed weights: the base with W + Σ ω_k ΔW_k merged (from PEFT's own delta weights)
    from peft import PeftModel

    omega = torch.tensor([0.1, 0.2, 0.3, 0.4])
    rec = load_recommender(run / BASE_DIR)
    peft_model = PeftModel.from_pretrained(rec.model, run / adapters[0]["path"], "shard-0")
    for a in adapters[1:]:
        peft_model.load_adapter(run / a["path"], adapter_name=a["name"])
    rec2 = load_recommender(run / BASE_DIR)
    for name, module in peft_model.named_modules():
        if hasattr(module, "get_delta_weight") and "shard-0" in getattr(module, "lora_A", {}):
            delta = sum(
                w * module.get_delta_weight(a["name"]) for w, a in zip(omega, adapters, strict=True)
            )
            rec2.model.get_submodule(name.removeprefix("base_model.model.")).weight.data += delta
    with torch.no_grad():
        reference = rec2.answer_logits(batch)
    mixed = model.mixed_logits(batch, omega.expand(6, 4))
    assert torch.allclose(mixed, reference, atol=1e-5)


def test_scoring_runs_the_model_once_per_batch(world):
    model = load_run_model(world["apa"])
    calls = []
    model.model.register_forward_hook(lambda *args: calls.append(1))
    rows = load_split(world["data"], "test").to_dict("records")[:6]
    batch = model.recommender.collate(rows)
    with torch.no_grad():
        logits = model.answer_logits(batch)
    assert logits.shape[0] == 6 and len(calls) == 1  # the representation uses the encoder only
    weights = model.row_weights(torch.nn.functional.normalize(torch.randn(6, 64), dim=-1))
    assert torch.allclose(weights.sum(dim=1), torch.ones(6))


def test_tau_zero_mixes_uniformly_without_the_representation_pass(world, monkeypatch):
    import e2urec.mixture as mixture

    model = load_run_model(world["apa"])
    rows = load_split(world["data"], "test").to_dict("records")[:6]
    batch = model.recommender.collate(rows)
    with torch.no_grad():
        reps = mixture.represent(model.recommender, model.model, batch)
        model.tau = 0.0
        by_representation = model.mixed_logits(batch, model.row_weights(reps))
        monkeypatch.setattr(mixture, "represent", lambda *a: pytest.fail("representation"))
        assert torch.equal(model.answer_logits(batch), by_representation)
        model.tau = 1000.0
        with pytest.raises(pytest.fail.Exception):
            model.answer_logits(batch)  # a weighted mixture needs the rows' representations


@pytest.mark.parametrize("backbone", ["t5-tiny", "causal-tiny"])
def test_a_truncated_representation_is_the_first_blocks_output(world, backbone):
    from e2urec.backbones import create_recommender
    from e2urec.mixture import trunk_hidden

    rows = load_split(world["data"], "test").to_dict("records")[:3]
    rec = create_recommender(backbone, [r["prompt"] + " " + r["target"] for r in rows], seed=0)
    batch = rec.collate(rows)
    model = rec.model.eval()
    trunk = model.get_encoder() if rec.kind == "seq2seq" else model.base_model
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    calls = []
    last = trunk.block[-1] if rec.kind == "seq2seq" else trunk.layers[-1]
    last.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        every = trunk(**inputs, output_hidden_states=True).hidden_states
        assert len(calls) == 1
        first = trunk_hidden(trunk, 1, **inputs)
        assert len(calls) == 1  # the blocks after the first never ran
        assert torch.allclose(first, every[1], atol=1e-6)
        assert torch.equal(trunk_hidden(trunk, 99, **inputs), trunk(**inputs).last_hidden_state)
        embedded = trunk.get_input_embeddings()(inputs["input_ids"])
        ran = len(calls)
        assert torch.equal(trunk_hidden(trunk, 0, **inputs), embedded)
        assert len(calls) == ran  # no block ran


def test_represent_layers_shapes_the_partition_and_the_weights(world, tmp_path):
    import e2urec.mixture as mixture
    from e2urec.methods.apa import train_apa

    run = tmp_path / "shallow"
    m = train_apa(world["data"], run, APARecipe(**{**RECIPE, "max_steps": 1}, represent_layers=1))
    assert m["aggregation"]["represent_layers"] == 1
    model = load_run_model(run)
    assert model.represent_layers == 1
    valid = load_split(world["data"], "valid").to_dict("records")
    with torch.no_grad():
        reps = mixture.represent(
            model.recommender, model.model, model.recommender.collate(valid), 1
        )
    assert torch.allclose(load_file(run / VALIDATION)["representation"], reps, atol=1e-5)
    rows = load_split(world["data"], "test").to_dict("records")[:4]
    batch = model.recommender.collate(rows)
    with torch.no_grad():
        shallow = mixture.represent(model.recommender, model.model, batch, 1)
        expected = model.mixed_logits(batch, model.row_weights(shallow))
        assert torch.equal(model.answer_logits(batch), expected)
    unlearned = unlearn("apa", run, world["data"], tmp_path / "unlearned")
    assert unlearned["aggregation"]["represent_layers"] == 1
    assert unlearned["recipe"]["represent_layers"] == 1


def test_unlearning_retrains_only_touched_adapters_exactly(world, tmp_path):
    base = world["apa"]
    original = manifest(base)
    out = tmp_path / "unlearned"
    m = unlearn("apa", base, world["data"], out)
    touched = {a["name"] for a in original["adapters"] if a["forget_samples"]}
    assert touched and len(touched) < 4
    assert set(m["retrained_shards"]) == touched
    # the partition is never recomputed: same centres, every retained row in its shard
    assert sha256_file(out / PARTITION) == sha256_file(base / PARTITION)
    before = json.loads((base / ASSIGNMENT).read_text())
    after = json.loads((out / ASSIGNMENT).read_text())
    forgotten = set(load_split(world["data"], "forget")["id"])
    kept = {
        i: s for i, s in zip(before["ids"], before["shards"], strict=True) if i not in forgotten
    }
    assert dict(zip(after["ids"], after["shards"], strict=True)) == kept
    old_errors = load_file(base / VALIDATION)["log_loss"]
    new_errors = load_file(out / VALIDATION)["log_loss"]
    for k, adapter in enumerate(m["adapters"]):
        same = adapter["sha256"] == original["adapters"][k]["sha256"]
        assert same == (adapter["name"] not in touched)
        assert torch.equal(old_errors[k], new_errors[k]) == same
    # exactness: the retrained adapter is byte-identical to one trained from scratch on the
    # shard without the forgotten rows (no row moved to another shard)
    train = load_split(world["data"], "train").to_dict("records")
    forget = set(load_split(world["data"], "forget")["id"])
    shards, lost = retained_shards(base, train, forget)
    assert [len(s) + lost[k] for k, s in enumerate(shards)] == original["partition"]["sizes"]
    k = int(sorted(touched)[0].split("-")[1])
    recipe = APARecipe(**original["recipe"])
    valid = load_split(world["data"], "valid").to_dict("records")
    scratch = tmp_path / "scratch"
    rec = load_recommender(base / BASE_DIR)
    train_adapter(rec, shards[k], valid, recipe, k, scratch, tmp_path, CostMeter())
    name = "adapter_model.safetensors"
    assert sha256_file(scratch / name) == sha256_file(out / "adapters" / f"shard-{k}" / name)
    assert m["cost"]["optimizer_steps"] > 0


def test_modules_trained_whole_are_mixed_too(world, tmp_path):
    from e2urec.methods.apa import train_apa

    run = tmp_path / "whole"
    recipe = APARecipe(**{**RECIPE, "max_steps": 1}, whole="decoder.final_layer_norm")
    m = train_apa(world["data"], run, recipe)
    assert m["partition"]["whole"] == ["decoder.final_layer_norm"]
    _, _, whole = load_adapters(run, m["adapters"])
    assert list(whole) == ["decoder.final_layer_norm"]
    model = load_run_model(run)
    batch = model.recommender.collate(load_split(world["data"], "test").to_dict("records")[:4])
    omega = torch.nn.functional.one_hot(torch.full((4,), 2), 4).float()
    expected = _peft_logits(run, m["adapters"][2], batch)
    assert torch.allclose(model.mixed_logits(batch, omega), expected, atol=1e-5)


def test_train_rows_that_differ_from_the_partition_are_refused(world):
    train = load_split(world["data"], "train").to_dict("records")
    with pytest.raises(E2URecError, match="differ from the"):
        retained_shards(world["apa"], train[1:], set())
    # the same rows in another order are the same partition
    assert retained_shards(world["apa"], train[::-1], set()) == retained_shards(
        world["apa"], train, set()
    )
    changed = [dict(r) for r in train]
    changed[0]["prompt"] += " (edited)"
    with pytest.raises(E2URecError, match="differ from the"):
        retained_shards(world["apa"], changed, set())


def _refused(argv: list[str], out: Path, capsys) -> str:
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("e2urec: error:"), err
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shards", "1"], "at least 2 shards"),
        (["--shards", "100000"], "train rows"),
        (["--tau", "-1"], "tau"),
        (["--neighbours", "100000"], "valid rows"),
        (["--neighbours", "0"], "neighbours"),
        (["--represent-layers", "-1"], "represent_layers"),
        (["--represent-layers", "99"], "trunk has"),
    ],
)
def test_bad_apa_settings(world, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["train-ensemble", "--method", "apa", "--data", str(world["data"]), "--out", str(out)]
    assert message in _refused([*argv, "--max-steps", "1", *extra], out, capsys)


def test_backbone_without_lora_targets(world, tmp_path, capsys, monkeypatch):
    family = dataclasses.replace(BACKBONES.get("t5-tiny"), lora_targets=("nowhere",))
    monkeypatch.setitem(BACKBONES._items, "t5-tiny", family)
    out = tmp_path / "out"
    argv = ["train-ensemble", "--method", "apa", "--data", str(world["data"]), "--out", str(out)]
    assert "LoRA target" in _refused(argv, out, capsys)


def test_unlearn_bad_input(world, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    base = ["unlearn", "--method", "apa", "--from", str(world["apa"]), "--out", str(out)]
    assert "tau" in _refused([*base, "--data", str(world["data"]), "--set", "tau=-2"], out, capsys)
    line = _refused([*base, "--data", str(world["data"]), "--set", "neighbours=99999"], out, capsys)
    assert "valid rows" in line
    other = tmp_path / "other-data"
    shutil.copytree(world["data"], other)
    (other / "train.jsonl").write_text(
        "".join((other / "train.jsonl").read_text().splitlines(True)[1:])
    )
    _refused([*base, "--data", str(other)], out, capsys)
    # the other ensembles' originals are not APA runs, and APA runs are not theirs
    assert "apa" in _refused(
        [
            "unlearn",
            "--method",
            "sisa",
            "--from",
            str(world["apa"]),
            "--data",
            str(world["data"]),
            "--out",
            str(out),
        ],
        out,
        capsys,
    )


def test_bench_runs_apa_only_on_a_pretrained_backbone(tmp_path):
    from e2urec import presets
    from e2urec.bench import Bench

    tiny = Bench(presets.resolve("demo"), tmp_path / "a", None)
    assert "apa" not in tiny.methods and "sisa" in tiny.methods
    minilm = Bench(presets.resolve("cpu-ml100k-minilm"), tmp_path / "b", None)
    assert "apa" in minilm.methods
    paper = Bench(presets.resolve("paper-ml1m-t5base"), tmp_path / "c", None)
    assert "apa" in paper.methods
    steps = [s.name for s in minilm.plan()]
    assert "train apa original ensemble" in steps and "unlearn apa (seed 0)" in steps


def test_causal_mixture_runs_the_head_at_the_answer_only(world, tmp_path):
    from e2urec.methods.apa import train_apa

    run = tmp_path / "causal"
    recipe = APARecipe(**{**RECIPE, "max_steps": 1}, backbone="causal-tiny", shards=2)
    train_apa(world["data"], run, recipe)
    model = load_run_model(run)
    batch = model.recommender.collate(load_split(world["data"], "test").to_dict("records")[:5])
    omega = torch.softmax(torch.randn(5, 2), dim=-1)
    fast, full = model.mixed_logits(batch, omega), model.mixed_logits(batch, omega, full=True)
    assert fast.shape == full.shape and torch.allclose(fast, full, atol=1e-5)


def test_validation_is_reused_and_only_new_rows_are_scored(world, tmp_path):
    from e2urec.methods import UnlearnContext
    from e2urec.methods.apa import APAParams, refresh_validation, unlearn_apa

    base = manifest(world["apa"])
    valid = load_split(world["data"], "valid").to_dict("records")
    changed = [dict(r) for r in valid[1:]]  # a deleted user's row is gone
    changed[0]["prompt"] += " (edited)"  # and one row is new
    run = tmp_path / "run"
    run.mkdir()
    ctx = UnlearnContext(
        world["apa"], base, world["data"], run, base["seed"], CostMeter(), APAParams()
    )
    ctx._rows["valid"] = changed
    fields = unlearn_apa(ctx)
    retrained = fields["retrained_shards"]
    assert fields["validation"]["rows"] == len(changed) and fields["validation"]["new_rows"] == 1
    assert fields["validation"]["scored"] == retrained and 0 < len(retrained) < 4
    old, new = load_file(world["apa"] / VALIDATION), load_file(run / VALIDATION)
    assert new["log_loss"].shape == (4, len(changed))
    # the kept rows' representations and the reused adapters' errors on them are the original's
    assert torch.equal(new["representation"][1:], old["representation"][2:])
    for k, adapter in enumerate(fields["adapters"]):
        if adapter["name"] not in retrained:
            assert torch.equal(new["log_loss"][k, 1:], old["log_loss"][k, 2:])
    # and every value is what scoring every adapter on every row from scratch gives
    scratch, fresh = refresh_validation(
        run, fields["adapters"], load_recommender(run / BASE_DIR), list(range(4)), changed,
        None, 64,
    )  # fmt: skip
    assert fresh == len(changed)
    assert torch.allclose(scratch["representation"], new["representation"], atol=1e-5)
    assert torch.allclose(scratch["log_loss"], new["log_loss"], atol=1e-4)


def test_bench_trains_apa_with_its_recipe_settings(tmp_path):
    from e2urec import presets
    from e2urec.bench import Bench

    sets = [
        "method_params.apa.lr=0.001",
        "method_params.apa.whole=none",
        "method_params.apa.tau=10",
    ]
    bench = Bench(presets.resolve("cpu-ml100k-minilm", overrides=sets), tmp_path / "a", None)
    bench.check()
    steps = {s.name: s.key for s in bench.plan()}
    trained = steps["train apa original ensemble"]
    assert (trained["lr"], trained["whole"], trained["tau"]) == (0.001, "none", 10)
    assert steps["unlearn apa (seed 0)"]["params"] == {"tau": 10}  # the recipe trains the original
    typo = presets.resolve("cpu-ml100k-minilm", overrides=["method_params.apa.lrr=0.001"])
    with pytest.raises(E2URecError, match="unknown setting"):
        Bench(typo, tmp_path / "b", None).check()


def test_a_run_without_row_digests_is_matched_by_its_rows_sha256(world):
    from e2urec.methods.apa import refresh_validation

    m = manifest(world["apa"])
    saved = load_file(world["apa"] / VALIDATION)
    older = {k: saved[k] for k in ("representation", "log_loss")}  # written before digests
    valid = load_split(world["data"], "valid").to_dict("records")
    base = load_recommender(world["apa"] / BASE_DIR)
    args = (world["apa"], m["adapters"], base, [0], valid, older, 64)
    tensors, fresh = refresh_validation(*args, m["validation"]["sha256"])
    assert fresh == 0 and torch.equal(tensors["log_loss"][1:], saved["log_loss"][1:])
    assert torch.equal(tensors["representation"], saved["representation"])
    assert refresh_validation(*args, "another sha256")[1] == len(valid)
