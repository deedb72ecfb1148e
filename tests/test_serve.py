"""`e2urec serve`: the real server on 127.0.0.1, driven with httpx; deletion requests are queued
(202) and served by the server's worker thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from test_deploy import FAST, build_world, train_users, user_rows

from e2urec import api
from e2urec.deploy.serve import TOKEN_ENV, create_app

TOKEN = "s3cret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Running:
    """A uvicorn server in a thread, stopped by `stop()`."""

    def __init__(self, dep: Path, token: str | None, **options: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(dep, token=token, **options),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_world(tmp_path_factory.mktemp("serve"))


@pytest.fixture
def dep(world: dict[str, Path], tmp_path: Path) -> Path:
    api.deploy(world["run"], world["data"], tmp_path / "dep")
    return tmp_path / "dep"


@pytest.fixture
def server(dep: Path) -> Iterator[Running]:
    running = Running(dep, TOKEN)
    yield running
    running.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def wait_done(client: httpx.Client, request_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = client.get(f"/requests/{request_id}", headers=AUTH)
        assert reply.status_code == 200, reply.text
        if reply.json()["state"] in ("done", "failed"):
            return reply.json()
        time.sleep(0.1)
    raise AssertionError(f"request {request_id} not done after {timeout} s")


def test_predict_during_forget_then_ledger(server: Running, dep: Path) -> None:
    user, other = train_users(dep)[:2]
    with httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as client:
        reply = client.post("/predict", json={"user": other, "items": [1, 2, 3]})
        assert reply.status_code == 200
        body = reply.json()
        assert body["version"] == "v0001" and set(body["scores"]) == {"1", "2", "3"}

        forget = client.post(
            "/forget", json={"users": [user], "sets": FAST, "reason": "test"}, headers=AUTH
        )
        assert forget.status_code == 202, forget.text
        accepted = forget.json()
        assert accepted["state"] == "queued" and accepted["position"] == 1
        served = []
        while True:
            reply = client.post("/predict", json={"user": other, "items": [1]})
            assert reply.status_code == 200
            served.append(reply.json()["version"])
            state = client.get(f"/requests/{accepted['request_id']}", headers=AUTH).json()
            if state["state"] == "done":
                break
            time.sleep(0.05)  # a client's pace, not a loop that starves the worker thread
        assert len(served) >= 2 and set(served) <= {"v0001", "v0002"}
        assert served[0] == "v0001"
        assert state["version"] == "v0002" and state["checks"]["mia_auc"]["after"] is not None
        again = client.post("/forget", json={"users": [user], "sets": FAST}, headers=AUTH)
        assert again.status_code == 200 and again.json()["state"] == "done"

        assert client.post("/predict", json={"user": other, "items": [1]}).json()["version"] == (
            "v0002"
        )
        gone = client.post("/predict", json={"user": user, "items": [1]})
        assert gone.status_code == 404 and "no stored history" in gone.json()["detail"]
        ledger = client.get("/ledger").json()
        kinds = [e["kind"] for e in ledger["entries"]]
        assert ledger["verified"] and kinds == ["deploy", "forget", "purge"]
        anchored = client.get("/ledger", params={"expect_head": ledger["head"][:16]})
        assert anchored.status_code == 200 and anchored.json()["head"] == ledger["head"]
        wrong = client.get("/ledger", params={"expect_head": "0" * 64})
        assert wrong.status_code == 409 and "expected head" in wrong.json()["detail"]


def test_bad_requests(server: Running, dep: Path) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        reply = client.post(
            "/predict",
            content=b'{"user": 1, "items": [1,',
            headers={"content-type": "application/json", **AUTH},
        )
        assert reply.status_code == 422 and "malformed JSON" in reply.json()["detail"]
        reply = client.post("/predict", json={"user": "x", "items": []}, headers=AUTH)
        assert reply.status_code == 422 and reply.json()["detail"].startswith("invalid request")
        reply = client.post("/predict", json={"user": 987654, "items": [1]}, headers=AUTH)
        assert reply.status_code == 404 and "unknown user" in reply.json()["detail"]
        reply = client.post("/forget", json={"users": [1]})
        assert reply.status_code == 401
        reply = client.post("/forget", json={"users": [1]}, headers={"Authorization": "Bearer no"})
        assert reply.status_code == 401 and "token" in reply.json()["detail"]
        assert client.get("/requests/abc").status_code == 401
        reply = client.post("/forget", json={"users": [987654]}, headers=AUTH)
        assert reply.status_code == 422 and "987654" in reply.json()["detail"]
        reply = client.post("/forget", json={"users": []}, headers=AUTH)
        assert reply.status_code == 422 and reply.json()["detail"].startswith("invalid request")
        reply = client.get("/requests/nope", headers=AUTH)
        assert reply.status_code == 404 and "nope" in reply.json()["detail"]


def test_queue_refusals_with_a_separate_worker(dep: Path) -> None:
    """Without the worker thread requests wait in the queue: a reused id is 409, a full
    queue 503; `e2urec work` then serves them and predictions pick up the new version."""
    from e2urec.deploy.worker import Worker

    first, second = train_users(dep)[:2]
    running = Running(dep, TOKEN, worker=False, queue_limit=1)
    try:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            body = {"users": [first], "sets": FAST, "request_id": "ticket-1"}
            assert client.post("/forget", json=body, headers=AUTH).status_code == 202
            reply = client.post("/forget", json={**body, "users": [second]}, headers=AUTH)
            assert reply.status_code == 409 and "already used" in reply.json()["detail"]
            reply = client.post("/forget", json={"users": [second], "sets": FAST}, headers=AUTH)
            assert reply.status_code == 503 and "full" in reply.json()["detail"]
            with Worker(dep) as worker:
                worker.drain()
            assert wait_done(client, "ticket-1")["version"] == "v0002"
            reply = client.post("/predict", json={"user": second, "items": [1]}, headers=AUTH)
            assert reply.json()["version"] == "v0002"
    finally:
        running.stop()


def test_concurrent_stream_all_done(server: Running, dep: Path) -> None:
    """Requests posted at once are all accepted, coalesced, done; the ledger verifies."""
    users = train_users(dep)[:6]
    bodies = [{"users": [u], "sets": FAST, "request_id": f"s{i}"} for i, u in enumerate(users)]
    bodies += [{"users": users[:2], "sets": FAST, "request_id": "overlap"}]

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{server.url}/forget", json=body, headers=AUTH, timeout=60)

    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(post, bodies))
    assert all(r.status_code == 202 for r in replies), [r.text for r in replies]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        done = [wait_done(client, b["request_id"]) for b in bodies]
        assert all(d["state"] == "done" for d in done)
        assert len({d["pass"] for d in done}) < len(bodies)  # coalesced
        ledger = client.get("/ledger", headers=AUTH).json()
        forgets = [e for e in ledger["entries"] if e["kind"] == "forget"]
        assert ledger["verified"] and len(forgets) == len(bodies)
    assert user_rows(dep, users) == 0


def test_forget_refused_without_configured_token(
    dep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    running = Running(dep, None)
    try:
        reply = httpx.post(
            f"{running.url}/forget", json={"users": [1]}, headers={"Authorization": "Bearer x"}
        )
        assert reply.status_code == 403 and TOKEN_ENV in reply.json()["detail"]
    finally:
        running.stop()


def test_read_token_guards_predict_requests_and_ledger(dep: Path) -> None:
    """A read token opens /predict, /requests and /ledger but not /forget; no token: 401."""
    running = Running(dep, TOKEN, worker=False, read_token="reader")
    reader = {"Authorization": "Bearer reader"}
    user = train_users(dep)[0]
    try:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            for headers, expected in (({}, 401), (reader, 200), (AUTH, 200)):
                assert client.get("/ledger", headers=headers).status_code == expected
                reply = client.post("/predict", json={"user": user, "items": [1]}, headers=headers)
                assert reply.status_code == expected
            assert client.get("/requests/x", headers={}).status_code == 401
            assert client.get("/requests/x", headers=reader).status_code == 404
            reply = client.post("/forget", json={"users": [user]}, headers=reader)
            assert reply.status_code == 401 and len(reply.json()["detail"].splitlines()) == 1
    finally:
        running.stop()


def test_serve_refuses_a_public_host_without_tokens(
    dep: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from e2urec import cli
    from e2urec.deploy.serve import READ_TOKEN_ENV

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(READ_TOKEN_ENV, raising=False)
    code = cli.main(["serve", "--deployment", str(dep), "--host", "0.0.0.0", "--no-worker"])
    err = capsys.readouterr().err
    assert code == 2 and "without tokens" in err and len(err.strip().splitlines()) == 1
