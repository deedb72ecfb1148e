"""`e2urec audit`: every trace of one user left in a deployment folder.

Every file under the folder is read as bytes (the SQLite file with its free pages, its WAL,
version folders, request records, the ledger, logs, hidden files). A trace is:
- a row of the user: the bytes of one of their prompts (raw, or JSON-escaped), or of a line of a
  prompt no other user's prompts contain (their history list), found anywhere;
- a model trained on their rows: a version older than the one that unlearned them (kept by the
  rollback window, or serving again after a rollback);
- their id: a live row of the store naming it (samples, ratings, profiles, known users, queue
  records); in a JSON file, a user field holding it in plaintext; in the SQLite bytes or another
  file, a JSON list or a `user...` field holding it.
The user's keyed pseudonym in the ledger is expected (it proves the deletion to the secret's
holder) and reported as such, with a note per deletion request: exact yet (an exact-window
Retrain covers it) or approximate. The user's prompts come from the store while it holds them and
from the prepared data folder the deployment was built from (or `data`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2urec.deploy import exact
from e2urec.deploy.deployment import Deployment
from e2urec.deploy.ledger import SECRET, Keys, names
from e2urec.deploy.store import SPLITS
from e2urec.errors import E2URecError

USER_FIELDS = {"user", "users", "user_id", "no_training_data", "unlearned_users", "forgotten_users"}


@dataclass
class Report:
    """Traces per file (relative path → descriptions; empty: no trace), notes, bytes read."""

    user: int
    files: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    scanned_bytes: int = 0
    needles: int = 0

    @property
    def traces(self) -> int:
        """How many traces were found."""
        return sum(len(t) for t in self.files.values())


def audit(
    deployment: str | Path,
    user: int,
    data: str | Path | None = None,
    secret: str | Path | None = None,
) -> Report:
    """Scan `deployment` for traces of `user` (see the module docstring); `secret`: the
    deployment's secret when it is kept elsewhere (without one: an error)."""
    dep = Deployment(deployment)
    keys = Keys(secret) if secret is not None else dep.keys
    if not keys.path.is_file():
        raise E2URecError(
            f"audit needs the deployment secret ({keys.path} is missing; pass --secret)"
        )
    pseudonym = keys.pseudonym(user)
    needles = _needles(dep, user, data)
    report = Report(user, needles=len(needles))
    number = re.compile(rf"(?<![\w.]){user}(?![\w.])".encode())
    in_list = re.compile(rb"[\[,]\s*" + str(user).encode() + rb"\s*[,\]]")
    in_field = re.compile(rb"user\w*\W{1,20}" + str(user).encode() + rb"(?![\w.])")
    for path in sorted(p for p in dep.path.rglob("*") if p.is_file()):
        name = path.relative_to(dep.path).as_posix()
        blob = path.read_bytes()
        report.scanned_bytes += len(blob)
        found = [f"a row of the user ({len(n)} bytes of a prompt)" for n in needles if n in blob]
        found = found[:1] + ([f"... and {len(found) - 1} more"] if len(found) > 1 else [])
        if name == SECRET:
            report.notes.append(f"{name}: the secret that keys the pseudonyms")
        elif path.suffix in (".json", ".jsonl") and number.search(blob):
            found += _json_traces(blob, user)
        elif name.startswith("store.sqlite") or _is_text(blob):
            found += [
                f"the id in a list: {m.group().decode(errors='replace')!r}"
                for m in in_list.finditer(blob)
            ]
            found += [
                f"the id in a field: {m.group().decode(errors='replace')!r}"
                for m in in_field.finditer(blob)
            ]
        if name == "ledger.jsonl" and pseudonym.encode() in blob:
            report.notes.append(f"{name}: the user's keyed pseudonym {pseudonym} (expected)")
        report.files[name] = found
    report.files["store.sqlite (live rows)"] = _live_rows(dep, user)
    report.files["versions (models)"] = _models(dep, user, pseudonym)
    report.notes += _exactness(dep, user, pseudonym)
    return report


