"""What a deletion leaves behind: superseded versions purged (or kept for a rollback window),
rows zeroed on disk, a ledger of pseudonyms, an audit that finds traces; purposes; old formats."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from test_deploy import FAST, build_world, train_users

from e2urec import api, cli
from e2urec.deploy.deployment import Deployment, parse_method_for
from e2urec.deploy.ledger import Ledger
from e2urec.deploy.worker import Worker
from e2urec.errors import E2URecError
from e2urec.methods import METHODS

SETS = [a for s in FAST for a in ("--set", s)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_world(tmp_path_factory.mktemp("privacy"))


def deploy(world: dict[str, Path], out: Path, *extra: str) -> int:
    return cli.main(
        [
            "deploy",
            "--from",
            str(world["run"]),
            "--data",
            str(world["data"]),
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.fixture
def dep(world: dict[str, Path], tmp_path: Path) -> Path:
    assert deploy(world, tmp_path / "dep") == 0
    return tmp_path / "dep"


def prompts_of(dep: Path, user: int) -> list[str]:
    store = Deployment(dep).store
    return [r["prompt"] for split in ("train", "valid", "test") for r in store.rows(split, [user])]


def files_holding(dep: Path, needles: list[bytes]) -> list[str]:
    return [
        p.relative_to(dep).as_posix()
        for p in dep.rglob("*")
        if p.is_file() and any(n in p.read_bytes() for n in needles)
    ]


def test_one_deletion_leaves_one_version_and_no_trace(
    dep: Path, capsys: pytest.CaptureFixture
) -> None:
    user = train_users(dep)[0]
    prompts = prompts_of(dep, user)
    needles = [p.encode() for p in prompts]
    assert files_holding(dep, needles) == ["store.sqlite"]  # the check can find them
    mode = stat.S_IMODE(os.stat(dep / "secret.key").st_mode)
    assert mode == 0o600

    assert cli.main(["forget", "--deployment", str(dep), "--users", str(user), *SETS]) == 0
    deployment = Deployment(dep)
    assert deployment.versions() == ["v0002"] == [deployment.current()]
    assert files_holding(dep, needles) == []  # no byte sequence of the user's prompts
    assert not (dep / "store.sqlite-wal").exists() or (dep / "store.sqlite-wal").stat().st_size == 0
    with deployment.store.connect() as conn:
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        conn.execute(f"VACUUM INTO '{dep.parent / 'compact.sqlite'}'")
    ratio = (dep / "store.sqlite").stat().st_size / (dep.parent / "compact.sqlite").stat().st_size
    assert ratio <= 1.2, ratio
    purge = api.ledger(dep)[-1]
    assert purge["kind"] == "purge" and purge["version"] == "v0001"
    assert len(purge["model_sha256"]) == 64 and purge["superseded"]

    capsys.readouterr()
    assert cli.main(["audit", "--deployment", str(dep), "--user", str(user)]) == 0
    out = capsys.readouterr().out
    assert f"user {user}: no trace in " in out and "ledger.jsonl: no trace" in out
    assert "keyed pseudonym" in out

    # the audit does find what it looks for: a copied prompt and a plaintext id
    (dep / "worker.log").write_text(f"serving user {user}\n" + prompts[0])
    (dep / "requests").mkdir(exist_ok=True)
    (dep / "requests" / "copy.json").write_text(json.dumps({"users": [user]}))
    assert cli.main(["audit", "--deployment", str(dep), "--user", str(user)]) == 1
    out = capsys.readouterr().out
    assert "worker.log: a row of the user" in out and "worker.log: the id in a field" in out
    assert "requests/copy.json: line 1: the id in plaintext (users)" in out


def test_audit_and_ledger_user_need_the_secret(dep: Path, capsys: pytest.CaptureFixture) -> None:
    user = train_users(dep)[0]
    kept = dep.parent / "kept.key"
    (dep / "secret.key").rename(kept)
    for command in (["audit", "--deployment", str(dep), "--user", str(user)],
                    ["ledger", "--deployment", str(dep), "--user", str(user)]):  # fmt: skip
        capsys.readouterr()
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert "secret" in err and len(err.strip().splitlines()) == 1
        assert cli.main([*command, "--secret", str(kept)]) in (0, 1)
    with pytest.raises(E2URecError, match="secret"):  # no new key behind the operator's back
        api.enqueue(dep, [user], sets=FAST)


def test_rollback_window_keeps_then_rollback_and_expiry(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dep = tmp_path / "dep"
    assert deploy(world, dep, "--rollback-window", "1h") == 0
    first, second = train_users(dep)[:2]
    result = api.forget(dep, [first], sets=FAST)
    deployment = Deployment(dep)
    assert deployment.versions() == ["v0001", "v0002"]  # kept for the window
    capsys.readouterr()
    assert cli.main(["audit", "--deployment", str(dep), "--user", str(first)]) == 1
    assert "v0001: a model trained on the user's rows" in capsys.readouterr().out
    assert cli.main(["rollback", "--deployment", str(dep)]) == 0
    out = capsys.readouterr().out
    assert "rolled back v0002 -> v0001" in out and result.request_id in out
    assert deployment.current() == "v0001" and deployment.versions() == ["v0001"]
    kinds = [(e["kind"], e.get("version")) for e in api.ledger(dep)[-2:]]
    assert kinds == [("rollback", "v0001"), ("purge", "v0002")]
    assert cli.main(["rollback", "--deployment", str(dep)]) == 2
    assert "no kept version" in capsys.readouterr().err

    api.forget(dep, [second], sets=FAST)  # a new number, never v0002 again
    assert deployment.current() == "v0003" and deployment.versions() == ["v0001", "v0003"]
    deployment.store.unretire("v0001")
    deployment.store.retire("v0001", time.time() - 7200)  # the window has passed
    with Worker(dep):  # purged at worker start
        pass
    assert deployment.versions() == ["v0003"]
    assert api.ledger(dep)[-1]["kind"] == "purge"
    assert api.audit(dep, second).traces == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rollback-window=-5m"], "duration >= 0"),
        (["--rollback-window", "soon"], "duration >= 0"),
        (["--method-for", "spam=e2urec"], "PURPOSE=METHOD"),
        (["--method-for", "pollution=nosuch"], "unknown method"),
        (["--method-for", "pollution=sisa"], "single model"),
        (["--method-for", "pollution=neggrad:lr=-1"], "lr"),
    ],
)
def test_deploy_bad_settings_write_nothing(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, extra: list, message: str
) -> None:
    assert deploy(world, tmp_path / "dep", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "dep").exists()


def test_every_single_model_method_can_serve_a_purpose() -> None:
    for name in METHODS.names():
        if METHODS.get(name).base_format == "single":
            assert parse_method_for([f"pollution={name}"])["pollution"] == [name]


def test_purpose_picks_the_method(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dep = tmp_path / "dep"
    assert deploy(world, dep, "--method-for", "pollution=neggrad:max_steps=2,batch_size=8") == 0
    a, b = train_users(dep)[:2]
    capsys.readouterr()
    assert cli.main(["forget", "--deployment", str(dep), "--users", str(a), "--purpose",
                     "pollution", "--reason", "shilling"]) == 0  # fmt: skip
    entry = api.ledger(dep)[1]
    assert (entry["purpose"], entry["method"]) == ("pollution", "neggrad")
    assert entry["params"] == ["max_steps=2", "batch_size=8"]
    privacy, _ = api.enqueue(dep, [b], sets=FAST)
    assert (privacy["purpose"], privacy["method"]) == ("privacy", "e2urec")

    other = tmp_path / "default"
    assert deploy(world, other) == 0
    record, _ = api.enqueue(other, [a], purpose="pollution", sets=["max_steps=2", "aug_epochs=1"])
    assert record["method"] == "e2urec" and record["sets"][:2] == [
        "teacher=contrastive",
        "max_steps=2",
    ]
    with Worker(other) as worker:  # the default for pollution runs through the pipeline
        (served,) = worker.drain()
    assert served["state"] == "done" and api.ledger(other)[1]["params"][0] == "teacher=contrastive"
    with pytest.raises(E2URecError, match="purpose"):
        api.enqueue(other, [a], purpose="fun")


def test_old_format_deployment_loads_verifies_and_migrates(
    dep: Path, capsys: pytest.CaptureFixture
) -> None:
    """A deployment from before pseudonyms and purges: no secret, a ledger entry with a
    plaintext id and reason, a forgotten user still in known_users, an unfinished synchronous
    request folder, a queue table without purposes."""
    old, pending, fresh = train_users(dep)[:3]
    (dep / "secret.key").unlink()
    with sqlite3.connect(dep / "store.sqlite") as conn:
        conn.execute("DELETE FROM meta WHERE key IN ('keyed', 'purposes', 'rollback_window_s')")
        conn.execute("DROP TABLE retired")
        conn.execute("DROP TABLE forgotten")
        conn.execute("ALTER TABLE requests DROP COLUMN purpose")
        for table in ("samples", "ratings", "profiles"):
            conn.execute(f"DELETE FROM {table} WHERE user_id = ?", (old,))
    Ledger(dep / "ledger.jsonl").append(
        {
            "kind": "forget",
            "request_id": "old-1",
            "users": [old],
            "reason": "by mail",
            "version": "v0001",
            "method": None,
            "rows_removed": {"train": 3},
        }  # fmt: skip
    )
    request = {"request_id": "old-1", "status": "done", "users": [old],
               "method": "e2urec", "sets": FAST, "reason": "by mail"}  # fmt: skip

    def request_folder(rid: str, state: str, user: int) -> Path:
        folder = dep / "requests" / rid
        folder.mkdir(parents=True)
        record = {**request, "request_id": rid, "status": state, "users": [user]}
        (folder / "request.json").write_text(json.dumps(record))
        return folder

    receipt = request_folder("old-1", "done", old)
    assert len(api.ledger(dep)) == 2  # verifies
    with pytest.raises(E2URecError, match="their data was deleted"):
        api.predict(dep, old, [1])
    with Worker(dep):  # keys the deployment, pseudonymises `old`, drops the old receipt
        assert not receipt.exists()
    request_folder("old-2", "started", pending)  # an unfinished synchronous request
    with Worker(dep) as worker:
        served = worker.drain()
    assert [r["request_id"] for r in served] == ["old-2"] and served[0]["state"] == "done"
    assert (dep / "secret.key").is_file() and not list((dep / "requests").rglob("*.json"))
    assert Deployment(dep).versions() == ["v0002"]
    capsys.readouterr()
    assert cli.main(["ledger", "--deployment", str(dep), "--user", str(old)]) == 0
    assert "request old-1" in capsys.readouterr().out
    assert cli.main(["ledger", "--deployment", str(dep)]) == 0
    assert api.forget(dep, [old], sets=FAST).status == "no training data"  # not "unknown"
    assert api.forget(dep, [fresh], sets=FAST).status == "done"
    assert cli.main(["audit", "--deployment", str(dep), "--user", str(old)]) == 1
    out = capsys.readouterr().out  # the old entry's plaintext id cannot be rewritten
    assert "ledger.jsonl: line 2: the id in plaintext (users)" in out
