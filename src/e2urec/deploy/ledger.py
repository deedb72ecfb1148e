"""The deployment's append-only ledger (DEP/ledger.jsonl), a sha256 hash chain.

Each line is one JSON entry with `seq` (1, 2, ...) and `prev`: the sha256 of the previous
entry's canonical JSON (sorted keys, no spaces, UTF-8; 64 zeros for the first entry). Editing,
removing or reordering any entry but the last breaks the chain at the first bad entry, which
`entries` names. The last entry is protected only by a hash kept elsewhere: `entries(expect_head)`
also checks that a head hash recorded earlier (printed by `e2urec ledger`) is still an entry of the chain,
which catches a dropped tail or a chain rebuilt from scratch. Appending rewrites the file
atomically (temp file + rename), so a crash never leaves a torn line; the chain is verified
before every append.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from e2urec.artifacts import atomic_write_text
from e2urec.errors import E2URecError

LEDGER = "ledger.jsonl"
GENESIS = "0" * 64


def canonical(entry: dict[str, Any]) -> bytes:
    """The canonical JSON bytes of an entry (what the next entry's `prev` hashes)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 of an entry's canonical JSON."""
    return hashlib.sha256(canonical(entry)).hexdigest()


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Ledger:
    """Read, verify and append to one deployment's ledger."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def entries(self, expect_head: str | None = None) -> list[dict[str, Any]]:
        """Every entry, checked: parseable lines, consecutive `seq`, an unbroken hash chain, and
        with `expect_head` (a sha256 or a 12+ hex digit prefix, recorded when that entry was
        the last) that one entry still hashes to it."""
        if not self.path.is_file():
            raise E2URecError(f"ledger not found: {self.path}")
        entries: list[dict[str, Any]] = []
        prev = GENESIS
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise self._bad(number, "is not valid JSON") from None
            if not isinstance(entry, dict):
                raise self._bad(number, "is not a JSON object")
            if entry.get("seq") != number:
                raise self._bad(number, f"has seq {entry.get('seq')!r}, expected {number}")
            if entry.get("prev") != prev:
                raise self._bad(
                    number,
                    "does not chain to the entry before it (its prev hash differs: "
                    f"entry {number - 1} was changed, removed or reordered)"
                    if number > 1
                    else "does not start the chain (prev is not the genesis hash)",
                )
            entries.append(entry)
            prev = entry_hash(entry)
        if expect_head is not None:
            self._check_head(expect_head, entries)
        return entries

    def _check_head(self, head: str, entries: list[dict[str, Any]]) -> None:
        head = head.strip().lower()
        if len(head) < 12 or any(c not in "0123456789abcdef" for c in head):
            raise E2URecError(f"expected head {head!r} is not a sha256 (or 12+ hex digit prefix)")
        if not any(entry_hash(e).startswith(head) for e in entries):
            raise E2URecError(
                f"ledger {self.path} does not contain the expected head {head}: entries up to "
                "it were removed, or the ledger was rebuilt"
            )

    def _bad(self, number: int, what: str) -> E2URecError:
        return E2URecError(f"ledger {self.path} is tampered: entry {number} {what}")

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Append an entry with `fields` (plus seq, prev and time when absent); returns it."""
        return self.extend([fields])[0]

    def extend(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append one entry per item of `items` in one atomic rewrite (all appear or none)."""
        entries = self.entries() if self.path.exists() else []
        added = []
        for fields in items:
            prev = entry_hash(entries[-1]) if entries else GENESIS
            entry = {"time": now(), **fields, "seq": len(entries) + 1, "prev": prev}
            entries.append(entry)
            added.append(entry)
        text = "".join(canonical(e).decode() + "\n" for e in entries)
        atomic_write_text(self.path, text)
        return added

    def find(self, request_id: str) -> dict[str, Any] | None:
        """The entry of request `request_id`, if one was appended."""
        for entry in self.entries():
            if entry.get("request_id") == request_id:
                return entry
        return None


def _arrow(check: dict[str, Any] | None) -> str:
    if not check:
        return "-"
    before, after = check.get("before"), check.get("after")
    return f"{_num(before)}→{_num(after)}"


def _num(value: float | None) -> str:
    return "nan" if value is None else f"{value:.3f}"


def table(entries: list[dict[str, Any]]) -> str:
    """A readable history: time, request, version, users, rows, method, MIA and valid AUC."""
    header = (
        f"{'#':>3s}  {'time':25s} {'request':16s} {'version':8s} {'users':14s} "
        f"{'rows':>5s}  {'method':8s} {'MIA AUC':13s} {'valid AUC':13s}"
    )
    lines = [header]
    for e in entries:
        users = ",".join(str(u) for u in e.get("users", [])) or "-"
        rows = e.get("rows_removed", {}).get("train", e.get("rows", {}).get("train", 0))
        checks = e.get("checks") or {}
        request = e.get("request_id") or e.get("kind", "")
        lines.append(
            f"{e['seq']:3d}  {e.get('time', ''):25s} {request[:16]:16s} "
            f"{e.get('version') or '-':8s} {users[:14]:14s} {rows:5d}  {e.get('method') or '-':8s} "
            f"{_arrow(checks.get('mia_auc')):13s} {_arrow(checks.get('valid_auc')):13s}"
        )
        if e.get("no_training_data"):
            ids = ",".join(str(u) for u in e["no_training_data"])
            lines.append(f"{'':5s}note: no training data held for user(s) {ids}")
    return "\n".join(lines)
