"""Deployments: deploy → forget → forget → ledger, tampering, bad users, idempotence, crashes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from e2urec import api, cli
from e2urec.data.prepare import PrepareConfig
from e2urec.deploy.deployment import Deployment
from e2urec.deploy.store import Store

FAST = ["epochs=1", "aug_epochs=1", "max_steps=2", "batch_size=8"]


def build_world(root: Path) -> dict[str, Path]:
    """Tiny synthetic data, prepared with short histories, and a t5-tiny original run."""
    api.synthesize(root / "raw", n_users=20, n_items=30, n_ratings=500, seed=0)
    config = PrepareConfig(
        dataset="ml-1m",
        out=str(root / "data"),
        raw=str(root / "raw"),
        last_n=200,
        history_len=3,
        min_history=3,
        forget_ratio=0.2,
        shards=2,
    )
    api.prepare(config)
    api.train(root / "data", "train", "t5-tiny", root / "orig", epochs=1, max_steps=3)
    return {"data": root / "data", "run": root / "orig"}


def train_users(dep: Path) -> list[int]:
    """Users holding train rows, most rows first."""
    with sqlite3.connect(dep / "store.sqlite") as conn:
        rows = conn.execute(
            "SELECT user_id FROM samples WHERE split = 'train' GROUP BY user_id "
            "ORDER BY COUNT(*) DESC, user_id"
        )
        return [u for (u,) in rows]


def user_rows(dep: Path, users: list[int]) -> int:
    marks = ", ".join("?" * len(users))
    with sqlite3.connect(dep / "store.sqlite") as conn:
        return sum(
            conn.execute(f"SELECT COUNT(*) FROM {t} WHERE user_id IN ({marks})", users).fetchone()[
                0
            ]
            for t in ("samples", "ratings", "profiles")
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def dep(world: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "dep"
    assert cli.main(["deploy", "--from", str(world["run"]), "--data", str(world["data"]),
                     "--out", str(out)]) == 0  # fmt: skip
    return out


def forget(dep: Path, users: str, *extra: str) -> int:
    sets = [a for s in FAST for a in ("--set", s)]
    return cli.main(["forget", "--deployment", str(dep), "--users", users, *sets, *extra])


def test_deploy_forget_twice_then_ledger(dep: Path, capsys: pytest.CaptureFixture) -> None:
    first, second = train_users(dep)[:2]
    deployment = Deployment(dep)
    assert deployment.current() == "v0001"
    before = deployment.predict(first, [1, 2])
    assert all(0.0 <= p <= 1.0 for p in before.values())
    train_before = deployment.store.counts()["train"]

    assert forget(dep, str(first), "--reason", "user asked") == 0
    assert forget(dep, str(second)) == 0
    assert deployment.current() == "v0003" and deployment.versions() == ["v0003"]  # purged
    assert user_rows(dep, [first, second]) == 0
    entries = api.ledger(dep)
    assert [e["kind"] for e in entries] == ["deploy", "forget", "purge", "forget", "purge"]
    one, two = entries[1], entries[3]
    assert (one["parent_version"], one["version"]) == ("v0001", "v0002")
    assert (two["parent_version"], two["version"]) == ("v0002", "v0003")
    assert one["users"] == [deployment.keys.pseudonym(first)] and "reason" not in one
    assert one["reason_hmac"] == deployment.keys.reason("user asked")
    assert first not in one["users"] and one["purpose"] == "privacy"  # (a pseudonym's hex
    # digits may contain the id's digits: a substring test failed when they did)
    assert entries[2]["version"] == "v0001" and len(entries[2]["model_sha256"]) == 64
    assert one["data_sha256_after"] == two["data_sha256_before"]
    removed = one["rows_removed"]["train"] + two["rows_removed"]["train"]
    assert deployment.store.counts()["train"] == train_before - removed
    for entry in (one, two):
        valid = entry["checks"]["valid_auc"]
        assert abs(valid["after"] - valid["before"]) < 0.15  # utility holds
        assert 0.0 <= entry["checks"]["mia_auc"]["after"] <= 1.0
        assert entry["mia_loss"] == "vocab"  # the loss of that AUC, named
        assert len(entry["model_sha256"]) == 64 and len(entry["adapter_sha256"]) == 64
    assert not (dep / "requests").exists() or not any((dep / "requests").iterdir())

    capsys.readouterr()
    assert cli.main(["ledger", "--deployment", str(dep)]) == 0
    out = capsys.readouterr().out
    assert one["request_id"] in out and two["request_id"] in out
    assert "hash chain verified: 5 entries; head sha256 " in out
    head = out.rsplit("head sha256 ", 1)[1].strip()
    assert cli.main(["ledger", "--deployment", str(dep), "--expect-head", head[:12]]) == 0

    assert forget(dep, str(first)) == 0  # same request again
    assert "already done" in capsys.readouterr().out
    assert len(api.ledger(dep)) == 5
    assert cli.main(["ledger", "--deployment", str(dep), "--user", str(first)]) == 0
    out = capsys.readouterr().out
    assert f"user {first} was forgotten at " in out and "reason: user asked" in out

    assert (
        cli.main(["predict", "--deployment", str(dep), "--user", str(first), "--items", "1"]) == 2
    )
    assert "no stored history" in capsys.readouterr().err


def test_tampered_ledger_is_named(dep: Path, capsys: pytest.CaptureFixture) -> None:
    Deployment(dep).ledger.append({"kind": "note", "users": []})
    Deployment(dep).ledger.append({"kind": "note", "users": []})
    path = dep / "ledger.jsonl"
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["users"] = [999]
    lines[1] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert cli.main(["ledger", "--deployment", str(dep)]) == 2
    err = capsys.readouterr().err
    assert "tampered: entry 3" in err and "entry 2 was changed" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_users_change_nothing(dep: Path, capsys: pytest.CaptureFixture) -> None:
    store = Store(dep / "store.sqlite")
    digest = store.data_sha256()
    user = train_users(dep)[0]
    assert forget(dep, f"{user},90001,90002") == 2
    err = capsys.readouterr().err
    assert "90001, 90002" in err and "nothing was changed" in err
    assert store.data_sha256() == digest and len(api.ledger(dep)) == 1
    assert forget(dep, "abc") == 2
    assert "integer ids" in capsys.readouterr().err


def test_user_without_training_data_is_noted(dep: Path) -> None:
    store = Store(dep / "store.sqlite")
    with store.connect() as conn:
        held = {u for (u,) in conn.execute("SELECT user_id FROM samples WHERE split = 'test'")}
    only_test = sorted(held - set(train_users(dep)))
    assert only_test, "the tiny data should have a user with test rows only"
    result = api.forget(dep, only_test[:1], sets=FAST)
    assert result.status == "no training data"
    assert result.entry["no_training_data"] == Deployment(dep).keys.pseudonyms(only_test[:1])
    assert result.entry["checks"] is None and "mia_loss" not in result.entry  # nothing measured
    assert user_rows(dep, only_test[:1]) == 0
    assert Deployment(dep).current() == "v0001"


def test_interrupted_request_is_finished_by_rerun(
    dep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = train_users(dep)[0]
    deployment = Deployment(dep)
    digest = deployment.store.data_sha256()

    def crash(*args: object, **kwargs: object) -> dict[str, int]:
        raise RuntimeError("power cut")

    monkeypatch.setattr(Store, "remove_users", crash)
    with pytest.raises(RuntimeError):
        api.forget(dep, [user], sets=FAST)
    monkeypatch.undo()
    assert deployment.current() == "v0001"
    assert (dep / "versions" / "v0002" / "version.json").is_file()  # built whole, not switched
    assert deployment.store.data_sha256() == digest and len(api.ledger(dep)) == 1

    result = api.forget(dep, [user], sets=FAST)  # the same request again finishes it
    assert result.status == "done" and deployment.current() == "v0002"
    assert user_rows(dep, [user]) == 0 and deployment.versions() == ["v0002"]
    entry = api.ledger(dep)[1]
    assert entry["data_sha256_before"] == digest and entry["rows_removed"]["train"] > 0


def test_crash_while_building_leaves_no_version(dep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from e2urec.deploy import worker

    user = train_users(dep)[0]

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # not an Exception: nothing marks the request failed

    monkeypatch.setattr(worker, "model_sha256", crash)
    with pytest.raises(KeyboardInterrupt):
        api.forget(dep, [user], sets=FAST)
    monkeypatch.undo()
    assert not (dep / "versions" / "v0002").exists()
    assert Deployment(dep).current() == "v0001"
    rid = api.ledger(dep)  # nothing recorded yet
    assert len(rid) == 1
    assert api.forget(dep, [user], sets=FAST).status == "done"
    assert Deployment(dep).current() == "v0002"


def test_deploy_refuses_other_data(world: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(world["data"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["note"] = "changed"
    (other / "manifest.json").write_text(json.dumps(manifest))
    code = cli.main(["deploy", "--from", str(world["run"]), "--data", str(other),
                     "--out", str(tmp_path / "dep")])  # fmt: skip
    assert code == 2 and not (tmp_path / "dep").exists()


def test_dropped_last_entry_is_caught_by_the_expected_head(
    dep: Path, capsys: pytest.CaptureFixture
) -> None:
    from e2urec.deploy.ledger import entry_hash

    book = Deployment(dep).ledger
    book.append({"kind": "note", "users": []})
    head = entry_hash(book.append({"kind": "note", "users": []}))
    path = dep / "ledger.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:-1]))
    capsys.readouterr()
    assert cli.main(["ledger", "--deployment", str(dep)]) == 0  # the chain alone looks fine
    assert cli.main(["ledger", "--deployment", str(dep), "--expect-head", head]) == 2
    err = capsys.readouterr().err
    assert "does not contain the expected head" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["ledger", "--deployment", str(dep), "--expect-head", "xyz"]) == 2
    assert "is not a sha256" in capsys.readouterr().err
