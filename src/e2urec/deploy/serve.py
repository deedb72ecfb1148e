"""`e2urec serve`: a FastAPI app over one deployment (routes, bodies, statuses and tokens are
documented in docs/production.md, "HTTP API").

POST /forget (the forget token, $E2UREC_SERVE_TOKEN) records a deletion request in the
deployment's durable queue and answers at once; POST /predict, GET /requests/ID and GET /ledger
need the read token ($E2UREC_READ_TOKEN) or the forget token, and are open when no token is set
(which `serve` allows on a loopback address only). Refusals are one line, {"detail": ...}.

A worker thread (`e2urec.deploy.worker`, started with the app unless worker=False) serves the
queue in coalesced passes and swaps its new model in under a lock; predictions keep being served
from the current version meanwhile (FastAPI runs the handlers in a thread pool). Without the
thread (another process runs `e2urec work`), a new current version is loaded on the next
prediction.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from e2urec.deploy.deployment import Deployment
from e2urec.deploy.ledger import entry_hash
from e2urec.deploy.queue import QUEUE_LIMIT, Conflict, QueueFull
from e2urec.deploy.worker import MAX_USERS, Worker
from e2urec.errors import E2URecError
from e2urec.runs import RunModel

log = logging.getLogger("e2urec.serve")

TOKEN_ENV = "E2UREC_SERVE_TOKEN"
READ_TOKEN_ENV = "E2UREC_READ_TOKEN"
UNAUTHORIZED = "missing or wrong bearer token"


class PredictBody(BaseModel):
    """A prediction request."""

    user: int
    items: list[int] = Field(min_length=1)


class ForgetBody(BaseModel):
    """A deletion request."""

    users: list[int] = Field(min_length=1)
    purpose: Literal["privacy", "pollution"] = "privacy"
    method: str | None = None
    reason: str | None = None
    request_id: str | None = None
    sets: list[str] = Field(default_factory=list)


class Live:
    """The version that serves and its loaded model, swapped together under a lock. With a
    `worker`, the queue worker runs in a thread while `running`: it takes the deployment,
    hands its warm model here (one model in memory) and swaps in each new one."""

    def __init__(self, deployment: Deployment, worker: Worker | None = None) -> None:
        self.deployment, self.worker = deployment, worker
        self._lock = threading.Lock()
        self.version = deployment.current()
        self.model = deployment.load_model(self.version)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name="e2urec-worker", daemon=True)

    def get(self) -> tuple[str, RunModel]:
        """The current (version, model) pair (without a worker: reloaded if it changed)."""
        if self.worker is None and self.deployment.current() != self.version:
            version = self.deployment.current()
            self.set(version, self.deployment.load_model(version))
        with self._lock:
            return self.version, self.model

    def set(self, version: str, model: RunModel) -> None:
        """Serve `version` with `model` from now on."""
        with self._lock:
            self.version, self.model = version, model

    def _work(self) -> None:
        try:
            with self.worker as worker:  # type: ignore[union-attr]
                self.set(worker.warm.version, worker.warm.model)  # type: ignore[union-attr]
                worker.on_switch = self.set
                worker.run(self.stop)
        except Exception as exc:  # noqa: BLE001 (reported; predictions go on without a worker)
            log.error("e2urec worker stopped: %s", exc)

    @contextlib.contextmanager
    def running(self, timeout: float = 600.0) -> Iterator[None]:
        """The worker thread, if any, runs during the block and stops after the pass in
        progress (a pass cut short is finished on the next start)."""
        if self.worker is not None:
            self.thread.start()
        try:
            yield
        finally:
            self.stop.set()
            if self.worker is not None:
                self.thread.join(timeout)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            return f"malformed JSON body: {error.get('ctx', {}).get('error', error['msg'])}"
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error['msg']}")
    return "invalid request: " + "; ".join(parts)


class Tokens:
    """The forget token and the read token (default: the environment); `forget(request)` and
    `read(request)` (route dependencies) refuse a request with an HTTPException."""

    def __init__(self, forget: str | None = None, read: str | None = None) -> None:
        self.forget_token = forget if forget is not None else os.environ.get(TOKEN_ENV) or None
        self.read_token = read if read is not None else os.environ.get(READ_TOKEN_ENV) or None

    def _require(self, request: Request, *tokens: str | None) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(
            t is not None and hmac.compare_digest(given.encode(), t.encode()) for t in tokens
        ):
            raise HTTPException(401, UNAUTHORIZED)

    def forget(self, request: Request) -> None:
        """Refuse unless the forget token was given (403 when none is configured)."""
        if self.forget_token is None:
            raise HTTPException(
                403, f"forgetting is disabled: start the server with ${TOKEN_ENV} set"
            )
        self._require(request, self.forget_token)

    def read(self, request: Request) -> None:
        """Refuse unless a token was given (or none is configured)."""
        if self.forget_token is not None or self.read_token is not None:
            self._require(request, self.read_token, self.forget_token)


def create_app(
    deployment: str | Path,
    token: str | None = None,
    worker: bool = True,
    max_users: int = MAX_USERS,
    max_wait: float = 0.0,
    queue_limit: int = QUEUE_LIMIT,
    read_token: str | None = None,
) -> FastAPI:
    """The app serving `deployment`; `token` and `read_token` (default: the environment, see
    the module docstring) guard its routes. With `worker`, a queue worker thread (max_users,
    max_wait: see `Worker`) holds the deployment while the app runs; creating the app fails if
    another worker holds it."""
    dep = Deployment(deployment)
    tokens = Tokens(token, read_token)
    if worker:
        with dep.lock("a queue worker"):  # one clear error now if another worker holds DEP
            pass
    live = Live(dep, Worker(dep, max_users=max_users, max_wait=max_wait) if worker else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with live.running():
            yield

    app = FastAPI(
        title="e2urec", description="LLM recommender with deletion requests", lifespan=lifespan
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    _read_routes(app, dep, live, tokens)
    _forget_route(app, dep, tokens, queue_limit)
    return app


@contextlib.contextmanager
def _refused(status: int) -> Iterator[None]:
    """An E2URecError in the block answers `status` (a conflict 409, a full queue 503)."""
    try:
        yield
    except E2URecError as exc:
        status = {Conflict: 409, QueueFull: 503}.get(type(exc), status)
        raise HTTPException(status, str(exc)) from None


def _read_routes(app: FastAPI, dep: Deployment, live: Live, tokens: Tokens) -> None:
    @app.post("/predict", dependencies=[Depends(tokens.read)])
    def predict(body: PredictBody) -> Any:
        version, model = live.get()
        with _refused(404):
            scores = dep.predict(body.user, body.items, model=model)
        return {"user": body.user, "version": version, "scores": scores}

    @app.get("/requests/{request_id}", dependencies=[Depends(tokens.read)])
    def request_state(request_id: str) -> Any:
        with _refused(409):
            record = dep.request(request_id)
        if record is None:
            return _error(404, f"no deletion request {request_id!r}")
        return {k: v for k, v in record.items() if k != "created_s"}

    @app.get("/ledger", dependencies=[Depends(tokens.read)])
    def ledger(expect_head: str | None = None) -> Any:
        with _refused(409):
            entries = dep.ledger.entries(expect_head)
        head = entry_hash(entries[-1]) if entries else None
        return {"verified": True, "head": head, "entries": entries}


def _forget_route(app: FastAPI, dep: Deployment, tokens: Tokens, queue_limit: int) -> None:
    @app.post("/forget", dependencies=[Depends(tokens.forget)])
    def forget(body: ForgetBody) -> Any:
        with _refused(422):
            options = body.model_dump(exclude={"users"})
            record, _ = dep.enqueue(body.users, limit=queue_limit, **options)
        fields = ("request_id", "state", "position", "merged_with", "version")
        content = {k: record[k] for k in fields if record.get(k) is not None}
        return JSONResponse(status_code=200 if record["state"] == "done" else 202, content=content)


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    deployment: str | Path, host: str = "127.0.0.1", port: int = 8000, **options: Any
) -> None:
    """Run the app with uvicorn until interrupted (`options`: see `create_app`). A host that is
    not a loopback address needs the tokens set (otherwise one clear error, nothing served)."""
    import uvicorn

    tokens = Tokens(options.get("token"), options.get("read_token"))
    if not is_loopback(host) and tokens.forget_token is None and tokens.read_token is None:
        raise E2URecError(
            f"refusing to serve on {host} without tokens: set ${TOKEN_ENV} (forget) and "
            f"${READ_TOKEN_ENV} (predict, requests, ledger), or serve on 127.0.0.1"
        )
    uvicorn.run(create_app(deployment, **options), host=host, port=port, log_level="info")
