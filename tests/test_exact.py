"""The exact retraining window: the Retrain is served, covers the requests, equals an
independent `e2urec train --on retain` byte for byte, survives a crash, and is reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_deploy import FAST, build_world, train_users, user_rows

from e2urec import api, cli
from e2urec.artifacts import atomic_write_json, model_sha256, read_json
from e2urec.data.dataset import load_split, read_manifest
from e2urec.data.prepare import COLUMNS, split_file, write_split
from e2urec.deploy import exact
from e2urec.deploy.deployment import Deployment
from e2urec.deploy.worker import Worker
from e2urec.errors import E2URecError


class Killed(BaseException):
    """A crash: not an Exception, so nothing marks anything failed (like kill -9)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_world(tmp_path_factory.mktemp("exact"))


def deployed(world: dict[str, Path], out: Path, *flags: str) -> Path:
    args = ["deploy", "--from", str(world["run"]), "--data", str(world["data"]), "--out", str(out)]
    assert cli.main([*args, *flags]) == 0
    return out


def serve(dep: Path, users: list[int]) -> list[str]:
    """One single-user request per user, served by one worker (one pass each)."""
    ids = [api.enqueue(dep, [u], sets=FAST)[0]["request_id"] for u in users]
    with Worker(dep, max_users=1) as worker:
        worker.drain()
    return ids


def independent_retain_folder(data: Path, out: Path, gone: list[int]) -> Path:
    """The prepared folder without `gone`'s rows, built from the original prepared data (train =
    retain = the rows kept, valid and test without their rows), in id order."""
    out.mkdir()
    frames = {}
    for name in ("train", "valid", "test"):
        frame = load_split(data, name)
        frames[name] = frame[~frame["user_id"].isin(gone)].sort_values("id")[COLUMNS]
    frames["retain"], frames["forget"] = frames["train"], frames["train"].iloc[:0]
    files = {split_file(n): write_split(out, n, f) for n, f in frames.items()}
    manifest = {**read_manifest(data), "files": files}
    atomic_write_json(out / "manifest.json", manifest)
    return out


