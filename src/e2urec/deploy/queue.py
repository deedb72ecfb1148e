"""The deployment's durable queue of deletion requests (tables `requests` and `passes` of the
store; the SQL is in `store`).

requests: one row per accepted request: request_id, position (processing order), users, method
  and settings, purpose, reason, state (queued → running → done, or failed with `error`), times,
  the pass that served it, its version, its checks and how many rows were removed for its users.
passes: one row per unlearning pass: the union of its requests' users, those that still held
  training rows (`unlearned_users`), method and settings, parent and new version, the data
  hashes before and after, timings, state (running → done | failed).
Once a request is done its users (and its pass's) are kept as keyed pseudonyms only; records
never hold the rows themselves, only their counts.

`enqueue` records a checked request in one transaction, so once it returns no crash loses it.
`claim` turns the oldest queued requests (same method and settings; their users' union at most
`max_users`, the first request always fits) into one running pass in one transaction; `finish`
marks the pass and its requests done in one transaction once the ledger holds their entries;
`fail` puts the reason on them. A running pass is found again after a crash.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from e2urec.deploy import QUEUE_LIMIT
from e2urec.deploy.ledger import iso
from e2urec.deploy.store import Store
from e2urec.errors import E2URecError

STATES = ("queued", "running", "done", "failed")


class Conflict(E2URecError):
    """A request id already used for other users, method or settings."""


class QueueFull(E2URecError):
    """The queue holds its limit of unfinished requests."""


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


JSON_COLUMNS = {"users", "unlearned_users", "sets", "merged_with", "checks", "rows"}
RENAMED = {"pass_id": "pass", "rows": "rows_removed"}


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A queue table row with its JSON columns decoded."""
    return {k: json.loads(v) if k in JSON_COLUMNS and v is not None else v for k, v in row.items()}


def _record(row: dict[str, Any]) -> dict[str, Any]:
    """A requests row as the record `GET /requests/ID` returns."""
    record = {RENAMED.get(k, k): v for k, v in _decoded(row).items()}
    created, started, finished = row["created"], row["started"], row["finished"]
    record.update(created=iso(created), created_s=created, purpose=row["purpose"] or "privacy")
    record["started"] = None if started is None else iso(started)
    record["finished"] = None if finished is None else iso(finished)
    record["seconds"] = None if finished is None else round(finished - created, 3)
    if record["error"] is None:
        del record["error"]
    return record


def ledger_record(entry: dict[str, Any]) -> dict[str, Any]:
    """A request served before the queue existed (a synchronous `forget`), from its entry."""
    keys = ("users", "method", "version", "checks", "rows_removed")
    return {
        "request_id": entry["request_id"],
        "state": "done",
        **{k: entry.get(k) for k in keys},
        "finished": entry.get("time"),
        "ledger_seq": entry.get("seq"),
    }


