"""`e2urec serve`: the real server on 127.0.0.1, driven with httpx."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from test_deploy import FAST, build_world, train_users

from e2urec import api
from e2urec.deploy.serve import TOKEN_ENV, create_app

TOKEN = "s3cret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Running:
    """A uvicorn server in a thread, stopped by `stop()`."""

    def __init__(self, dep: Path, token: str | None) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(dep, token=token), host="127.0.0.1", port=self.port, log_level="warning"
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


def test_predict_during_forget_then_ledger(server: Running, dep: Path) -> None:
    user, other = train_users(dep)[:2]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        reply = client.post("/predict", json={"user": other, "items": [1, 2, 3]})
        assert reply.status_code == 200
        body = reply.json()
        assert body["version"] == "v0001" and set(body["scores"]) == {"1", "2", "3"}

        result: dict[str, httpx.Response] = {}

        def run_forget() -> None:
            with httpx.Client(base_url=server.url, timeout=120) as c:
                result["forget"] = c.post(
                    "/forget", json={"users": [user], "sets": FAST, "reason": "test"}, headers=auth
                )

        thread = threading.Thread(target=run_forget)
        thread.start()
        served = []
        while thread.is_alive():
            reply = client.post("/predict", json={"user": other, "items": [1]})
            assert reply.status_code == 200
            served.append(reply.json()["version"])
        thread.join()
        assert len(served) >= 2 and set(served) <= {"v0001", "v0002"}
        assert served[0] == "v0001"
        forget = result["forget"]
        assert forget.status_code == 200, forget.text
        assert forget.json()["status"] == "done" and forget.json()["version"] == "v0002"

        assert client.post("/predict", json={"user": other, "items": [1]}).json()["version"] == (
            "v0002"
        )
        gone = client.post("/predict", json={"user": user, "items": [1]})
        assert gone.status_code == 404 and "no stored history" in gone.json()["detail"]
        ledger = client.get("/ledger").json()
        assert ledger["verified"] and [e["kind"] for e in ledger["entries"]] == ["deploy", "forget"]
        anchored = client.get("/ledger", params={"expect_head": ledger["head"][:16]})
        assert anchored.status_code == 200 and anchored.json()["head"] == ledger["head"]
        wrong = client.get("/ledger", params={"expect_head": "0" * 64})
        assert wrong.status_code == 409 and "expected head" in wrong.json()["detail"]


def test_bad_requests(server: Running, dep: Path) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        reply = client.post(
            "/predict",
            content=b'{"user": 1, "items": [1,',
            headers={"content-type": "application/json"},
        )
        assert reply.status_code == 422 and "malformed JSON" in reply.json()["detail"]
        reply = client.post("/predict", json={"user": "x", "items": []})
        assert reply.status_code == 422 and reply.json()["detail"].startswith("invalid request")
        reply = client.post("/predict", json={"user": 987654, "items": [1]})
        assert reply.status_code == 404 and "unknown user" in reply.json()["detail"]
        reply = client.post("/forget", json={"users": [1]})
        assert reply.status_code == 401
        reply = client.post("/forget", json={"users": [1]}, headers={"Authorization": "Bearer no"})
        assert reply.status_code == 401 and "token" in reply.json()["detail"]
        reply = client.post(
            "/forget", json={"users": [987654]}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert reply.status_code == 422 and "987654" in reply.json()["detail"]


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
