"""The deployment's durable queue of deletion requests: two tables in DEP/store.sqlite.

requests: one row per accepted request: request_id, position (processing order), users, method
  and settings, reason, state (queued → running → done, or failed with `error`), times (unix
  seconds), the pass that served it, its version, its checks and the rows removed for its users.
passes: one row per unlearning pass: the union of its requests' users, those that still held
  training rows (`unlearned_users`), method and settings, parent and new version, the data
  hashes before and after, timings, state (running → done | failed).

`enqueue` checks a request and records it in one transaction, so once it returns no crash loses
it. `claim` turns the oldest queued requests (same method and settings; their users' union at
most `max_users`, the first request always fits) into one running pass in one transaction;
`finish` marks the pass and its requests done in one transaction once the ledger holds their
entries; `fail` puts the reason on them. A running pass is found again by `claim` after a crash.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from e2urec.deploy.store import Store
from e2urec.errors import E2URecError

QUEUE_LIMIT = 1000
STATES = ("queued", "running", "done", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, position INTEGER NOT NULL, users TEXT NOT NULL,
    method TEXT NOT NULL, sets TEXT NOT NULL, reason TEXT, state TEXT NOT NULL,
    created REAL NOT NULL, started REAL, finished REAL, pass_id INTEGER, version TEXT,
    checks TEXT, rows TEXT, error TEXT, merged_with TEXT NOT NULL, ledger_seq INTEGER);
CREATE INDEX IF NOT EXISTS requests_state ON requests (state, position);
CREATE TABLE IF NOT EXISTS passes (
    pass_id INTEGER PRIMARY KEY AUTOINCREMENT, state TEXT NOT NULL, users TEXT NOT NULL,
    unlearned_users TEXT NOT NULL, method TEXT NOT NULL, sets TEXT NOT NULL,
    parent_version TEXT NOT NULL, version TEXT NOT NULL, data_sha256_before TEXT,
    data_sha256_after TEXT, created REAL NOT NULL, finished REAL, timings TEXT, error TEXT);
"""


class Conflict(E2URecError):
    """A request id already used for other users, method or settings."""


class QueueFull(E2URecError):
    """The queue holds its limit of unfinished requests."""


