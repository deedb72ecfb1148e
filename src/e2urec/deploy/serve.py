"""`e2urec serve`: a FastAPI app over one deployment.

POST /predict {user, items} → {user, version, scores: {item: P(like)}} with the current version.
POST /forget {users, method?, reason?, request_id?, sets?} runs a deletion request; it needs
  `Authorization: Bearer <token>` matching $E2UREC_SERVE_TOKEN (unset: 403, forgetting is
  disabled; missing or wrong: 401). Another forget already running: 409.
GET /ledger → {entries, verified} (a tampered ledger: 409 naming the first bad entry).
Predict lookups that fail (unknown user or item, deleted history): 404.

Predictions keep being served from the current version while a forget runs (FastAPI runs the
handlers in a thread pool); the new version is loaded before the switch, and the model pointer
is swapped under a lock. Bad requests (malformed JSON, wrong fields) get 422 with one clear line.
"""

from __future__ import annotations

import hmac
import os
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from e2urec.deploy.deployment import Busy, Deployment
from e2urec.deploy.ledger import entry_hash
from e2urec.errors import E2URecError
from e2urec.runs import RunModel

TOKEN_ENV = "E2UREC_SERVE_TOKEN"


class PredictBody(BaseModel):
    """A prediction request."""

    user: int
    items: list[int] = Field(min_length=1)


class ForgetBody(BaseModel):
    """A deletion request."""

    users: list[int] = Field(min_length=1)
    method: str = "e2urec"
    reason: str | None = None
    request_id: str | None = None
    sets: list[str] = Field(default_factory=list)


class Live:
    """The version that serves and its loaded model, swapped together under a lock."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self._lock = threading.Lock()
        self.version = deployment.current()
        self.model = deployment.load_model(self.version)

    def get(self) -> tuple[str, RunModel]:
        """The current (version, model) pair."""
        with self._lock:
            return self.version, self.model

    def refresh(self) -> None:
        """Load the deployment's current version if it changed, then swap it in."""
        version = self.deployment.current()
        if version == self.version:
            return
        model = self.deployment.load_model(version)
        with self._lock:
            self.version, self.model = version, model


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


def create_app(deployment: str | Path, token: str | None = None) -> FastAPI:
    """The app serving `deployment`; `token` (default $E2UREC_SERVE_TOKEN) guards /forget."""
    dep = Deployment(deployment)
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    live = Live(dep)
    app = FastAPI(title="e2urec", description="LLM recommender with deletion requests")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.post("/predict")
    def predict(body: PredictBody) -> Any:
        version, model = live.get()
        try:
            scores = dep.predict(body.user, body.items, model=model)
        except E2URecError as exc:
            return _error(404, str(exc))
        return {"user": body.user, "version": version, "scores": scores}

    @app.post("/forget")
    def forget(body: ForgetBody, request: Request) -> Any:
        if token is None:
            return _error(403, f"forgetting is disabled: start the server with ${TOKEN_ENV} set")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            return _error(401, "missing or wrong bearer token")
        try:
            result = dep.forget(
                body.users,
                method=body.method,
                sets=body.sets,
                reason=body.reason,
                request_id=body.request_id,
            )
        except Busy as exc:
            return _error(409, str(exc))
        except E2URecError as exc:
            return _error(422, str(exc))
        live.refresh()
        return {
            "status": result.status,
            "request_id": result.request_id,
            "version": live.get()[0],
            "notes": result.notes,
            "entry": result.entry,
        }

    @app.get("/ledger")
    def ledger(expect_head: str | None = None) -> Any:
        try:
            entries = dep.ledger.entries(expect_head)
        except E2URecError as exc:
            return _error(409, str(exc))
        head = entry_hash(entries[-1]) if entries else None
        return {"verified": True, "head": head, "entries": entries}

    return app


def serve(deployment: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(deployment), host=host, port=port, log_level="info")
