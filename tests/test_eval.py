"""`e2urec eval`: utility and distances on tiny runs, predictions, merging, and bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from e2urec import api, cli
from e2urec.artifacts import MANIFEST, atomic_write_json, sha256_file
from e2urec.backbones import create_recommender, load_recommender, save_recommender
from e2urec.data.prepare import FORMAT, split_file
from e2urec.eval.evaluate import evaluate as evaluate_run
from e2urec.eval.predict import AnswerLogitCache
from e2urec.runs import SingleModel

SPLITS = {"train": 24, "valid": 8, "test": 14, "retain": 16, "forget": 8}
TITLES = [f"Movie {name}" for name in ("Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot")]


def _rows(name: str, count: int, rng: np.random.Generator, start: int) -> list[dict]:
    rows = []
    for k in range(count):
        history = ", ".join(f"{TITLES[j % 6]} ({j % 5 + 1} stars)" for j in range(k % 7 + 1))
        label = int(k % 2 == 0) if k < 2 else int(rng.integers(0, 2))
        rows.append(
            {
                "id": start + k,
                "user_id": 1 + (k % 5) + (10 if name == "forget" else 0),
                "item_id": int(rng.integers(1, 7)),
                "timestamp": 1000 + start + k,
                "rating": 4.0 if label else 2.0,
                "label": label,
                "prompt": f"The user watched: {history}. Will the user like the movie "
                f"***{TITLES[k % 6]}***? You should ONLY tell me yes or no.",
                "target": "Yes." if label else "No.",
            }
        )
    return rows


def write_data(folder: Path, splits: dict[str, list[dict]], tag: str = "") -> str:
    """A prepared folder in the documented format; returns the sha256 of its manifest."""
    folder.mkdir(parents=True)
    files = {}
    for name, rows in splits.items():
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (folder / split_file(name)).write_text(text, encoding="utf-8")
        files[split_file(name)] = {"samples": len(rows)}
    manifest = {"format": FORMAT, "splits": list(splits), "files": files, "tag": tag}
    atomic_write_json(folder / MANIFEST, manifest)
    return sha256_file(folder / MANIFEST)


def make_splits(seed: int = 0) -> dict[str, list[dict]]:
    rng = np.random.default_rng(seed)
    out, start = {}, 0
    for name, count in SPLITS.items():
        out[name] = _rows(name, count, rng, start)
        start += count
    return out


def write_run(folder: Path, corpus: list[str], seed: int, data_sha: str | None) -> Path:
    """A complete single-model run in the documented run-folder format."""
    recommender = create_recommender("t5-tiny", corpus, seed)
    save_recommender(recommender, folder / "model")
    manifest = {"format": "single", "backbone": "t5-tiny", "seed": seed, "complete": True}
    if data_sha is not None:
        manifest["data_manifest_sha256"] = data_sha
    atomic_write_json(folder / MANIFEST, manifest)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    splits = make_splits()
    corpus = [r["prompt"] for rows in splits.values() for r in rows]
    data_sha = write_data(root / "data", splits)
    return {
        "root": root,
        "data": root / "data",
        "run0": write_run(root / "run0", corpus, 0, data_sha),
        "run1": write_run(root / "run1", corpus, 1, data_sha),
        "test_file": root / "data" / "test.jsonl",
    }


@pytest.fixture
def runs(world: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Fresh copies of the two runs (evaluation writes into the run folder)."""
    return {name: shutil.copytree(world[name], tmp_path / name) for name in ("run0", "run1")}


def _evaluate(run: Path, data: Path, **kwargs) -> dict:
    return api.evaluate(run, data, progress=False, **kwargs)