def test_every_k_requests_a_retrain_byte_identical_to_train_on_retain(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dep = deployed(world, tmp_path / "dep", "--exact-every", "2")
    a, b, c = train_users(dep)[:3]
    first = serve(dep, [a])
    assert "approximate (e2urec)" in api.forgotten(dep, a)[0]["exact"]
    assert "after 1 more request" in api.forgotten(dep, a)[0]["exact"]
    ids = first + serve(dep, [b, c])  # b makes two pending: the Retrain runs before c's pass
    entries = api.ledger(dep)
    kinds = [e["kind"] for e in entries]
    retrain = next(e for e in entries if e["kind"] == "exact")
    assert retrain["covers"] == ids[:2] and retrain["method"] == "retrain"
    assert kinds.index("exact") < next(
        i for i, e in enumerate(entries) if e.get("request_id") == ids[2]
    )
    after = next(e for e in entries if e.get("request_id") == ids[2])
    assert after["parent_version"] == retrain["version"]  # c unlearned on top of the Retrain
    deployment = Deployment(dep)
    assert deployment.versions() == [after["version"]]  # everything before it purged
    assert user_rows(dep, [a, b, c]) == 0 and not list((dep / "requests").glob("exact-*"))

    assert cli.main(["ledger", "--deployment", str(dep)]) == 0
    assert "exact" in capsys.readouterr().out  # the Retrain's entry in the table
    assert cli.main(["ledger", "--deployment", str(dep), "--user", str(a)]) == 0
    assert "deletion: exact since" in capsys.readouterr().out
    assert cli.main(["ledger", "--deployment", str(dep), "--user", str(c)]) == 0
    assert "deletion: approximate (e2urec)" in capsys.readouterr().out
    notes = api.audit(dep, a, data=world["data"]).notes
    assert any("exact since" in n for n in notes)

    # the Retrain's weights = an independent train --on retain of the same rows and recipe
    folder = independent_retain_folder(world["data"], tmp_path / "retain", [a, b])
    api.train(folder, "retain", "t5-tiny", tmp_path / "independent", epochs=1, max_steps=3)
    record = read_json(tmp_path / "independent" / "manifest.json", "run manifest")
    assert record["trained_on"] == "retain" and retrain["rows_trained"] == len(
        load_split(folder, "retain")
    )
    assert retrain["model_sha256"] == model_sha256(tmp_path / "independent" / "model")


def test_crash_during_the_retrain_loses_nothing(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = deployed(world, tmp_path / "dep", "--exact-every", "1", "--rollback-window", "0")
    a = train_users(dep)[0]
    api.enqueue(dep, [a], sets=FAST)
    from e2urec.unlearn import export as real_export

    def crash(*args: object, **kwargs: object) -> None:
        real_export(*args, **kwargs)  # the version is half staged when the process dies
        raise Killed

    monkeypatch.setattr("e2urec.unlearn.export", crash)
    with pytest.raises(Killed), Worker(dep) as worker:
        worker.drain()
    assert Deployment(dep).store.select("retrains", "state = 'running'")
    assert not (dep / "versions" / "v0003").exists()  # no partial version
    monkeypatch.undo()

    def retrained(*args: object, **kwargs: object) -> None:
        raise AssertionError("the finished training is reused, not run again")

    monkeypatch.setattr("e2urec.train.recipes.train", retrained)
    with Worker(dep) as worker:  # resumes: the run finished before the crash
        worker.drain()
    entries = api.ledger(dep)
    assert [e["kind"] for e in entries].count("exact") == 1
    assert Deployment(dep).current() == "v0003" and Deployment(dep).versions() == ["v0003"]
    assert not Deployment(dep).store.select("retrains", "state = 'running'")
    assert not list((dep / "requests").glob("exact-*"))


def test_kill_9_during_the_retrain(world: dict[str, Path], tmp_path: Path) -> None:
    """A real `e2urec work` killed while its Retrain trains; a new one finishes it."""
    dep = deployed(world, tmp_path / "dep", "--exact-every", "1")
    a = train_users(dep)[0]
    rid = api.enqueue(dep, [a], sets=FAST)[0]["request_id"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "e2urec", "work", "--deployment", str(dep), "--once"]
    worker = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    while not list((dep / "requests").glob("exact-*/run")) and worker.poll() is None:
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert not list((dep / "versions").glob(".*"))
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    entries = api.ledger(dep)
    assert [e["kind"] for e in entries].count("exact") == 1
    assert entries[-2]["kind"] == "exact" or entries[-1]["kind"] in ("exact", "purge")
    assert Deployment(dep).request(rid)["state"] == "done"
    assert len(Deployment(dep).versions()) == 1 and user_rows(dep, [a]) == 0


def test_bad_windows_are_one_error(world: dict[str, Path], tmp_path: Path) -> None:
    for flags, message in (
        (["--exact-every", "0"], "--exact-every 0"),
        (["--exact-within", "soon"], "--exact-within 'soon'"),
        (["--exact-within", "0"], "give a duration > 0"),
    ):
        with pytest.raises(E2URecError, match=message):
            api.deploy(world["run"], world["data"], tmp_path / "x", **exact_options(flags))
        assert not (tmp_path / "x").exists()


def exact_options(flags: list[str]) -> dict:
    name, value = flags
    return {"exact_every": int(value)} if name == "--exact-every" else {"exact_within": value}


def test_window_in_time_is_due_before_it_ends() -> None:
    stamp = pd.Timestamp("2026-01-01T00:00:00Z").isoformat()
    entries = [{"kind": "forget", "request_id": "r", "method": "e2urec", "time": stamp, "seq": 1}]
    settings = {"exact_within_s": 3600.0}
    start = pd.Timestamp(stamp).timestamp()
    assert not exact.due(settings, entries, start + 3000)
    assert exact.due(settings, entries, start + 3600)
    took = {"kind": "exact", "covers": [], "seconds": 900, "time": stamp, "seq": 2}
    assert exact.due(settings, [*entries, took], start + 3000)  # a Retrain takes 900 s
    assert "approximate (e2urec)" in exact.status(settings, entries, "r")