def iso(seconds: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC (milliseconds), None stays None."""
    if seconds is None:
        return None
    moment = _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds")


@dataclass
class Pass:
    """One unlearning pass over the union of some queued requests' users."""

    pass_id: int
    users: list[int]
    unlearned_users: list[int]
    method: str
    sets: list[str]
    parent_version: str
    version: str
    requests: list[dict[str, Any]]
    data_sha256_before: str | None = None
    data_sha256_after: str | None = None


class Queue:
    """The request queue of the deployment whose store is `store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.connect() as conn:
            conn.executescript(SCHEMA)

    # ---------------------------------------------------------------- accepting
    def enqueue(
        self,
        request_id: str,
        users: Sequence[int],
        method: str,
        sets: Sequence[str],
        reason: str | None,
        limit: int = QUEUE_LIMIT,
        done_elsewhere: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Record a checked request (users known, method settings valid); returns its record
        and whether it is new. The same id with the same users, method and settings gives the
        existing record (a failed one is queued again); with others, `Conflict`. A request the
        ledger already records (`done_elsewhere`, a synchronous `forget`) is answered from it.
        A full queue (`limit` unfinished requests) raises `QueueFull`."""
        users, sets = sorted(set(int(u) for u in users)), list(sets)
        if done_elsewhere is not None:
            self._same(request_id, done_elsewhere.get("users", []), users, None, None, "", "")
            return ledger_record(done_elsewhere), False
        with self.store.transaction() as conn:
            row = conn.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,))
            old = _record(row.fetchone(), row.description)
            if old is not None:
                self._same(
                    request_id, old["users"], users, old["method"], method, old["sets"], sets
                )
                if old["state"] != "failed":
                    return old, False
            waiting = conn.execute(
                "SELECT COUNT(*) FROM requests WHERE state IN ('queued', 'running')"
            ).fetchone()[0]
            if waiting >= limit:
                raise QueueFull(
                    f"the deletion queue is full ({waiting} unfinished requests, limit {limit}); "
                    "retry later"
                )
            merged = [
                r["request_id"]
                for r in self._select(conn, "state IN ('queued', 'running')")
                if set(r["users"]) & set(users)
            ]
            position = conn.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM requests")
            values = {
                "request_id": request_id,
                "position": position.fetchone()[0],
                "users": json.dumps(users),
                "method": method,
                "sets": json.dumps(sets),
                "reason": reason,
                "state": "queued",
                "created": time.time(),
                "merged_with": json.dumps(merged),
            }
            conn.execute("DELETE FROM requests WHERE request_id = ?", (request_id,))
            conn.execute(
                f"INSERT INTO requests ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
            )
        return self.get(request_id), True

    @staticmethod
    def _same(
        request_id: str,
        old_users: list[int],
        users: list[int],
        old_method: str | None,
        method: str | None,
        old_sets: Any,
        sets: Any,
    ) -> None:
        if sorted(old_users) != users or old_method != method or list(old_sets) != list(sets):
            raise Conflict(
                f"request id {request_id!r} was already used for user(s) "
                f"{', '.join(map(str, old_users))}"
                + (f" with method {old_method}" if old_method else "")
                + "; choose another request id"
            )

    # ---------------------------------------------------------------- reading
    def get(self, request_id: str) -> dict[str, Any] | None:
        """The record of request `request_id`, or None."""
        with self.store.connect() as conn:
            found = self._select(conn, "request_id = ?", (request_id,))
        return found[0] if found else None

    def requests(self, states: Sequence[str] = STATES) -> list[dict[str, Any]]:
        """Records in the given states, in queue order."""
        marks = ", ".join("?" * len(states))
        with self.store.connect() as conn:
            return self._select(conn, f"state IN ({marks})", tuple(states))

    def unfinished(self) -> int:
        """How many requests are queued or running."""
        return len(self.requests(("queued", "running")))

    def oldest_wait(self) -> float | None:
        """Seconds the oldest queued request has waited (None: nothing queued)."""
        queued = self.requests(("queued",))
        return None if not queued else time.time() - min(r["created_s"] for r in queued)

    @staticmethod
    def _select(
        conn: sqlite3.Connection, where: str, params: tuple[Any, ...] = ()
    ) -> list[dict[str, Any]]:
        cursor = conn.execute(f"SELECT * FROM requests WHERE {where} ORDER BY position", params)
        return [_record(row, cursor.description) for row in cursor.fetchall()]

    # ---------------------------------------------------------------- passes
    def running_pass(self) -> Pass | None:
        """The pass a worker started and did not finish (after a crash), if any."""
        with self.store.connect() as conn:
            row = conn.execute("SELECT pass_id FROM passes WHERE state = 'running'").fetchone()
            return None if row is None else self._pass(conn, row[0])

    def claim(self, max_users: int, parent_version: str, next_version: str) -> Pass | None:
        """Turn the oldest queued requests into a running pass (see the module docstring);
        None when nothing is queued. The pass's version is `next_version`, or the parent's
        when none of its users still holds training rows (nothing to unlearn)."""
        with self.store.transaction() as conn:
            queued = self._select(conn, "state = 'queued'")
            if not queued:
                return None
            first = queued[0]
            taken, users = [first], set(first["users"])
            for request in queued[1:]:
                if (request["method"], request["sets"]) != (first["method"], first["sets"]):
                    break
                union = users | set(request["users"])
                if len(union) > max_users:
                    break
                taken.append(request)
                users = union
            ordered = sorted(users)
            marks = ", ".join("?" * len(ordered))
            holding = conn.execute(
                f"SELECT DISTINCT user_id FROM samples WHERE split = 'train' "
                f"AND user_id IN ({marks})",
                ordered,
            )
            unlearned = sorted(int(u) for (u,) in holding)
            cursor = conn.execute(
                "INSERT INTO passes (state, users, unlearned_users, method, sets, parent_version, "
                "version, created) VALUES ('running', ?, ?, ?, ?, ?, ?, ?)",
                (
                    json.dumps(ordered),
                    json.dumps(unlearned),
                    first["method"],
                    json.dumps(first["sets"]),
                    parent_version,
                    next_version if unlearned else parent_version,
                    time.time(),
                ),
            )
            pass_id = int(cursor.lastrowid or 0)
            started = time.time()
            for request in taken:
                rows = _rows_of(conn, request["users"])
                conn.execute(
                    "UPDATE requests SET state = 'running', started = ?, pass_id = ?, rows = ? "
                    "WHERE request_id = ?",
                    (started, pass_id, json.dumps(rows), request["request_id"]),
                )
            return self._pass(conn, pass_id)

    def set_hashes(self, pass_id: int, before: str, after: str) -> None:
        """Record a pass's data hashes (before and after its users' rows leave the store)."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE passes SET data_sha256_before = ?, data_sha256_after = ? WHERE pass_id = ?",
                (before, after, pass_id),
            )

    def finish(
        self,
        work: Pass,
        checks: dict[str, Any],
        ledger_seq: dict[str, int],
        timings: dict[str, Any],
    ) -> None:
        """Mark the pass and its requests done (one transaction); `checks` per request id."""
        finished = time.time()
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE passes SET state = 'done', finished = ?, timings = ? WHERE pass_id = ?",
                (finished, json.dumps(timings), work.pass_id),
            )
            for request in work.requests:
                rid = request["request_id"]
                conn.execute(
                    "UPDATE requests SET state = 'done', finished = ?, version = ?, checks = ?, "
                    "ledger_seq = ? WHERE request_id = ?",
                    (finished, work.version, json.dumps(checks.get(rid)), ledger_seq[rid], rid),
                )

    def fail(self, work: Pass, reason: str) -> None:
        """Mark the pass and its requests failed with `reason` (one transaction)."""
        finished = time.time()
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE passes SET state = 'failed', finished = ?, error = ? WHERE pass_id = ?",
                (finished, reason, work.pass_id),
            )
            conn.execute(
                "UPDATE requests SET state = 'failed', finished = ?, error = ? WHERE pass_id = ?",
                (finished, reason, work.pass_id),
            )

    def _pass(self, conn: sqlite3.Connection, pass_id: int) -> Pass:
        cursor = conn.execute("SELECT * FROM passes WHERE pass_id = ?", (pass_id,))
        values = dict(zip([c[0] for c in cursor.description], cursor.fetchone(), strict=True))
        return Pass(
            pass_id=values["pass_id"],
            users=json.loads(values["users"]),
            unlearned_users=json.loads(values["unlearned_users"]),
            method=values["method"],
            sets=json.loads(values["sets"]),
            parent_version=values["parent_version"],
            version=values["version"],
            requests=self._select(conn, "pass_id = ? AND state = 'running'", (values["pass_id"],)),
            data_sha256_before=values["data_sha256_before"],
            data_sha256_after=values["data_sha256_after"],
        )


def _rows_of(conn: sqlite3.Connection, users: list[int]) -> dict[str, int]:
    """Rows the store holds for `users`: per split, ratings and profiles."""
    marks = ", ".join("?" * len(users))
    counts = {"train": 0, "valid": 0, "test": 0}
    counts.update(
        conn.execute(
            f"SELECT split, COUNT(*) FROM samples WHERE user_id IN ({marks}) GROUP BY split",
            users,
        ).fetchall()
    )
    for table in ("ratings", "profiles"):
        counts[table] = conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE user_id IN ({marks})", users
        ).fetchone()[0]
    return counts


def _record(row: tuple[Any, ...] | None, description: Any) -> dict[str, Any] | None:
    """A requests row as the record `GET /requests/ID` returns."""
    if row is None:
        return None
    values = dict(zip([c[0] for c in description], row, strict=True))
    started, finished = values["started"], values["finished"]
    record = {
        "request_id": values["request_id"],
        "state": values["state"],
        "users": json.loads(values["users"]),
        "method": values["method"],
        "sets": json.loads(values["sets"]),
        "reason": values["reason"],
        "position": values["position"],
        "created": iso(values["created"]),
        "started": iso(started),
        "finished": iso(finished),
        "created_s": values["created"],
        "seconds": None if finished is None else round(finished - values["created"], 3),
        "merged_with": json.loads(values["merged_with"]),
        "pass": values["pass_id"],
        "version": values["version"],
        "checks": None if values["checks"] is None else json.loads(values["checks"]),
        "rows_removed": None if values["rows"] is None else json.loads(values["rows"]),
        "ledger_seq": values["ledger_seq"],
    }
    if values["error"] is not None:
        record["error"] = values["error"]
    return record


def ledger_record(entry: dict[str, Any]) -> dict[str, Any]:
    """A request served by a synchronous `forget`, as a record from its ledger entry."""
    return {
        "request_id": entry["request_id"],
        "state": "done",
        "users": entry.get("users", []),
        "method": entry.get("method"),
        "finished": entry.get("time"),
        "version": entry.get("version"),
        "checks": entry.get("checks"),
        "rows_removed": entry.get("rows_removed"),
        "ledger_seq": entry.get("seq"),
    }