class Queue:
    """The request queue of the deployment whose store is `store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.ensure_queue()

    def enqueue(
        self,
        request_id: str,
        users: Sequence[int],
        method: str,
        sets: Sequence[str],
        reason: str | None,
        purpose: str = "privacy",
        limit: int = QUEUE_LIMIT,
        names: Sequence[str] = (),
    ) -> tuple[dict[str, Any], bool]:
        """Record a checked request; returns its record and whether it is new. The same id with
        the same users (or their pseudonyms `names`, once done), method and settings gives the
        existing record (a failed one is queued again); with others, `Conflict`. A full queue
        (`limit` unfinished requests) raises `QueueFull`."""
        users, sets = sorted(set(int(u) for u in users)), list(sets)
        with self.store.transaction() as conn:
            found = self.store.select("requests", "request_id = ?", (request_id,), conn)
            if found:
                old = _record(found[0])
                if sorted(old["users"]) not in (users, sorted(names)) or (
                    (old["method"], old["sets"]) != (method, sets)
                ):
                    raise conflict(request_id, old["users"], old["method"])
                if old["state"] != "failed":
                    return old, False
            waiting = self.store.select("requests", "state IN ('queued', 'running')", (), conn)
            if len(waiting) >= limit:
                raise QueueFull(
                    f"the deletion queue is full ({len(waiting)} unfinished requests, limit "
                    f"{limit}); retry later"
                )
            merged = [r["request_id"] for r in waiting if set(json.loads(r["users"])) & set(users)]
            values = {
                "request_id": request_id,
                "position": self.store.next_position(conn),
                "users": json.dumps(users),
                "method": method,
                "sets": json.dumps(sets),
                "purpose": purpose,
                "reason": reason,
                "state": "queued",
                "created": time.time(),
                "merged_with": json.dumps(merged),
            }
            self.store.insert("requests", values, conn)
        return self.get(request_id) or {}, True

    def get(self, request_id: str) -> dict[str, Any] | None:
        """The record of request `request_id`, or None."""
        found = self.store.select("requests", "request_id = ?", (request_id,))
        return _record(found[0]) if found else None

    def requests(self, states: Sequence[str] = STATES) -> list[dict[str, Any]]:
        """Records in the given states, in queue order."""
        where = f"state IN ({', '.join('?' * len(states))})"
        return [_record(r) for r in self.store.select("requests", where, tuple(states))]

    def unfinished(self) -> int:
        """How many requests are queued or running."""
        return len(self.requests(("queued", "running")))

    def running_pass(self) -> Pass | None:
        """The pass a worker started and did not finish (after a crash), if any."""
        found = self.store.select("passes", "state = 'running'")
        return None if not found else self._pass(found[0])

    def claim(self, max_users: int, parent_version: str, next_version: str) -> Pass | None:
        """Turn the oldest queued requests into a running pass (see the module docstring);
        None when nothing is queued. The pass's version is `next_version`, or the parent's
        when none of its users still holds training rows (nothing to unlearn)."""
        with self.store.transaction() as conn:
            queued = [
                _record(r) for r in self.store.select("requests", "state = 'queued'", (), conn)
            ]
            if not queued:
                return None
            taken, users = [queued[0]], set(queued[0]["users"])
            for request in queued[1:]:
                union = users | set(request["users"])
                if (request["method"], request["sets"]) != (taken[0]["method"], taken[0]["sets"]):
                    break
                if len(union) > max_users:
                    break
                taken.append(request)
                users = union
            unlearned = sorted(self.store.users_with_training_data(users, conn))
            values = {
                "state": "running",
                "users": json.dumps(sorted(users)),
                "unlearned_users": json.dumps(unlearned),
                "method": taken[0]["method"],
                "sets": json.dumps(taken[0]["sets"]),
                "parent_version": parent_version,
                "version": next_version if unlearned else parent_version,
                "created": time.time(),
            }
            pass_id = self.store.insert("passes", values, conn)
            for request in taken:
                rows = self.store.counts(request["users"], conn)
                update = {"state": "running", "started": time.time(), "pass_id": pass_id}
                update["rows"] = json.dumps(rows)
                self.store.update(
                    "requests", update, "request_id = ?", (request["request_id"],), conn
                )
        return self.running_pass()

    def set_hashes(self, pass_id: int, before: str, after: str) -> None:
        """Record a pass's data hashes (before and after its users' rows leave the store)."""
        hashes = {"data_sha256_before": before, "data_sha256_after": after}
        self.store.update("passes", hashes, "pass_id = ?", (pass_id,))

    def finish(
        self,
        work: Pass,
        checks: dict[str, Any],
        ledger_seq: dict[str, int],
        timings: dict[str, Any],
        pseudonyms: Callable[[list[int]], list[str]],
    ) -> None:
        """Mark the pass and its requests done (one transaction), their users kept as
        pseudonyms only; `checks` and `ledger_seq` per request id."""
        finished = time.time()
        with self.store.transaction() as conn:
            done = {"state": "done", "finished": finished, "timings": json.dumps(timings)}
            done["users"] = json.dumps(pseudonyms(work.users))
            done["unlearned_users"] = json.dumps(pseudonyms(work.unlearned_users))
            self.store.update("passes", done, "pass_id = ?", (work.pass_id,), conn)
            for request in work.requests:
                rid = request["request_id"]
                values = {"state": "done", "finished": finished, "version": work.version}
                values["checks"] = json.dumps(checks.get(rid))
                values["ledger_seq"] = ledger_seq[rid]
                values["users"] = json.dumps(pseudonyms(request["users"]))
                self.store.update("requests", values, "request_id = ?", (rid,), conn)

    def fail(self, work: Pass, reason: str) -> None:
        """Mark the pass and its requests failed with `reason` (one transaction)."""
        values = {"state": "failed", "finished": time.time(), "error": reason}
        with self.store.transaction() as conn:
            self.store.update("passes", values, "pass_id = ?", (work.pass_id,), conn)
            self.store.update("requests", values, "pass_id = ?", (work.pass_id,), conn)

    def _pass(self, row: dict[str, Any]) -> Pass:
        running = "pass_id = ? AND state = 'running'"
        requests = self.store.select("requests", running, (row["pass_id"],))
        names = {f.name for f in dataclasses.fields(Pass)}
        values = {k: v for k, v in _decoded(row).items() if k in names}
        return Pass(**values, requests=[_record(r) for r in requests])


def conflict(request_id: str, users: list[Any], method: str | None) -> Conflict:
    """The error for a request id reused with other users, method or settings."""
    also = f" with method {method}" if method else ""
    return Conflict(
        f"request id {request_id!r} was already used for user(s) "
        f"{', '.join(map(str, users))}{also}; choose another request id"
    )
