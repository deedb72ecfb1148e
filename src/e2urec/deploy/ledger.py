"""The deployment's append-only ledger (DEP/ledger.jsonl), a sha256 hash chain, and its keys.

Each line is one JSON entry with `seq` (1, 2, ...) and `prev`: the sha256 of the previous
entry's canonical JSON (sorted keys, no spaces, UTF-8; 64 zeros for the first entry). Editing,
removing or reordering any entry but the last breaks the chain at the first bad entry, which
`entries` names. The last entry is protected only by a hash kept elsewhere: `entries(expect_head)`
also checks that a head hash recorded earlier (printed by `e2urec ledger`) is still an entry of
the chain. Appending rewrites the file atomically (temp file + rename) after verifying the chain.

Entries name users by keyed pseudonyms (HMAC-SHA256 under the deployment's secret, DEP/secret.key,
mode 0600) and keep the reason as an HMAC too: the chain verifies without the secret, and only
its holder can tell whether a given user was forgotten. Entries written before pseudonyms (plain
integer ids, a plain reason) still verify.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from e2urec.artifacts import atomic_write_text
from e2urec.errors import E2URecError

LEDGER = "ledger.jsonl"
SECRET = "secret.key"
GENESIS = "0" * 64


def canonical(entry: dict[str, Any]) -> bytes:
    """The canonical JSON bytes of an entry (what the next entry's `prev` hashes)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 of an entry's canonical JSON."""
    return hashlib.sha256(canonical(entry)).hexdigest()


def iso(seconds: float | None = None) -> str:
    """Unix seconds (default: now) as ISO 8601 UTC to the millisecond."""
    utc = _dt.timezone.utc
    moment = _dt.datetime.now(utc) if seconds is None else _dt.datetime.fromtimestamp(seconds, utc)
    return moment.isoformat(timespec="milliseconds")


class Keys:
    """The deployment's secret (DEP/secret.key or a copy kept elsewhere) and what it keys."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._key: bytes | None = None

    def create(self) -> None:
        """Write a new random secret, readable by the owner only (no-op when one exists)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")

    def key(self) -> bytes:
        """The secret; one clear error when its file is missing."""
        if self._key is None:
            if not self.path.is_file():
                raise E2URecError(
                    f"the deployment secret {self.path} is missing: pseudonyms cannot be "
                    "computed (pass --secret with the copy you kept)"
                )
            self._key = bytes.fromhex(self.path.read_text().strip())
        return self._key

    def _mac(self, text: str) -> str:
        return hmac.new(self.key(), text.encode(), hashlib.sha256).hexdigest()

    def pseudonym(self, user: int) -> str:
        """The user's keyed pseudonym (32 hex digits)."""
        return self._mac(f"user:{int(user)}")[:32]

    def pseudonyms(self, users: list[int]) -> list[str]:
        """Pseudonyms of `users`, in order."""
        return [self.pseudonym(u) for u in users]

    def reason(self, text: str | None) -> str | None:
        """A keyed digest of a request's free-text reason (None stays None)."""
        return None if text is None else self._mac(f"reason:{text}")

    def request_id(self, users: list[int], method: str) -> str:
        """The default request id: keyed over the sorted users and the method, 16 hex digits."""
        return self._mac(json.dumps({"users": sorted(users), "method": method}))[:16]


@dataclasses.dataclass
class LedgerEntry:
    """One entry's fields (seq, prev and time are added on append). kind: deploy, forget,
    purge or rollback; fields left None are not written unless the kind lists them."""

    kind: str
    version: str | None = None
    request_id: str | None = None
    users: list[Any] = dataclasses.field(default_factory=list)
    no_training_data: list[Any] | None = None
    rows_removed: dict[str, int] | None = None
    data_sha256_before: str | None = None
    data_sha256_after: str | None = None
    method: str | None = None
    params: list[str] | None = None
    purpose: str | None = None
    reason_hmac: str | None = None
    parent_version: str | None = None
    model_sha256: str | None = None
    adapter_sha256: str | None = None
    checks: dict[str, Any] | None = None
    mia_loss: str | None = None  # the loss of checks' MIA AUC (entries before it: none named)
    queued: str | None = None
    pass_id: dict[str, Any] | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    KEEP_NONE = {"forget": ("method", "adapter_sha256", "checks", "reason_hmac", "model_sha256")}

    def fields(self) -> dict[str, Any]:
        """The entry as written (see `written`), `details` merged in."""
        out = written(self, self.KEEP_NONE.get(self.kind, ()))
        return {**out, **out.pop("details")}


def written(record: Any, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass record's fields as written to JSON: None values left out (unless named in
    `keep`), `pass_id` under the name "pass"."""
    return {
        ("pass" if f.name == "pass_id" else f.name): getattr(record, f.name)
        for f in dataclasses.fields(record)
        if getattr(record, f.name) is not None or f.name in keep
    }


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
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
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

    def append(self, fields: LedgerEntry | dict[str, Any]) -> dict[str, Any]:
        """Append one entry; returns it."""
        return self.extend([fields])[0]

    def extend(self, items: list[LedgerEntry | dict[str, Any]]) -> list[dict[str, Any]]:
        """Append one entry per item (plus seq, prev and time) in one atomic rewrite."""
        entries = self.entries() if self.path.exists() else []
        added = []
        for item in items:
            fields = item.fields() if isinstance(item, LedgerEntry) else item
            prev = entry_hash(entries[-1]) if entries else GENESIS
            entry = {"time": iso(), **fields, "seq": len(entries) + 1, "prev": prev}
            entries.append(entry)
            added.append(entry)
        atomic_write_text(self.path, "".join(canonical(e).decode() + "\n" for e in entries))
        return added

    def find(self, request_id: str) -> dict[str, Any] | None:
        """The entry of request `request_id`, if one was appended."""
        return next((e for e in self.entries() if e.get("request_id") == request_id), None)


def names(entry: dict[str, Any], user: int, pseudonym: str) -> bool:
    """Whether `entry` names `user` among its users (by pseudonym, or by id in older entries)."""
    return any(u == pseudonym or u == user for u in entry.get("users") or [])