def _exactness(dep: Deployment, user: int, pseudonym: str) -> list[str]:
    """One note per deletion request of the user: exact yet, or approximate until when."""
    settings, entries = dep.settings(), dep.ledger.entries()
    return [
        f"deletion request {e['request_id']}: {exact.status(settings, entries, e['request_id'])}"
        for e in entries
        if e.get("kind") == "forget" and names(e, user, pseudonym)
    ]


def _models(dep: Deployment, user: int, pseudonym: str) -> list[str]:
    """Versions present that were trained on the user's rows: those before the first version
    that unlearned them (kept by the rollback window, or serving again after a rollback)."""
    unlearned = [
        e["version"]
        for e in dep.ledger.entries()
        if e.get("kind") == "forget" and e.get("method") and names(e, user, pseudonym)
    ]
    if not unlearned:
        return []
    return [
        f"{v}: a model trained on the user's rows" + (" (it serves)" if v == dep.current() else "")
        for v in dep.versions()
        if v < min(unlearned)
    ]


def _needles(dep: Deployment, user: int, data: str | Path | None) -> list[bytes]:
    """Byte strings of the user's rows: each prompt (raw and JSON-escaped) and every prompt
    line no other user's prompts contain."""
    mine = {r["prompt"] for split in SPLITS for r in dep.store.rows(split, [user])}
    others: set[str] = set()
    folder = Path(data) if data is not None else Path(dep.store.meta().get("source_data") or "")
    if folder.is_dir() and str(folder) != ".":
        for path in sorted(folder.glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                (mine if row.get("user_id") == user else others).add(row.get("prompt", ""))
    elif not mine:
        raise E2URecError(
            f"cannot find the rows of user {user}: the store holds none and the prepared data "
            f"folder {folder} is missing (pass --data)"
        )
    if not mine:
        raise E2URecError(f"user {user} has no rows in {folder} nor in the store: unknown user")
    other_lines = {line for prompt in others for line in prompt.splitlines()}
    needles = set()
    for prompt in mine:
        for text in (
            prompt,
            json.dumps(prompt)[1:-1],
            json.dumps(prompt, ensure_ascii=False)[1:-1],
        ):
            needles.add(text.encode("utf-8"))
        needles.update(
            line.encode("utf-8")
            for line in prompt.splitlines()
            if len(line) >= 24 and line not in other_lines
        )
    return sorted(needles, key=len, reverse=True)


def _is_text(blob: bytes) -> bool:
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _json_traces(blob: bytes, user: int) -> list[str]:
    found = []
    for number, line in enumerate(blob.decode("utf-8", errors="replace").splitlines(), 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            try:
                value = json.loads(blob)
            except json.JSONDecodeError:
                return [f"the id in unparseable JSON (line {number})"]
            return [f"the id in plaintext ({k})" for k in _user_keys(value, user)]
        found += [f"line {number}: the id in plaintext ({k})" for k in _user_keys(value, user)]
    return found


def _user_keys(value: Any, user: int, key: str = "") -> list[str]:
    """The user fields of a JSON value that hold `user` (an int, or a list with it)."""
    if isinstance(value, dict):
        return [k for name, v in value.items() for k in _user_keys(v, user, name)]
    if isinstance(value, list):
        if key in USER_FIELDS and user in value:
            return [key]
        return [k for v in value for k in _user_keys(v, user, key)]
    return [key] if key in USER_FIELDS and value == user else []


def _live_rows(dep: Deployment, user: int) -> list[str]:
    store = dep.store
    found = [f"{n} {kind} row(s)" for kind, n in store.counts([user]).items() if n]
    if store.known_users([user]):
        found.append("known_users holds the id")
    store.ensure_queue()
    for table in ("requests", "passes"):
        for row in store.select(table):
            if user in json.loads(row["users"]):
                found.append(
                    f"{table} row {row.get('request_id') or row.get('pass_id')} holds the id"
                )
    return found
