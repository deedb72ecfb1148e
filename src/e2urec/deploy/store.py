"""The deployment's data in SQLite (DEP/store.sqlite): every SQL statement of a deployment.

Data tables:
- samples(split, id, user_id, item_id, timestamp, rating, label, prompt, target): the prepared
  rows the deployment holds, split "train" (the model's training data), "valid" (utility
  checks) and "test" (held-out non-members for membership-inference calibration);
- ratings(user_id, item_id, rating, timestamp): every rating of those users (prediction prompts);
- profiles(user_id, gender, age, job) and items(item_id, title): what prompts are rendered from;
- known_users(user_id): users whose data the store holds; forgotten(pseudonym): keyed pseudonyms
  of users whose data was deleted (so a later request is told "deleted", not "unknown");
- meta(key, value): template, history length, domain, the data's source, deployment settings.
Queue tables (see `queue`): requests, passes; retired(version, since): superseded versions;
retrains: the exact window's Retrains (see `exact`).

Every connection runs in WAL mode with `secure_delete` on (deleted content is zeroed in the
page); after rows leave, the file is vacuumed when a fifth of it is free or unused space and
the WAL is checkpointed with TRUNCATE, so no page of the file keeps deleted rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
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
QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, position INTEGER NOT NULL, users TEXT NOT NULL,
    method TEXT NOT NULL, sets TEXT NOT NULL, reason TEXT, state TEXT NOT NULL,
    created REAL NOT NULL, started REAL, finished REAL, pass_id INTEGER, version TEXT,
    checks TEXT, rows TEXT, error TEXT, merged_with TEXT NOT NULL, ledger_seq INTEGER,
    purpose TEXT);
CREATE INDEX IF NOT EXISTS requests_state ON requests (state, position);
CREATE TABLE IF NOT EXISTS passes (
    pass_id INTEGER PRIMARY KEY AUTOINCREMENT, state TEXT NOT NULL, users TEXT NOT NULL,
    unlearned_users TEXT NOT NULL, method TEXT NOT NULL, sets TEXT NOT NULL,
    parent_version TEXT NOT NULL, version TEXT NOT NULL, data_sha256_before TEXT,
    data_sha256_after TEXT, created REAL NOT NULL, finished REAL, timings TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS retired (version TEXT PRIMARY KEY, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS forgotten (pseudonym TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS retrains (
    retrain_id INTEGER PRIMARY KEY AUTOINCREMENT, state TEXT NOT NULL, version TEXT NOT NULL,
    parent_version TEXT NOT NULL, covers TEXT NOT NULL, data_sha256 TEXT NOT NULL,
    started REAL NOT NULL, finished REAL);
"""


def _marks(values: list[Any]) -> str:
    return ", ".join("?" * len(values))


