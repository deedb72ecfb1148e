"""The deployment's data in SQLite (DEP/store.sqlite): what the live model was trained on.

Tables:
- samples(split, id, user_id, item_id, timestamp, rating, label, prompt, target): the prepared
  rows the deployment holds, split "train" (the model's training data), "valid" (utility
  checks) and "test" (held-out non-members for membership-inference calibration);
- ratings(user_id, item_id, rating, timestamp): every rating of those users, the history that
  prediction prompts show;
- profiles(user_id, gender, age, job) and items(item_id, title): what prompts are rendered from;
- known_users(user_id): every user the deployment's data ever held (ids only; kept after a
  deletion so that a later request for the same user is told the data is gone, not "unknown");
- meta(key, value): template, history length, domain and the source of the data.

Connections are opened per operation in WAL mode, so readers (predictions) go on while a
deletion transaction runs. `data_sha256` hashes the personal rows (samples, ratings, profiles)
in a canonical order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from e2urec.data.prepare import COLUMNS
from e2urec.errors import E2URecError

STORE = "store.sqlite"
SPLITS = ("train", "valid", "test")
PERSONAL = {
    "samples": "split, id",
    "ratings": "user_id, timestamp, item_id, rating",
    "profiles": "user_id",
}

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE samples (
    split TEXT NOT NULL, id INTEGER NOT NULL, user_id INTEGER NOT NULL, item_id INTEGER NOT NULL,
    timestamp INTEGER NOT NULL, rating REAL NOT NULL, label INTEGER NOT NULL,
    prompt TEXT NOT NULL, target TEXT NOT NULL, PRIMARY KEY (split, id));
CREATE INDEX samples_user ON samples (user_id);
CREATE TABLE ratings (
    user_id INTEGER NOT NULL, item_id INTEGER NOT NULL, rating REAL NOT NULL,
    timestamp INTEGER NOT NULL);
CREATE INDEX ratings_user ON ratings (user_id, timestamp);
CREATE TABLE profiles (user_id INTEGER PRIMARY KEY, gender TEXT, age TEXT, job TEXT);
CREATE TABLE items (item_id INTEGER PRIMARY KEY, title TEXT NOT NULL);
CREATE TABLE known_users (user_id INTEGER PRIMARY KEY);
"""


