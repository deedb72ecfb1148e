"""Forgetting scenarios of `e2urec data prepare`: label-flip, shilling, holdout, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2urec.cli import main
from e2urec.data.dataset import load_split, read_manifest
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.scenarios import FAKE_ID_BASE

SMALL = {"dataset": "ml-100k", "last_n": 3000, "history_len": 3, "shards": 2}


def _prepare(ml100k_dir: Path, out: Path, **options) -> Path:
    prepare(PrepareConfig(raw=str(ml100k_dir), out=str(out), **{**SMALL, **options}))
    return out


@pytest.fixture(scope="module")
def clean(ml100k_dir, tmp_path_factory) -> Path:
    return _prepare(ml100k_dir, tmp_path_factory.mktemp("clean") / "data", holdout_ratio=0.1)


def test_label_flip_flips_exactly_the_forgotten_users_train_labels(ml100k_dir, clean, tmp_path):
    flipped = _prepare(ml100k_dir, tmp_path / "flip", pollute="label-flip", holdout_ratio=0.1)
    manifest = read_manifest(flipped)
    assert manifest["forgotten_users"] == read_manifest(clean)["forgotten_users"]
    assert manifest["scenario"]["pollute"] == "label-flip"
    before, after = load_split(clean, "forget"), load_split(flipped, "forget")
    assert (after["label"] == 1 - before["label"]).all()
    assert set(after["target"]) <= {"Yes.", "No."}
    assert (after["target"] == after["label"].map({1: "Yes.", 0: "No."})).all()
    assert manifest["scenario"]["flipped_rows"] == len(after)
    for split in ("retain", "valid", "test", "holdout"):  # everything else stays clean
        assert load_split(flipped, split).equals(load_split(clean, split))
    train = load_split(flipped, "train").set_index("id")
    assert (train.loc[after["id"], "label"].to_numpy() == after["label"].to_numpy()).all()


def test_holdout_users_are_trained_on_by_nobody(clean):
    manifest = read_manifest(clean)
    holdout = load_split(clean, "holdout")
    held = set(manifest["scenario"]["holdout_users"])
    assert set(holdout["user_id"]) == held and len(holdout) > 0
    assert not held & set(manifest["forgotten_users"])
    for split in manifest["splits"]:
        if split not in ("valid", "test", "holdout"):
            users = set(load_split(clean, split)["user_id"])
            assert not held & users, f"holdout users' rows are in {split}"
    train_period_end = load_split(clean, "train")["timestamp"].max()
    assert holdout["timestamp"].max() <= train_period_end  # same period as the members


def test_paper_protocol_keeps_its_split_and_fingerprint(ml100k_dir, tmp_path):
    a = _prepare(ml100k_dir, tmp_path / "a")
    manifest = read_manifest(a)
    assert "holdout" not in manifest["splits"]
    assert manifest["scenario"] == {"pollute": "none"}
    config = PrepareConfig(raw=str(ml100k_dir), out=str(tmp_path / "b"), **SMALL)
    assert prepare(config).manifest["fingerprint"] == manifest["fingerprint"]


def test_shilling_forgets_exactly_the_fake_users(ml100k_dir, tmp_path):
    data = _prepare(
        ml100k_dir,
        tmp_path / "shill",
        pollute="shilling",
        targets=4,
        fake_users=6,
        holdout_ratio=0.1,
    )
    manifest = read_manifest(data)
    scenario = manifest["scenario"]
    forget, test = load_split(data, "forget"), load_split(data, "test")
    assert len(manifest["forgotten_users"]) == 6
    assert (forget["user_id"] >= FAKE_ID_BASE).all()
    assert set(forget["user_id"]) == set(manifest["forgotten_users"])
    assert not (load_split(data, "retain")["user_id"] >= FAKE_ID_BASE).any()
    targets = scenario["target_items"]
    assert len(targets) == 4 and set(targets) <= set(test["item_id"])
    on_targets = forget[forget["item_id"].isin(targets)]
    assert len(on_targets) == 6 * 4 and (on_targets["label"] == 1).all()  # 5 stars each
    train = load_split(data, "train")
    assert train["timestamp"].is_monotonic_increasing
    assert forget["timestamp"].max() <= train["timestamp"].max()
    assert len(set(train["id"])) == len(train)  # fake ids do not collide with real ones
    assert not (test["user_id"] >= FAKE_ID_BASE).any()


def test_shilling_holdout_ratio_counts_real_users_only(ml100k_dir, clean, tmp_path):
    data = _prepare(
        ml100k_dir,
        tmp_path / "many",
        pollute="shilling",
        targets=2,
        fake_users=60,
        holdout_ratio=0.1,
    )
    # The same real users as the clean split: the 60 fakes do not enlarge the holdout.
    held = read_manifest(data)["scenario"]["holdout_users"]
    assert len(held) == len(read_manifest(clean)["scenario"]["holdout_users"])


def test_love_hate_fakes_hate_their_fillers_and_hide_targets_among_them(ml100k_dir, tmp_path):
    data = _prepare(
        ml100k_dir, tmp_path / "lh", pollute="shilling", targets=4, fake_users=6, attack="love-hate"
    )
    assert read_manifest(data)["scenario"]["attack"] == "love-hate"
    forget = load_split(data, "forget")
    targets = read_manifest(data)["scenario"]["target_items"]
    on_targets = forget["item_id"].isin(targets)
    assert (forget.loc[on_targets, "rating"] == 5).all()
    assert (forget.loc[~on_targets, "rating"] == 1).all() and (~on_targets).any()
    # Interleaved: some target sample is followed (in its user's time order) by a filler sample,
    # so target samples do not all sit at the end with only other targets in their history.
    ends_on_filler = forget.sort_values("timestamp").groupby("user_id")["item_id"].last()
    assert (~ends_on_filler.isin(targets)).any()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pollute", "poison"], "argument --pollute: invalid choice"),
        (["--holdout-ratio", "1.5"], "holdout_ratio must be in [0, 1), got 1.5"),
        (["--holdout-ratio", "0.85"], "leaves no train user to retain"),
        (["--pollute", "shilling", "--targets", "100000"], "targets 100000 exceeds"),
        (
            ["--pollute", "shilling", "--fake-users", "0"],
            "fake_users must be an integer of at least 1",
        ),
        (["--pollute", "shilling", "--attack", "nuke"], "argument --attack: invalid choice"),
    ],
)
def test_bad_scenarios_are_refused_and_write_nothing(ml100k_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    base = ["data", "prepare", "--dataset", "ml-100k", "--raw", str(ml100k_dir), "--out", str(out)]
    assert main([*base, "--last-n", "3000", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("e2urec: error:") and message in err[0]
    assert not out.exists()


def test_holdout_that_leaves_nothing_to_train_on(ml100k_dir, tmp_path):
    from e2urec.errors import E2URecError

    with pytest.raises(E2URecError, match="nothing would remain"):
        _prepare(ml100k_dir, tmp_path / "x", forget_ratio=0.5, holdout_ratio=0.49)
    assert not (tmp_path / "x").exists()
