"""The durable deletion queue: enqueue, coalesced passes, merging, bad input, crashes, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from test_deploy import FAST, build_world, train_users, user_rows

from e2urec import api, cli
from e2urec.artifacts import sha256_file
from e2urec.deploy.deployment import Busy, Deployment
from e2urec.deploy.ledger import Ledger
from e2urec.deploy.queue import Conflict, Queue, QueueFull
from e2urec.deploy.store import Store
from e2urec.deploy.worker import Worker
from e2urec.errors import E2URecError


class Killed(BaseException):
    """A crash: not an Exception, so nothing marks the pass failed (like kill -9)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_world(tmp_path_factory.mktemp("queue"))


@pytest.fixture
def dep(world: dict[str, Path], tmp_path: Path) -> Path:
    api.deploy(world["run"], world["data"], tmp_path / "dep")
    return tmp_path / "dep"


def enqueue(dep: Path, users: list[int], **options: object) -> dict:
    record, _ = api.enqueue(dep, users, sets=FAST, **options)
    return record


def check_all_done(dep: Path, ids: list[str], users: list[int]) -> list[dict]:
    """Every request done with exactly one ledger entry, the chain intact, the rows gone."""
    deployment = Deployment(dep)
    entries = api.ledger(dep)
    for rid in ids:
        record = deployment.request(rid)
        assert record is not None and record["state"] == "done", record
        assert [e.get("request_id") for e in entries].count(rid) == 1
    assert user_rows(dep, users) == 0
    assert deployment.queue.unfinished() == 0
    assert not any((dep / "versions").glob(".*"))  # no half-written version left
    return entries


def test_enqueue_then_one_coalesced_pass(dep: Path, capsys: pytest.CaptureFixture) -> None:
    a, b, c = train_users(dep)[:3]
    sets = [x for s in FAST for x in ("--set", s)]
    for users in (str(a), f"{b},{c}"):
        code = cli.main(["forget", "--deployment", str(dep), "--users", users, "--enqueue", *sets])
        assert code == 0
    out = capsys.readouterr().out
    assert "queued (position 1)" in out and "queued (position 2)" in out
    assert Deployment(dep).current() == "v0001" and user_rows(dep, [a]) > 0  # nothing ran yet

    assert cli.main(["work", "--deployment", str(dep), "--once"]) == 0
    out = capsys.readouterr().out
    assert out.count("done; version v0002") == 2  # one pass served both
    entries = api.ledger(dep)
    one, two = entries[1], entries[2]
    keys = Deployment(dep).keys
    assert (one["users"], two["users"]) == (keys.pseudonyms([a]), keys.pseudonyms(sorted([b, c])))
    assert one["version"] == two["version"] == "v0002" and one["parent_version"] == "v0001"
    assert one["pass"] == two["pass"] and one["pass"]["users"] == keys.pseudonyms(sorted([a, b, c]))
    assert one["data_sha256_after"] == Store(dep / "store.sqlite").data_sha256()
    assert one["checks"]["members"] == one["rows_removed"]["train"] > 0
    assert 0.0 <= one["checks"]["mia_auc"]["after"] <= 1.0
    assert one["checks"]["valid_auc"]["after"] is not None
    assert len(one["model_sha256"]) == 64 and len(one["adapter_sha256"]) == 64
    check_all_done(dep, [one["request_id"], two["request_id"]], [a, b, c])
    record = Deployment(dep).request(one["request_id"])
    assert record["version"] == "v0002" and record["ledger_seq"] == 2 and record["seconds"] > 0
    assert record["users"] == keys.pseudonyms([a])  # a done record keeps no plaintext id
    assert entries[3]["kind"] == "purge" and Deployment(dep).versions() == ["v0002"]
    assert not any((dep / "requests").glob("pass-*"))  # no copies of personal data kept

    assert cli.main(["work", "--deployment", str(dep), "--once"]) == 0
    assert "nothing queued" in capsys.readouterr().out