def test_against_itself_distances_are_zero(world, runs):
    result = _evaluate(runs["run0"], world["data"], reference=runs["run0"])
    assert set(result) == {"run", "data", "created", "splits"}
    assert set(result["splits"]) == {"test", "forget"}
    for entry in result["splits"].values():
        assert {"n", "positive_rate", "auc", "acc", "logloss", "distance"} <= set(entry)
        distance = entry["distance"]
        assert distance["reference"] == str(runs["run0"].resolve())
        for scope in ("vocab", "yes_no"):
            assert set(distance[scope]) == {"paper_jsd", "jsd", "l2"}
            for value in distance[scope].values():
                assert value == pytest.approx(0.0, abs=1e-9)
    on_disk = json.loads((runs["run0"] / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(result))


def test_different_seeds_give_positive_distances(world, runs):
    result = _evaluate(runs["run1"], world["data"], reference=runs["run0"], splits="forget")
    distance = result["splits"]["forget"]["distance"]
    for scope in ("vocab", "yes_no"):
        assert all(value > 0 for value in distance[scope].values())
        assert distance[scope]["jsd"] <= math.log(2)
    assert "distance" not in _evaluate(runs["run1"], world["data"])["splits"]["test"]


def test_predictions_columns_order_and_p_yes_by_hand(world, runs):
    _evaluate(runs["run0"], world["data"], splits=["test"], batch_size=4)
    predictions = pd.read_parquet(runs["run0"] / "predictions" / "test.parquet")
    rows = [json.loads(line) for line in world["test_file"].read_text().splitlines()]
    assert list(predictions.columns) == ["id", "user_id", "label", "p_yes"]
    assert predictions["id"].tolist() == [r["id"] for r in rows]
    assert predictions["label"].tolist() == [r["label"] for r in rows]

    recommender = load_recommender(runs["run0"] / "model")
    recommender.model.eval()
    row = 5
    with torch.no_grad():
        logits = recommender.answer_logits(recommender.collate([rows[row]]))[0]
    pair = torch.stack([logits[recommender.yes_id], logits[recommender.no_id]]).double()
    expected = torch.softmax(pair, dim=0)[0].item()
    assert predictions["p_yes"][row] == pytest.approx(expected, abs=1e-6)


def test_metrics_agree_with_sklearn_and_are_deterministic(world, runs):
    first = _evaluate(runs["run1"], world["data"], reference=runs["run0"], batch_size=3)
    first_preds = pd.read_parquet(runs["run1"] / "predictions" / "forget.parquet")
    second = _evaluate(runs["run1"], world["data"], reference=runs["run0"], batch_size=3)
    assert first["splits"] == second["splits"]
    assert first_preds.equals(pd.read_parquet(runs["run1"] / "predictions" / "forget.parquet"))
    for name in ("test", "forget"):
        preds = pd.read_parquet(runs["run1"] / "predictions" / f"{name}.parquet")
        y, p = preds["label"], preds["p_yes"]
        entry = second["splits"][name]
        assert entry["n"] == len(preds)
        assert entry["positive_rate"] == pytest.approx(y.mean())
        assert entry["auc"] == pytest.approx(roc_auc_score(y, p))
        assert entry["acc"] == pytest.approx(accuracy_score(y, p >= 0.5))
        assert entry["logloss"] == pytest.approx(log_loss(y, p))


def test_metrics_json_is_merged_by_split(world, runs):
    test_only = _evaluate(runs["run0"], world["data"], splits="test")
    merged = _evaluate(runs["run0"], world["data"], splits="forget", reference=runs["run1"])
    assert set(merged["splits"]) == {"test", "forget"}
    assert merged["splits"]["test"] == test_only["splits"]["test"]
    assert "distance" in merged["splits"]["forget"]


def _evaluate_counting(monkeypatch, run: Path, data: Path, **kwargs) -> tuple[dict, int]:
    """Evaluate (batches of 3); return the result and how many batches any model scored."""
    calls = []
    scored = SingleModel.answer_logits

    def counting(self, batch):
        calls.append(1)
        return scored(self, batch)

    monkeypatch.setattr(SingleModel, "answer_logits", counting)
    result = evaluate_run(run, data, progress=False, batch_size=3, **kwargs)
    monkeypatch.setattr(SingleModel, "answer_logits", scored)
    return result, len(calls)


def test_logit_cache_gives_identical_metrics_without_scoring_again(world, runs, monkeypatch):
    data, run0, run1 = world["data"], runs["run0"], runs["run1"]
    plain_10, plain_calls = _evaluate_counting(monkeypatch, run1, data, reference=run0)
    plain_01, _ = _evaluate_counting(monkeypatch, run0, data, reference=run1)
    cache = AnswerLogitCache()
    first, first_calls = _evaluate_counting(
        monkeypatch, run1, data, reference=run0, logit_cache=cache
    )
    assert first["splits"] == plain_10["splits"] and first_calls == plain_calls
    # run0 was the reference: as the run now, only the new reference (run1) is scored.
    swapped, swapped_calls = _evaluate_counting(
        monkeypatch, run0, data, reference=run1, logit_cache=cache
    )
    assert swapped["splits"] == plain_01["splits"] and swapped_calls == plain_calls // 2
    again, again_calls = _evaluate_counting(
        monkeypatch, run1, data, reference=run0, logit_cache=cache
    )
    assert again["splits"] == plain_10["splits"] and again_calls == 0
    # A run whose manifest changed (retrained) is scored again, not served from the cache.
    manifest = json.loads((run0 / MANIFEST).read_text())
    atomic_write_json(run0 / MANIFEST, {**manifest, "finished_at": "later"})
    _, changed_calls = _evaluate_counting(
        monkeypatch, run1, data, reference=run0, logit_cache=cache
    )
    assert changed_calls == plain_calls // 2


def test_logit_cache_keeps_its_byte_budget_oldest_out_first():
    entry = torch.zeros(4, 8)  # 128 bytes
    cache = AnswerLogitCache(max_bytes=300)
    cache.put("a", entry)
    cache.put("b", entry + 1)
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", entry + 2)
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.used_bytes == 256
    cache.put("huge", torch.zeros(10, 10))  # 400 bytes: over the whole budget, never kept
    assert cache.get("huge") is None and cache.used_bytes == 256


def test_logit_cache_skips_splits_over_budget_and_still_scores_right(world, runs, monkeypatch):
    data, run0, run1 = world["data"], runs["run0"], runs["run1"]
    plain, plain_calls = _evaluate_counting(monkeypatch, run1, data, reference=run0)
    cache = AnswerLogitCache(max_bytes=1)
    for _ in range(2):
        result, calls = _evaluate_counting(
            monkeypatch, run1, data, reference=run0, logit_cache=cache
        )
        assert result["splits"] == plain["splits"] and calls == plain_calls
    assert cache.used_bytes == 0


def test_cli_eval_prints_a_table(world, runs, capsys):
    code = cli.main([
        "eval", str(runs["run0"]), "--data", str(world["data"]),
        "--reference", str(runs["run1"]), "--splits", "forget", "--batch-size", "5",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "paper_jsd" in out and out.splitlines()[1].startswith("forget")


def test_default_splits_add_the_holdout_when_the_data_has_one(tmp_path, capsys):
    """Without --splits, a folder with a holdout split gets its membership evidence."""
    splits = {**make_splits(), "holdout": _rows("holdout", 12, np.random.default_rng(3), 500)}
    write_data(tmp_path / "data", splits)
    corpus = [r["prompt"] for rows in splits.values() for r in rows]
    run = write_run(tmp_path / "run", corpus, 0, None)
    code = cli.main(["eval", str(run), "--data", str(tmp_path / "data"), "--batch-size", "8"])
    out = capsys.readouterr().out
    result = json.loads((run / "metrics.json").read_text())
    assert code == 0 and set(result["splits"]) == {"test", "forget", "holdout"}
    assert result["membership"]["mia_loss"] == "yes_no"
    assert 0.0 <= result["membership"]["mia_auc"] <= 1.0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["test", "forget", "holdout"]
    assert (run / "predictions" / "holdout.parquet").is_file()
    no_holdout = {k: v for k, v in splits.items() if k != "holdout"}
    write_data(tmp_path / "plain", no_holdout)
    plain = write_run(tmp_path / "plain-run", corpus, 0, None)
    result = _evaluate(plain, tmp_path / "plain", batch_size=8)
    assert set(result["splits"]) == {"test", "forget"} and "membership" not in result


# ---------------------------------------------------------------- bad input
def _missing_run(world, runs, tmp):
    return [str(tmp / "nope"), "--data", str(world["data"])]


def _incomplete_run(world, runs, tmp):
    manifest = json.loads((runs["run1"] / MANIFEST).read_text())
    atomic_write_json(runs["run1"] / MANIFEST, {**manifest, "complete": False})
    return [str(runs["run0"]), "--data", str(world["data"]), "--reference", str(runs["run1"])]


def _run_on_other_data(world, runs, tmp):
    write_data(tmp / "other", make_splits(seed=1), tag="other")
    return [str(runs["run0"]), "--data", str(tmp / "other")]


def _reference_on_other_data(world, runs, tmp):
    manifest = json.loads((runs["run1"] / MANIFEST).read_text())
    atomic_write_json(runs["run1"] / MANIFEST, {**manifest, "data_manifest_sha256": "0" * 64})
    return [str(runs["run0"]), "--data", str(world["data"]), "--reference", str(runs["run1"])]


def _unknown_split(world, runs, tmp):
    return [str(runs["run0"]), "--data", str(world["data"]), "--splits", "test,bogus"]


def _empty_split(world, runs, tmp):
    splits = {**make_splits(), "forget": []}
    sha = write_data(tmp / "empty", splits)
    manifest = json.loads((runs["run0"] / MANIFEST).read_text())
    atomic_write_json(runs["run0"] / MANIFEST, {**manifest, "data_manifest_sha256": sha})
    return [str(runs["run0"]), "--data", str(tmp / "empty")]


def _other_vocabulary(world, runs, tmp):
    write_run(tmp / "stranger", ["completely different words here"], 0, None)
    return [str(runs["run0"]), "--data", str(world["data"]), "--reference", str(tmp / "stranger")]


def _bad_batch_size(world, runs, tmp):
    return [str(runs["run0"]), "--data", str(world["data"]), "--batch-size", "0"]


def _missing_data(world, runs, tmp):
    return [str(runs["run0"]), "--data", str(tmp / "no-data")]


BAD_INPUTS = {
    "missing run": (_missing_run, "run folder not found"),
    "incomplete run": (_incomplete_run, "incomplete"),
    "run on other data": (_run_on_other_data, "prepared differently"),
    "reference on other data": (_reference_on_other_data, "trained on other data"),
    "unknown split": (_unknown_split, "valid: train, valid, test, retain, forget"),
    "empty split": (_empty_split, "is empty"),
    "other vocabulary": (_other_vocabulary, "vocabular"),
    "batch size": (_bad_batch_size, "batch size"),
    "missing data": (_missing_data, "data folder not found"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_loses_nothing(world, runs, tmp_path, capsys, case):
    make_args, message = BAD_INPUTS[case]
    _evaluate(runs["run0"], world["data"], splits="test")
    metrics_before = (runs["run0"] / "metrics.json").read_bytes()
    predictions_before = (runs["run0"] / "predictions" / "test.parquet").read_bytes()
    args = make_args(world, runs, tmp_path)
    capsys.readouterr()

    code = cli.main(["eval", *args])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("e2urec: error:") and err.count("\n") == 1, err
    assert message in err
    assert (runs["run0"] / "metrics.json").read_bytes() == metrics_before
    assert (runs["run0"] / "predictions" / "test.parquet").read_bytes() == predictions_before
    assert sorted(p.name for p in (runs["run0"] / "predictions").iterdir()) == ["test.parquet"]