class Store:
    """The SQLite store of one deployment."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _open(self, **options: Any) -> sqlite3.Connection:
        if not self.path.is_file():
            raise E2URecError(f"deployment store not found: {self.path}")
        conn = sqlite3.connect(self.path, timeout=30, **options)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA secure_delete=ON")
        return conn

    @contextlib.contextmanager
    def connect(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """A connection whose block is one transaction (committed on success, else rolled
        back); `conn` given: that connection, in the transaction it is in."""
        if conn is not None:
            yield conn
            return
        conn = self._open()
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection whose block is one write transaction taken at its start (BEGIN
        IMMEDIATE: concurrent writers wait for each other instead of failing on upgrade)."""
        conn = self._open(isolation_level=None)
        try:
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
        users: Iterable[int] = (),
    ) -> Store:
        """Write a new store at `path` (which must not exist) in one transaction; `users` are
        known besides those of `samples`."""
        store = cls(path)
        sqlite3.connect(path).close()
        with store.connect() as conn:
            conn.executescript(SCHEMA + QUEUE_SCHEMA)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
            )
            for split, rows in samples.items():
                conn.executemany(
                    f"INSERT INTO samples VALUES ({_marks([0] * 9)})",
                    ((split, *(row[c] for c in COLUMNS)) for row in rows),
                )
            conn.execute("INSERT INTO known_users SELECT DISTINCT user_id FROM samples")
            conn.executemany("INSERT OR IGNORE INTO known_users VALUES (?)", [(u,) for u in users])
            conn.executemany("INSERT INTO ratings VALUES (?, ?, ?, ?)", ratings)
            conn.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?)", profiles)
            conn.executemany("INSERT INTO items VALUES (?, ?)", items)
        return store

    def ensure_queue(self) -> None:
        """Create the queue tables of an older deployment (no-op when present)."""
        with self.connect() as conn:
            conn.executescript(QUEUE_SCHEMA)
            columns = {c[1] for c in conn.execute("PRAGMA table_info(requests)")}
            if "purpose" not in columns:
                conn.execute("ALTER TABLE requests ADD COLUMN purpose TEXT")

    def set_meta(self, values: dict[str, Any]) -> None:
        """Set meta keys (deployment settings)."""
        with self.connect() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

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
            query += f" AND user_id IN ({_marks(users)})"
            params += users
        with self.connect() as conn:
            cursor = conn.execute(query + " ORDER BY id", params)
            return [dict(zip(COLUMNS, row, strict=True)) for row in cursor]

    def known_users(self, users: Iterable[int], pseudonym: Any = None) -> set[int]:
        """The subset of `users` the deployment's data ever held (held now, or forgotten:
        `pseudonym(user)` in the forgotten table)."""
        users = sorted(set(users))
        known = self._present("known_users", users)
        if pseudonym is not None and len(known) < len(users):
            names = {pseudonym(u): u for u in users if u not in known}
            found = self.select("forgotten", f"pseudonym IN ({_marks(list(names))})", list(names))
            known |= {names[r["pseudonym"]] for r in found}
        return known

    def users_with_training_data(
        self, users: Iterable[int], conn: sqlite3.Connection | None = None
    ) -> set[int]:
        """The subset of `users` that still have train rows in the store."""
        return self._present("samples", users, "AND split = 'train'", conn)

    def _present(
        self, table: str, users: Iterable[int], extra: str = "", conn: Any = None
    ) -> set[int]:
        users = sorted(set(users))
        if not users:
            return set()
        with self.connect(conn) as c:
            cursor = c.execute(
                f"SELECT DISTINCT user_id FROM {table} WHERE user_id IN ({_marks(users)}) {extra}",
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
        found = self.select("profiles", "user_id = ?", (user,))
        return {k: found[0][k] for k in ("gender", "age", "job")} if found else None

    def titles(self, items: Iterable[int]) -> dict[int, str]:
        """item id → title for the known ones among `items`."""
        items = sorted(set(items))
        found = self.select("items", f"item_id IN ({_marks(items)})", items)
        return {int(r["item_id"]): r["title"] for r in found}

    def counts(self, users: list[int] | None = None, conn: Any = None) -> dict[str, int]:
        """Rows per split, ratings and profiles held (of `users`, or of everyone)."""
        where, params = (
            ("", []) if users is None else (f"WHERE user_id IN ({_marks(users)})", users)
        )
        with self.connect(conn) as c:
            counts = {s: 0 for s in SPLITS}
            counts.update(
                c.execute(f"SELECT split, COUNT(*) FROM samples {where} GROUP BY split", params)
            )
            for table in ("ratings", "profiles"):
                counts[table] = c.execute(
                    f"SELECT COUNT(*) FROM {table} {where}", params
                ).fetchone()[0]
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
    def remove_users(self, users: Iterable[int], pseudonyms: Iterable[str] = ()) -> dict[str, int]:
        """Delete every personal row of `users` in one transaction (their ids leave
        known_users; `pseudonyms` join forgotten), then compact; rows removed per kind."""
        users = sorted(set(users))
        with self.connect() as conn:
            removed = self.counts(users, conn)
            for table in ("samples", "ratings", "profiles", "known_users"):
                self.delete(table, f"user_id IN ({_marks(users)})", users, conn)
            conn.executemany(
                "INSERT OR IGNORE INTO forgotten VALUES (?)", [(p,) for p in pseudonyms]
            )
        self.compact()
        return removed

    def forget_known(self, pseudonym: Any) -> None:
        """An older store's known users without any row left become pseudonyms."""
        with self.connect() as conn:
            gone = [
                u
                for (u,) in conn.execute(
                    "SELECT user_id FROM known_users WHERE user_id NOT IN "
                    "(SELECT user_id FROM samples UNION SELECT user_id FROM ratings)"
                )
            ]
            conn.executemany(
                "INSERT OR IGNORE INTO forgotten VALUES (?)", [(pseudonym(u),) for u in gone]
            )
            self.delete("known_users", f"user_id IN ({_marks(gone)})", gone, conn)
        if gone:
            self.compact()

    def compact(self, tries: int = 50) -> None:
        """VACUUM when more than a fifth of the file is free or unused page space (always when
        SQLite lacks the dbstat table to tell), then checkpoint the WAL into the file and
        truncate it (retried while readers hold old snapshots)."""
        conn = self._open(isolation_level=None)
        try:
            try:
                size, unused = conn.execute(
                    "SELECT SUM(pgsize), SUM(unused) FROM dbstat"
                ).fetchone()
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
                slack = (unused + free * conn.execute("PRAGMA page_size").fetchone()[0]) / size
            except sqlite3.OperationalError:
                slack = 1.0
            if slack > 0.2:
                conn.execute("VACUUM")
            for _ in range(tries):
                if not conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                    return
                time.sleep(0.1)
        finally:
            conn.close()

    # ---------------------------------------------------------------- generic statements
    def select(
        self, table: str, where: str = "1", params: Any = (), conn: Any = None
    ) -> list[dict]:
        """Rows of `table` matching `where` (requests in queue order), as column → value dicts."""
        order = "position" if table == "requests" else "rowid"
        with self.connect(conn) as c:
            cursor = c.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY {order}", params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def insert(self, table: str, values: dict[str, Any], conn: Any = None) -> int:
        """Insert (or replace) one row of `table`; returns its rowid."""
        with self.connect(conn) as c:
            cursor = c.execute(
                f"INSERT OR REPLACE INTO {table} ({', '.join(values)}) "
                f"VALUES ({_marks(list(values))})",
                list(values.values()),
            )
            return int(cursor.lastrowid or 0)

    def update(
        self, table: str, values: dict[str, Any], where: str, params: Any, conn: Any = None
    ) -> None:
        """Set `values` on the rows of `table` matching `where`."""
        with self.connect(conn) as c:
            c.execute(
                f"UPDATE {table} SET {', '.join(f'{k} = ?' for k in values)} WHERE {where}",
                [*values.values(), *params],
            )

    def delete(self, table: str, where: str, params: Any, conn: Any = None) -> None:
        """Delete the rows of `table` matching `where`."""
        with self.connect(conn) as c:
            c.execute(f"DELETE FROM {table} WHERE {where}", params)

    def next_position(self, conn: Any) -> int:
        """The queue position a new request gets."""
        return conn.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM requests").fetchone()[0]

    def retired(self) -> dict[str, float]:
        """version → unix time it stopped serving."""
        return {r["version"]: r["since"] for r in self.select("retired")}

    def retire(self, version: str, since: float | None = None) -> None:
        """Record that `version` stopped serving (kept time when already recorded)."""
        with self.connect() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO retired VALUES (?, ?)", (version, since or time.time())
            )

    def unretire(self, version: str) -> None:
        """Forget `version`'s retirement (it was purged or serves again)."""
        self.delete("retired", "version = ?", (version,))