def test_pass_version_records_weights_sha256_and_refuses_changed_weights(dep: Path) -> None:
    """A version a pass wrote records its weights' sha256 like any run; a weight file changed
    afterwards makes loading that version one clear error."""
    user = train_users(dep)[0]
    enqueue(dep, [user])
    with Worker(dep) as worker:
        worker.drain()
    version = Deployment(dep).version_dir("v0002")
    recorded = json.loads((version / "manifest.json").read_text())["weights_sha256"]
    files = sorted(version.rglob("*.safetensors"))
    assert files and recorded == {p.relative_to(version).as_posix(): sha256_file(p) for p in files}
    Deployment(dep).load_model("v0002")  # intact: loads

    weights = files[0]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of a tensor: the safetensors header still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(E2URecError, match="changed after the run was written"):
        Deployment(dep).load_model("v0002")


def test_passes_respect_max_users_and_order(dep: Path) -> None:
    users = train_users(dep)[:3]
    ids = [enqueue(dep, [u])["request_id"] for u in users]
    with Worker(dep, max_users=2) as worker:
        served = worker.drain()
    assert [r["request_id"] for r in served] == ids
    assert [r["version"] for r in served] == ["v0002", "v0002", "v0003"]
    check_all_done(dep, ids, users)
    assert Deployment(dep).current() == "v0003"


def test_max_wait_holds_a_pass_until_it_fills(dep: Path) -> None:
    a, b = train_users(dep)[:2]
    enqueue(dep, [a])
    with Worker(dep, max_users=2, max_wait=3600) as worker:
        assert not worker.ready() and worker.step() == []  # waits for company
        enqueue(dep, [b])
        assert worker.ready()  # two users fill the pass
        served = worker.step()
    assert [r["version"] for r in served] == ["v0002", "v0002"]


def test_overlapping_requests_are_merged(dep: Path) -> None:
    a, b = train_users(dep)[:2]
    first = enqueue(dep, [a])
    second = enqueue(dep, [a, b], request_id="second")
    assert second["merged_with"] == [first["request_id"]]
    again, new = api.enqueue(dep, [a], sets=FAST)  # the same request twice: one record
    assert not new and again["request_id"] == first["request_id"]
    with Worker(dep) as worker:
        worker.drain()
        entries = check_all_done(dep, [first["request_id"], "second"], [a, b])
        assert entries[1]["version"] == entries[2]["version"] == "v0002"
        keys = Deployment(dep).keys
        assert entries[1]["pass"]["users"] == keys.pseudonyms(sorted([a, b]))  # a unlearned once
        late = enqueue(dep, [a], request_id="late")  # a is already forgotten
        worker.drain()
    record = Deployment(dep).request(late["request_id"])
    assert record["state"] == "done" and record["version"] == "v0002"  # no new version
    entry = api.ledger(dep)[-1]
    assert entry["no_training_data"] == keys.pseudonyms([a]) and entry["method"] is None
    assert Deployment(dep).current() == "v0002"


