"""`e2urec data prepare` end to end on MovieLens-100K: counts, files, determinism, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2urec.artifacts import sha256_file
from e2urec.cli import main
from e2urec.data.dataset import load_split, read_manifest
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.errors import E2URecError

ML100K_SAMPLES = 100_000 - 5 * 943


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def prepared(ml100k_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "ml100k"
    prepare(PrepareConfig(dataset="ml-100k", raw=str(ml100k_dir), out=str(out)))
    return out


def test_ml100k_counts_and_manifest(prepared, ml100k_dir):
    manifest = read_manifest(prepared)
    counts = manifest["counts"]
    assert (counts["ratings"], counts["users"]) == (100_000, 943)
    assert counts["samples_with_min_history"] == counts["samples_kept"] == ML100K_SAMPLES
    files = manifest["files"]
    assert files["train.jsonl"]["samples"] == int(0.6 * ML100K_SAMPLES)
    assert files["retain.jsonl"]["samples"] + files["forget.jsonl"]["samples"] == int(
        0.6 * ML100K_SAMPLES
    )
    assert files["forget.jsonl"]["users"] == len(manifest["forgotten_users"])
    assert manifest["raw_files"]["u.data"] == sha256_file(ml100k_dir / "u.data")
    assert manifest["template"] == "simple"
    for rel, stats in files.items():
        assert sha256_file(prepared / rel) == stats["sha256"]
    assert set(files) == {
        *(f"{s}.jsonl" for s in ("train", "valid", "test", "retain", "forget")),
        *(f"shards/{kind}-{k}.jsonl" for kind in ("sisa", "receraser") for k in range(4)),
    }


def test_load_split_and_forgotten_users(prepared):
    manifest = read_manifest(prepared)
    retain = load_split(prepared, "retain")
    forget = load_split(prepared, "forget")
    test = load_split(prepared, "test")
    assert list(retain.columns) == [
        "id",
        "user_id",
        "item_id",
        "timestamp",
        "rating",
        "label",
        "prompt",
        "target",
    ]
    forgotten = set(manifest["forgotten_users"])
    assert not forgotten & set(retain["user_id"])
    assert set(forget["user_id"]) == forgotten
    assert forgotten & set(test["user_id"])  # forgotten users keep their later test samples
    assert retain["id"].is_monotonic_increasing
    assert ((retain["rating"] > 3) == (retain["label"] == 1)).all()
    assert set(retain["target"]) == {"Yes.", "No."}
    assert load_split(prepared, "train")["timestamp"].max() <= test["timestamp"].min()
    assert len(load_split(prepared, "receraser-3")) > 0


def test_load_split_errors(prepared, tmp_path):
    with pytest.raises(E2URecError, match="valid: train, valid, test, retain, forget, sisa-0"):
        load_split(prepared, "sisa-9")
    with pytest.raises(E2URecError, match="data folder not found"):
        load_split(tmp_path / "nope", "train")
    with pytest.raises(E2URecError, match="manifest not found"):
        read_manifest(tmp_path)


def test_same_seed_identical_bytes_and_rerun(ml100k_dir, tmp_path, capsys):
    args = ["data", "prepare", "--dataset", "ml-100k", "--raw", str(ml100k_dir), "--last-n"]
    assert main([*args, "20000", "--out", str(tmp_path / "a")]) == 0
    assert "retain" in capsys.readouterr().out
    assert main([*args, "20000", "--out", str(tmp_path / "b")]) == 0
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert {k: v for k, v in a.items() if k != "manifest.json"} == {
        k: v for k, v in b.items() if k != "manifest.json"
    }
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab"]
    for manifest in manifests:
        manifest["config"].pop("out")
    assert manifests[0] == manifests[1]
    assert main([*args, "20000", "--out", str(tmp_path / "a")]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert snapshot(tmp_path / "a") == a
    assert main([*args, "20000", "--out", str(tmp_path / "a"), "--seed", "7", "--overwrite"]) == 0
    seven = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert seven["forgotten_users"] != manifests[0]["forgotten_users"]


BAD = [
    (["--dataset", "nope"], "unknown dataset 'nope'; valid:"),
    (["--forget-ratio", "0"], "forget_ratio must be in (0, 1), got 0.0"),
    (["--forget-ratio", "1"], "forget_ratio must be in (0, 1)"),
    (["--last-n", "0"], "last_n must be an integer of at least 1, got 0"),
    (["--history-len", "0"], "history_len must be an integer of at least 1"),
    (["--min-history", "0"], "min_history must be an integer of at least 1"),
    (["--shards", "0"], "shards must be an integer of at least 1"),
    (["--forget-strategy", "oldest"], "argument --forget-strategy: invalid choice"),
    (["--last-n", "5"], "forgets nobody"),
    (["--min-history", "100000"], "no samples left"),
    (["--raw", "/nonexistent/raw"], "--raw not found"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_input_one_line_exit_2_nothing_written(ml100k_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["data", "prepare", "--dataset", "ml-100k", "--raw", str(ml100k_dir), "--out", str(out)]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("e2urec: error:")
    assert list(tmp_path.iterdir()) == []


def test_existing_other_preparation_is_refused_and_untouched(ml100k_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["data", "prepare", "--dataset", "ml-100k", "--raw", str(ml100k_dir), "--out", str(out)]
    assert main([*argv, "--last-n", "20000"]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main([*argv, "--last-n", "20000", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "different preparation" in err and "--overwrite" in err and err.count("\n") == 1
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("keep")
    assert main([*argv[:-1], str(stranger)]) == 2
    assert "no prepared-data manifest" in capsys.readouterr().err
    assert (stranger / "keep.txt").read_text() == "keep"