class Store:
    """The SQLite store of one deployment."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection whose block is one transaction (committed on success, else rolled back)."""
        if not self.path.is_file():
            raise E2URecError(f"deployment store not found: {self.path}")
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            with conn:
                yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection whose block is one write transaction taken at its start (BEGIN
        IMMEDIATE: concurrent writers wait for each other instead of failing on upgrade)."""
        if not self.path.is_file():
            raise E2URecError(f"deployment store not found: {self.path}")
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    # ---------------------------------------------------------------- building
    @classmethod
    def create(
        cls,
        path: str | Path,
        samples: dict[str, list[dict[str, Any]]],
        ratings: Iterable[tuple[int, int, float, int]],
        profiles: Iterable[tuple[int, str, str, str]],
        items: Iterable[tuple[int, str]],
        meta: dict[str, Any],
    ) -> Store:
        """Write a new store at `path` (which must not exist) in one transaction."""
        store = cls(path)
        sqlite3.connect(path).close()
        with store.connect() as conn:
            conn.executescript(SCHEMA)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
            )
            for split, rows in samples.items():
                conn.executemany(
                    "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    ((split, *(row[c] for c in COLUMNS)) for row in rows),
                )
            conn.execute("INSERT INTO known_users SELECT DISTINCT user_id FROM samples")
            conn.executemany("INSERT INTO ratings VALUES (?, ?, ?, ?)", ratings)
            conn.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?)", profiles)
            conn.executemany("INSERT INTO items VALUES (?, ?)", items)
        return store

    # ---------------------------------------------------------------- reading
    def meta(self) -> dict[str, Any]:
        """The meta table as a dict."""
        with self.connect() as conn:
            return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}

    def rows(self, split: str, users: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Rows of `split` (all users, or only `users`) in id order, as prepared-data dicts."""
        query = f"SELECT {', '.join(COLUMNS)} FROM samples WHERE split = ?"
        params: list[Any] = [split]
        if users is not None:
            users = sorted(set(users))
            query += f" AND user_id IN ({', '.join('?' * len(users))})"
            params += users
        with self.connect() as conn:
            cursor = conn.execute(query + " ORDER BY id", params)
            return [dict(zip(COLUMNS, row, strict=True)) for row in cursor]

    def known_users(self, users: Iterable[int]) -> set[int]:
        """The subset of `users` that the deployment's data ever held."""
        return self._present("known_users", users)

    def users_with_training_data(self, users: Iterable[int]) -> set[int]:
        """The subset of `users` that still have train rows in the store."""
        return self._present("samples", users, "AND split = 'train'")

    def _present(self, table: str, users: Iterable[int], extra: str = "") -> set[int]:
        users = sorted(set(users))
        if not users:
            return set()
        with self.connect() as conn:
            cursor = conn.execute(
                f"SELECT DISTINCT user_id FROM {table} WHERE user_id IN "
                f"({', '.join('?' * len(users))}) {extra}",
                users,
            )
            return {int(u) for (u,) in cursor}

    def history(self, user: int, length: int) -> list[tuple[int, float]]:
        """The user's last `length` ratings as (item_id, rating), oldest first."""
        with self.connect() as conn:
            cursor = conn.execute(
                "SELECT item_id, rating FROM ratings WHERE user_id = ? "
                "ORDER BY timestamp DESC, item_id DESC LIMIT ?",
                (user, length),
            )
            return [(int(i), float(r)) for i, r in cursor][::-1]

    def profile(self, user: int) -> dict[str, str] | None:
        """The user's gender, age and job, or None without a profile."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT gender, age, job FROM profiles WHERE user_id = ?", (user,)
            ).fetchone()
        return None if row is None else dict(zip(("gender", "age", "job"), row, strict=True))

    def titles(self, items: Iterable[int]) -> dict[int, str]:
        """item id → title for the known ones among `items`."""
        items = sorted(set(items))
        with self.connect() as conn:
            cursor = conn.execute(
                f"SELECT item_id, title FROM items WHERE item_id IN ({', '.join('?' * len(items))})",
                items,
            )
            return {int(i): t for i, t in cursor}

    def counts(self) -> dict[str, int]:
        """Rows per split, ratings and profiles held."""
        with self.connect() as conn:
            counts = {s: 0 for s in SPLITS}
            counts.update(conn.execute("SELECT split, COUNT(*) FROM samples GROUP BY split"))
            for table in ("ratings", "profiles"):
                counts[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        return counts

    def data_sha256(self) -> str:
        """sha256 of the personal rows (samples, ratings, profiles) in a canonical order."""
        return self.data_sha256_without(())[0]

    def data_sha256_without(self, users: Iterable[int]) -> tuple[str, str]:
        """(data_sha256 now, data_sha256 once `users`' rows are removed), in one scan."""
        users = set(users)
        now, after = hashlib.sha256(), hashlib.sha256()
        with self.connect() as conn:
            for table, order in PERSONAL.items():
                columns = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
                user = columns.index("user_id")
                header = f"#{table}\n".encode()
                now.update(header)
                after.update(header)
                for row in conn.execute(f"SELECT * FROM {table} ORDER BY {order}"):
                    line = json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n"
                    now.update(line)
                    if row[user] not in users:
                        after.update(line)
        return now.hexdigest(), after.hexdigest()

    # ---------------------------------------------------------------- deleting
    def remove_users(self, users: Iterable[int]) -> dict[str, int]:
        """Delete every personal row of `users` in one transaction; rows removed per kind."""
        users = sorted(set(users))
        marks = ", ".join("?" * len(users))
        removed = {}
        with self.connect() as conn:
            for split in SPLITS:
                removed[split] = conn.execute(
                    f"DELETE FROM samples WHERE split = ? AND user_id IN ({marks})",
                    [split, *users],
                ).rowcount
            for table in ("ratings", "profiles"):
                removed[table] = conn.execute(
                    f"DELETE FROM {table} WHERE user_id IN ({marks})", users
                ).rowcount
        return removed