def test_bad_requests_queue_nothing(dep: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = train_users(dep)[:2]
    queue = Deployment(dep).queue
    with pytest.raises(E2URecError, match="90001"):
        enqueue(dep, [a, 90001])
    with pytest.raises(E2URecError, match="no users"):
        enqueue(dep, [])
    with pytest.raises(E2URecError, match="weight"):
        api.enqueue(dep, [a], sets=["weight=2"])
    with pytest.raises(E2URecError, match="request id"):
        enqueue(dep, [a], request_id="../x")
    assert queue.unfinished() == 0
    enqueue(dep, [a], request_id="r1")
    with pytest.raises(Conflict, match="already used"):
        enqueue(dep, [b], request_id="r1")
    with pytest.raises(QueueFull, match="full"):
        enqueue(dep, [b], limit=1)
    assert queue.unfinished() == 1

    for args, message in (
        (["--users", "90001"], "unknown user"),
        (["--users", str(b), "--request-id", "r1"], "already used"),
        (["--request-id", "r1"], "--enqueue needs --users"),
    ):
        code = cli.main(["forget", "--deployment", str(dep), "--enqueue", *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    # a synchronous forget does not run while a worker holds DEP (nothing is queued)
    with Worker(dep):
        with pytest.raises(Busy, match="a queue worker"):
            api.forget(dep, [b], sets=FAST)
        with pytest.raises(Busy, match="busy"):
            Worker(dep).__enter__()
    assert queue.unfinished() == 1
    # nor does it jump the queue: the request queued before it is served first
    result = api.forget(dep, [b], sets=FAST)
    assert result.status == "done" and Deployment(dep).request("r1")["state"] == "done"
    assert [e.get("request_id") for e in api.ledger(dep) if e["kind"] == "forget"][0] == "r1"


def test_failed_pass_records_the_reason_and_the_queue_moves_on(
    dep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from e2urec.train import loop

    a, b = train_users(dep)[:2]
    broken = enqueue(dep, [a], request_id="broken")
    calls = {"n": 0}
    original_fit = loop.fit

    def fit_once_broken(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory")
        return original_fit(*args, **kwargs)

    monkeypatch.setattr("e2urec.train.loop.fit", fit_once_broken)
    with Worker(dep) as worker:
        worker.drain()
        record = Deployment(dep).request(broken["request_id"])
        assert record["state"] == "failed" and "out of memory" in record["error"]
        assert user_rows(dep, [a]) > 0 and Deployment(dep).current() == "v0001"
        ok = enqueue(dep, [b])
        again, new = api.enqueue(dep, [a], sets=FAST, request_id="broken")  # resubmitted
        assert new and again["state"] == "queued"
        worker.drain()
    check_all_done(dep, [ok["request_id"], "broken"], [a, b])


@pytest.mark.parametrize(
    "where",
    ["claim", "save", "switch", "ledger", "finish"],
)
def test_crash_at_any_step_is_finished_by_the_next_worker(
    dep: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from e2urec.deploy import worker as worker_module

    users = train_users(dep)[:2]
    ids = [enqueue(dep, [u])["request_id"] for u in users]
    digest = Store(dep / "store.sqlite").data_sha256()

    def crash(*args: object, **kwargs: object) -> None:
        raise Killed(where)

    targets = {
        "claim": (Queue, "set_hashes"),
        "save": (worker_module, "model_sha256"),
        "switch": (Deployment, "switch"),
        "ledger": (Ledger, "extend"),
        "finish": (Queue, "finish"),
    }
    target, name = targets[where]
    real = getattr(target, name)
    if where in ("ledger", "finish"):  # crash after the real step ran: its effect is kept

        def crash(*args: object, **kwargs: object) -> None:  # noqa: F811
            real(*args, **kwargs)
            raise Killed(where)

    monkeypatch.setattr(target, name, crash)
    with pytest.raises(Killed), Worker(dep) as worker:
        worker.drain()
    monkeypatch.undo()
    deployment = Deployment(dep)
    switched = deployment.current() == "v0002"
    assert switched == (where in ("ledger", "finish"))  # never switched before the ledger step
    if where in ("claim", "save"):
        assert not (dep / "versions" / "v0002").exists()
        assert deployment.store.data_sha256() == digest
    (dep / "versions" / ".v0002.x.partial").mkdir()  # what a kill -9 mid-write leaves
    with Worker(dep) as worker:
        worker.drain()
    entries = check_all_done(dep, ids, users)
    assert deployment.current() == "v0002" and deployment.versions() == ["v0002"]
    assert [e["kind"] for e in entries] == ["deploy", "forget", "forget", "purge"]


def test_kill_9_during_a_pass(dep: Path) -> None:
    """A real `e2urec work` process killed at a random moment of its pass; a new one finishes."""
    users = train_users(dep)[:3]
    ids = [enqueue(dep, [u])["request_id"] for u in users]
    command = [sys.executable, "-m", "e2urec", "work", "--deployment", str(dep)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert worker.stderr is not None
    for line in worker.stderr:
        if line.startswith("pass "):
            break
    time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    done = subprocess.run([*command, "--once"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    check_all_done(dep, ids, users)


def test_a_worker_s_later_passes_name_a_base_model_that_exists(dep: Path) -> None:
    """The model a pass builds in memory is named after its version folder, so the next pass's
    adapters do not name the purged version it was copied from (peft then looks it up, on the
    Hub when the folder is gone, and warns)."""
    a, b = train_users(dep)[:2]
    first = enqueue(dep, [a])
    enqueue(dep, [b], request_id="second")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Could not find a config file")
        with Worker(dep, max_users=1) as worker:
            worker.drain()
            assert Path(worker.warm.model.recommender.model.name_or_path).is_dir()
    check_all_done(dep, [first["request_id"], "second"], [a, b])
    assert Deployment(dep).versions() == ["v0003"]
