"""Deployments: model versions, the data they were trained on, and deletion requests.

A deployment folder DEP holds:
  versions/vNNNN/   single-format runs (manifest.json, model/, version.json), one per version
  current.json      which version serves (written atomically)
  store.sqlite      the data the current version was trained on (see `store`)
  ledger.jsonl      the hash-chained history (see `ledger`)
  requests/ID/      a deletion request in progress (request.json is kept as a receipt)
  requests/pass-N/  a queued pass in progress (see `worker`); the queue itself is in the store

A deletion request (`forget`) runs these steps; each is skipped when a previous, interrupted
attempt already did it, so rerunning the same request id finishes the job:
  1. request.json: users, method, parent version, new version name, rows to remove, data hash;
  2. requests/ID/data: a prepared data folder (train = the store's train rows, forget = the
     users' train rows, retain = the rest, valid/test = the remaining users' rows);
  3. requests/ID/base: the parent version seen as an original run trained on that train split
     (hard links to its weights), so `unlearn` accepts it;
  4. requests/ID/run: `unlearn` with the chosen method; 5. requests/ID/version: the run merged
     into a single model (`export --merge`); 6. checks before (parent) and after (new);
  7. the version renamed into versions/ (a version folder appears whole or not at all);
  8. the users' rows removed from the store in one transaction; 9. current.json switched;
  10. the ledger entry appended; 11. the request's copies of personal data deleted.
One request runs at a time (a lock file); a new request is refused while another is unfinished,
or while queued requests (`enqueue`, served by `e2urec.deploy.worker`) wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2urec.artifacts import (
    MANIFEST,
    atomic_write_json,
    model_sha256,
    read_json,
    sha256_bytes,
    sha256_file,
    staged_folder,
)
from e2urec.deploy import checks
from e2urec.deploy.ledger import LEDGER, Ledger, now
from e2urec.deploy.queue import QUEUE_LIMIT, Queue, ledger_record
from e2urec.deploy.store import SPLITS, STORE, Store
from e2urec.errors import E2URecError
from e2urec.quiet import quiet_transformers
from e2urec.runs import MODEL_DIR, RunModel

CURRENT = "current.json"
VERSIONS = "versions"
REQUESTS = "requests"
REQUEST = "request.json"
VERSION_INFO = "version.json"
LOCK = ".forget.lock"
CHECK_ROWS = 2000
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _say(message: str) -> None:
    """Default progress output: nothing."""


class Busy(E2URecError):
    """Another deletion request or a queue worker holds the deployment's lock."""


@dataclass
class ForgetResult:
    """The outcome of a deletion request: "done", "already done" or "no training data"."""

    status: str
    request_id: str
    entry: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def parse_ids(text: str, what: str) -> list[int]:
    """ "12,45" → [12, 45]; anything else is one clear error."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise E2URecError(f"{what} must be comma-separated integer ids, got {text!r}") from None
    if not ids:
        raise E2URecError(f"no {what} given")
    return sorted(set(ids))


def _no_request(request_id: str) -> E2URecError:
    return E2URecError(f"no request {request_id!r} to resume; give --users")


def request_id_for(users: Sequence[int], method: str) -> str:
    """The default request id: sha256 of the sorted users and the method, 16 hex digits."""
    payload = json.dumps({"users": sorted(users), "method": method}, sort_keys=True)
    return sha256_bytes(payload.encode())[:16]


class Deployment:
    """One deployment folder (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        if not (self.path / CURRENT).is_file():
            raise E2URecError(
                f"not a deployment: {self.path} (no {CURRENT}; create one with `e2urec deploy`)"
            )
        self.store = Store(self.path / STORE)
        self.ledger = Ledger(self.path / LEDGER)
        self._queue: Queue | None = None

    @property
    def queue(self) -> Queue:
        """The deployment's durable request queue (tables created on first use)."""
        if self._queue is None:
            self._queue = Queue(self.store)
        return self._queue

    def current(self) -> str:
        """The name of the version that serves (vNNNN)."""
        return read_json(self.path / CURRENT, "deployment pointer")["version"]

    def version_dir(self, version: str) -> Path:
        """The folder of version `version`."""
        return self.path / VERSIONS / version

    def load_model(self, version: str | None = None) -> RunModel:
        """The model of `version` (default: the current one), in eval mode on the CPU."""
        from e2urec.runs import load_run_model

        with quiet_transformers():
            model = load_run_model(self.version_dir(version or self.current()))
        model.recommender.model.eval()
        return model

    # ---------------------------------------------------------------- prediction
    def prompts(self, user: int, items: Sequence[int]) -> list[str]:
        """Prompts asking whether `user` likes each of `items`, from their stored history."""
        import numpy as np
        import pandas as pd

        from e2urec.data import prompts

        meta = self.store.meta()
        if not self.store.known_users([user]):
            raise E2URecError(f"unknown user {user}: the deployment's data never held this user")
        history = self.store.history(user, int(meta["history_len"]))
        if not history:
            raise E2URecError(f"no stored history for user {user} (their data was deleted)")
        titles = self.store.titles([*items, *(i for i, _ in history)])
        unknown = sorted({i for i in items if i not in titles})
        if unknown:
            raise E2URecError(f"unknown item(s): {', '.join(map(str, unknown))}")
        entries = prompts.history_entries(
            pd.Series([titles[i] for i, _ in history]), pd.Series([r for _, r in history])
        )
        profile = self.store.profile(user)
        users = None if profile is None else pd.DataFrame([{"user_id": user, **profile}])
        n = len(items)
        return prompts.render(
            prompts.TEMPLATES.get(meta["template"]),
            np.full(n, user, dtype=np.int64),
            [titles[i] for i in items],
            entries,
            np.zeros(n, dtype=np.int64),
            np.full(n, len(entries), dtype=np.int64),
            users,
        )

    def predict(
        self, user: int, items: Sequence[int], model: RunModel | None = None
    ) -> dict[int, float]:
        """P(like) = P(Yes) per item for `user` with `model` (default: the current version)."""
        from e2urec.eval.predict import score_rows

        texts = self.prompts(user, items)
        model = model or self.load_model()
        rows = [{"prompt": p, "target": "Yes."} for p in texts]
        scores = score_rows(model, rows, batch_size=64, progress=False)
        return {int(i): float(p) for i, p in zip(items, scores.p_yes, strict=True)}

    # ---------------------------------------------------------------- deletion
    @contextlib.contextmanager
    def lock(self, holder: str = "a forget request") -> Iterator[None]:
        """Hold the deployment's forget lock (the lock file names `holder` and the pid while
        held); another holder → one clear error naming it. The OS drops the lock of a killed
        process."""
        with open(self.path / LOCK, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                who = handle.read().strip() or "another process"
                raise Busy(f"deployment {self.path} is busy: {who} holds it") from None
            try:
                handle.truncate(0)
                handle.write(f"{holder} (pid {os.getpid()})")
                handle.flush()
                yield
            finally:
                handle.truncate(0)
                handle.flush()
                fcntl.flock(handle, fcntl.LOCK_UN)

    def finish_pending(self, say: Callable[[str], None] = _say) -> None:
        """Finish every interrupted synchronous request (the caller holds the lock)."""
        for request in self.pending():
            say(f"finishing interrupted request {request['request_id']} first")
            self._run(request, CHECK_ROWS, say)

    def pending(self) -> list[dict[str, Any]]:
        """request.json of every unfinished request."""
        folder = self.path / REQUESTS
        found = []
        for path in sorted(folder.glob(f"*/{REQUEST}")) if folder.is_dir() else []:
            request = read_json(path, "request record")
            if request.get("status") != "done":
                found.append(request)
        return found

    def forget(
        self,
        users: Sequence[int] | None,
        method: str = "e2urec",
        sets: list[str] | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        check_rows: int = CHECK_ROWS,
        say: Callable[[str], None] = _say,
    ) -> ForgetResult:
        """Serve a deletion request for `users` (see the module docstring)."""
        from e2urec.unlearn import method_params

        # the inputs are checked before the lock file is touched: a refusal changes nothing
        if users is not None:
            users = sorted(set(int(u) for u in users))
            method_params(method, sets)
            self._check_known(users)
        elif request_id is None:
            raise E2URecError("give the users to forget (or a --request-id to resume)")
        elif self._request(request_id) is None and self.ledger.find(request_id) is None:
            raise _no_request(request_id)
        with self.lock():
            if users is None:
                request = self._request(request_id)
                if request is None:
                    done = self.ledger.find(request_id)
                    if done is not None:
                        return self._already(done)
                    raise _no_request(request_id)
                return self._run(request, check_rows, say)
            request_id = request_id or request_id_for(users, method)
            done = self.ledger.find(request_id)
            if done is not None:
                if sorted(done.get("users", [])) != users:
                    raise E2URecError(
                        f"request id {request_id!r} was already used for user(s) "
                        f"{done.get('users')}; choose another --request-id"
                    )
                return self._already(done)
            request = self._request(request_id)
            if request is not None:
                if request["users"] != users or request["method"] != method:
                    raise E2URecError(
                        f"request {request_id!r} is in progress for user(s) {request['users']} "
                        f"with method {request['method']}; resume it with the same arguments"
                    )
                return self._run(request, check_rows, say)
            others = [r["request_id"] for r in self.pending()]
            if others:
                raise E2URecError(
                    f"request {others[0]} is unfinished; finish it first with "
                    f"`e2urec forget --deployment {self.path} --request-id {others[0]}`"
                )
            waiting = self.queue.unfinished()
            if waiting:
                raise E2URecError(
                    f"{waiting} queued deletion request(s) wait on {self.path}; add this one "
                    f"with --enqueue, or serve them first with `e2urec work --deployment "
                    f"{self.path} --once`"
                )
            with_data = sorted(self.store.users_with_training_data(users))
            without = sorted(set(users) - set(with_data))
            if not with_data:
                return self._no_training_data(request_id, users, method, reason, say)
            request = self._new_request(request_id, users, with_data, without, method, sets, reason)
            return self._run(request, check_rows, say)

    def _check_known(self, users: list[int]) -> None:
        unknown = sorted(set(users) - self.store.known_users(users))
        if unknown:
            raise E2URecError(
                f"unknown user id(s), never in this deployment's data: "
                f"{', '.join(map(str, unknown))}; nothing was changed"
            )

    # ---------------------------------------------------------------- the queue
    def enqueue(
        self,
        users: Sequence[int],
        method: str = "e2urec",
        sets: list[str] | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        limit: int = QUEUE_LIMIT,
    ) -> tuple[dict[str, Any], bool]:
        """Check a deletion request and record it in the queue (one transaction); returns its
        record and whether it is new (see `queue.Queue.enqueue`). Unknown users, an empty list,
        bad method settings or a malformed request id refuse the whole request."""
        from e2urec.methods import METHODS
        from e2urec.unlearn import method_params

        users = sorted(set(int(u) for u in users))
        if not users:
            raise E2URecError("no users given: a deletion request names at least one user")
        spec = METHODS.get(method)
        if spec.base_format != "single":
            raise E2URecError(
                f"method {method!r} starts from a {spec.base_format} original; a deployment "
                "serves a single model"
            )
        params = method_params(method, sets)
        check = getattr(params, "check", None)
        if callable(check):
            check()
        if request_id is not None and not REQUEST_ID.fullmatch(request_id):
            raise E2URecError(
                f"request id {request_id!r}: use 1-64 letters, digits, '.', '_' or '-'"
            )
        self._check_known(users)
        request_id = request_id or request_id_for(users, method)
        done = None if self.queue.get(request_id) else self.ledger.find(request_id)
        return self.queue.enqueue(
            request_id, users, method, list(sets or []), reason, limit, done_elsewhere=done
        )

    def request(self, request_id: str) -> dict[str, Any] | None:
        """The record of a queued request (state, version, checks, ...), or of a synchronous
        one from its ledger entry; None if unknown."""
        record = self.queue.get(request_id)
        if record is not None:
            return record
        entry = self.ledger.find(request_id)
        return None if entry is None else ledger_record(entry)

    def next_version(self) -> str:
        """The name the next new version gets (vNNNN after the highest existing one)."""
        numbers = [int(p.name[1:]) for p in (self.path / VERSIONS).glob("v[0-9]*")]
        return f"v{max(numbers, default=0) + 1:04d}"

    def switch(self, version: str, users: Sequence[int], request_id: str) -> None:
        """Remove `users`' rows from the store (one transaction), then point current.json at
        `version` (atomic); each step is a no-op when already done."""
        self.store.remove_users(users)
        if self.current() != version:
            atomic_write_json(
                self.path / CURRENT,
                {"version": version, "updated": now(), "request_id": request_id},
            )

    def _already(self, entry: dict[str, Any]) -> ForgetResult:
        self._cleanup(entry["request_id"])
        return ForgetResult("already done", entry["request_id"], entry)

    def _request(self, request_id: str) -> dict[str, Any] | None:
        path = self.path / REQUESTS / request_id / REQUEST
        if not path.is_file():
            return None
        request = read_json(path, "request record")
        return None if request.get("status") == "done" else request

    def _no_training_data(
        self,
        request_id: str,
        users: list[int],
        method: str,
        reason: str | None,
        say: Callable[[str], None],
    ) -> ForgetResult:
        before = self.store.data_sha256()
        removed = self.store.remove_users(users)
        version = self.current()
        note = f"no training data held for user(s) {', '.join(map(str, users))}: nothing to unlearn"
        say(note)
        entry = self.ledger.append(
            {
                "kind": "forget",
                "request_id": request_id,
                "users": users,
                "no_training_data": users,
                "rows_removed": removed,
                "data_sha256_before": before,
                "data_sha256_after": self.store.data_sha256(),
                "method": None,
                "reason": reason,
                "parent_version": version,
                "version": version,
                "note": note,
            }
        )
        return ForgetResult("no training data", request_id, entry, [note])

    def _new_request(
        self,
        request_id: str,
        users: list[int],
        with_data: list[int],
        without: list[int],
        method: str,
        sets: list[str] | None,
        reason: str | None,
    ) -> dict[str, Any]:
        request = {
            "request_id": request_id,
            "status": "started",
            "created": now(),
            "users": users,
            "unlearned_users": with_data,
            "no_training_data": without,
            "method": method,
            "sets": list(sets or []),
            "reason": reason,
            "parent_version": self.current(),
            "version": self.next_version(),
            "rows_to_remove": self._rows_of(users),
            "data_sha256_before": self.store.data_sha256(),
        }
        atomic_write_json(self.path / REQUESTS / request_id / REQUEST, request)
        return request

    def _rows_of(self, users: list[int]) -> dict[str, int]:
        counts = {split: len(self.store.rows(split, users)) for split in SPLITS}
        with self.store.connect() as conn:
            marks = ", ".join("?" * len(users))
            for table in ("ratings", "profiles"):
                counts[table] = conn.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE user_id IN ({marks})", users
                ).fetchone()[0]
        return counts

    def _run(
        self, request: dict[str, Any], check_rows: int, say: Callable[[str], None]
    ) -> ForgetResult:
        from e2urec.unlearn import export, unlearn

        rid = request["request_id"]
        folder = self.path / REQUESTS / rid
        data, base, run, staged = (folder / n for n in ("data", "base", "run", "version"))
        final = self.version_dir(request["version"])
        notes = []
        if request["no_training_data"]:
            notes.append(
                "no training data held for user(s) "
                f"{', '.join(map(str, request['no_training_data']))}; their other rows are removed"
            )
        if not final.exists():
            if not (data / MANIFEST).is_file():
                say(f"[{rid}] materialising the request data")
                self.write_data(data, request["users"], request["unlearned_users"], rid)
            if not (base / MANIFEST).is_file():
                self._base_view(request, data, base)
            if not _complete(run):
                say(f"[{rid}] unlearning with {request['method']}")
                unlearn(request["method"], base, data, run, sets=request["sets"], overwrite=True)
            if not (staged / MANIFEST).is_file():
                say(f"[{rid}] merging into version {request['version']}")
                export(run, staged, merge=True, overwrite=True)
            if "checks" not in request:
                say(f"[{rid}] checks: membership inference and validation AUC")
                request["checks"] = self._checks(request, data, staged, check_rows)
                atomic_write_json(folder / REQUEST, request)
            adapter = run / "adapter" / "adapter_model.safetensors"
            info = {
                "version": request["version"],
                "parent_version": request["parent_version"],
                "request_id": rid,
                "created": now(),
                "method": request["method"],
                "model_sha256": model_sha256(staged / MODEL_DIR),
                "adapter_sha256": sha256_file(adapter) if adapter.is_file() else None,
                "checks": request["checks"],
            }
            atomic_write_json(staged / VERSION_INFO, info)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
        info = read_json(final / VERSION_INFO, "version record")
        self.switch(request["version"], request["users"], rid)
        entry = self.ledger.find(rid) or self.ledger.append(
            {
                "kind": "forget",
                "request_id": rid,
                "users": request["users"],
                "no_training_data": request["no_training_data"],
                "rows_removed": request["rows_to_remove"],
                "data_sha256_before": request["data_sha256_before"],
                "data_sha256_after": self.store.data_sha256(),
                "method": request["method"],
                "params": request["sets"],
                "reason": request["reason"],
                "parent_version": request["parent_version"],
                "version": request["version"],
                "model_sha256": info["model_sha256"],
                "adapter_sha256": info["adapter_sha256"],
                "checks": request["checks"],
            }
        )
        request["status"] = "done"
        atomic_write_json(folder / REQUEST, request)
        self._cleanup(rid)
        say(f"[{rid}] done: version {request['version']} serves")
        return ForgetResult("done", rid, entry, notes)

    def write_data(
        self,
        out: Path,
        users: Sequence[int] = (),
        forget_users: Sequence[int] = (),
        label: str | None = None,
    ) -> Path:
        """A prepared data folder of the store's rows: train = its train rows, forget =
        `forget_users`' train rows, retain = train without `users`' rows, valid and test without
        `users`' rows (`label` is recorded as the manifest's deployment_request)."""
        import pandas as pd

        from e2urec.data.prepare import BASE_SPLITS, FORMAT, split_file, split_stats

        users = set(users)
        forget_users = set(forget_users)
        train = self.store.rows("train")
        remaining = {
            s: [r for r in self.store.rows(s) if r["user_id"] not in users] for s in SPLITS
        }
        splits = {
            "train": train,
            "valid": remaining["valid"],
            "test": remaining["test"],
            "retain": [r for r in train if r["user_id"] not in users],
            "forget": [r for r in train if r["user_id"] in forget_users],
        }
        meta = self.store.meta()
        with staged_folder(out, overwrite=True) as stage:
            files = {}
            for name in BASE_SPLITS:
                text = "".join(
                    json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n"
                    for r in splits[name]
                )
                data = text.encode("utf-8")
                (stage / split_file(name)).write_bytes(data)
                stats = split_stats(pd.DataFrame(splits[name], columns=["user_id", "label"]))
                files[split_file(name)] = {"sha256": sha256_bytes(data), **stats}
            atomic_write_json(
                stage / MANIFEST,
                {
                    "format": FORMAT,
                    "config": meta["data_config"],
                    "template": meta["template"],
                    "domain": meta["domain"],
                    "splits": list(BASE_SPLITS),
                    "files": files,
                    "forgotten_users": sorted(forget_users),
                    "deployment_request": label,
                },
            )
        return out

    def _base_view(self, request: dict[str, Any], data: Path, out: Path) -> None:
        parent = self.version_dir(request["parent_version"])
        manifest = read_json(parent / MANIFEST, "version manifest")
        with staged_folder(out, overwrite=True) as stage:
            (stage / MODEL_DIR).mkdir()
            for path in (parent / MODEL_DIR).iterdir():
                try:
                    os.link(path, stage / MODEL_DIR / path.name)
                except OSError:
                    shutil.copy2(path, stage / MODEL_DIR / path.name)
            atomic_write_json(
                stage / MANIFEST,
                {
                    "format": "single",
                    "kind": "deployed",
                    "note": f"deployment version {request['parent_version']}, trained on the "
                    "store's train rows = this request's train split",
                    "deployment_version": request["parent_version"],
                    "trained_on": "train",
                    "backbone": manifest.get("backbone"),
                    "family": manifest.get("family"),
                    "seed": manifest.get("seed"),
                    "data_dir": str(data),
                    "data_manifest_sha256": sha256_file(data / MANIFEST),
                    "weights_sha256": manifest.get("weights_sha256"),  # the same (linked) files
                    "complete": True,
                },
            )

    def _checks(
        self, request: dict[str, Any], data: Path, new_version: Path, limit: int
    ) -> dict[str, Any]:
        from e2urec.data.dataset import load_split
        from e2urec.runs import load_run_model

        rows = {
            name: checks.sample(load_split(data, name).to_dict("records"), limit)
            for name in ("forget", "test", "valid")
        }
        args = (rows["forget"], rows["test"], rows["valid"])
        before = checks.measure(self.load_model(request["parent_version"]), *args)
        after = checks.measure(load_run_model(new_version), *args)
        return {
            **checks.before_after(before, after),
            "members": len(rows["forget"]),
            "nonmembers": len(rows["test"]),
            "valid_rows": len(rows["valid"]),
        }

    def _cleanup(self, request_id: str) -> None:
        folder = self.path / REQUESTS / request_id
        for name in ("data", "base", "run", "version"):
            shutil.rmtree(folder / name, ignore_errors=True)


def _complete(run: Path) -> bool:
    path = run / MANIFEST
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("complete"))
    except json.JSONDecodeError:
        return False


# ---------------------------------------------------------------- creating a deployment
def training_split(manifest: dict[str, Any]) -> str:
    """The split a run was trained on: retain for an unlearned run, else its `trained_on`."""
    if manifest.get("kind") == "unlearned":
        return "retain"
    split = manifest.get("trained_on") or "train"
    if split not in ("train", "retain"):
        raise E2URecError(f"cannot deploy a run trained on {split!r}; deploy a train/retain run")
    return split


def deploy(
    run: str | Path,
    data: str | Path,
    out: str | Path,
    raw: str | Path | None = None,
    overwrite: bool = False,
) -> Deployment:
    """Create deployment `out` from run `run` on prepared data `data` (see the module docstring).

    Item titles and user profiles come from the raw data the folder was prepared from (its
    manifest's dataset and raw path), or from `raw`.
    """
    from e2urec.data.dataset import load_split, read_manifest
    from e2urec.runs import read_run_manifest
    from e2urec.unlearn import export

    run, data = Path(run).absolute(), Path(data).absolute()
    manifest = read_run_manifest(run)
    data_manifest = read_manifest(data)
    if manifest.get("data_manifest_sha256") != sha256_file(data / MANIFEST):
        raise E2URecError(f"--data {data} is not the prepared data run {run} was trained on")
    split = training_split(manifest)
    frames = {
        "train": load_split(data, split),
        "valid": load_split(data, "valid"),
        "test": load_split(data, "test"),
    }
    log = _raw_log(data_manifest, raw)
    users = set(load_split(data, "train")["user_id"].tolist())
    for frame in frames.values():
        users.update(frame["user_id"].tolist())
    ratings = log.ratings[log.ratings["user_id"].isin(users)]
    profiles = (
        []
        if log.users is None
        else log.users[log.users["user_id"].isin(users)][["user_id", "gender", "age", "job"]]
        .astype(str)
        .itertuples(index=False)
    )
    config = data_manifest.get("config", {})
    meta = {
        "template": data_manifest["template"],
        "domain": data_manifest.get("domain", "movies"),
        "history_len": int(config.get("history_len", 10)),
        "data_config": config,
        "source_run": str(run),
        "source_data": str(data),
    }
    with staged_folder(out, overwrite=overwrite) as stage:
        export(run, stage / VERSIONS / "v0001", merge=True)
        store = Store.create(
            stage / STORE,
            {name: frame.to_dict("records") for name, frame in frames.items()},
            ratings[["user_id", "item_id", "rating", "timestamp"]].itertuples(index=False),
            profiles,
            log.items[["item_id", "title"]]
            .drop_duplicates("item_id")
            .astype({"title": str})
            .itertuples(index=False),
            meta,
        )
        with store.connect() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO known_users VALUES (?)", [(u,) for u in sorted(users)]
            )
        version = stage / VERSIONS / "v0001"
        atomic_write_json(
            version / VERSION_INFO,
            {
                "version": "v0001",
                "parent_version": None,
                "created": now(),
                "source_run": str(run),
                "model_sha256": model_sha256(version / MODEL_DIR),
            },
        )
        Ledger(stage / LEDGER).append(
            {
                "kind": "deploy",
                "version": "v0001",
                "source_run": str(run),
                "source_kind": manifest.get("kind"),
                "source_format": manifest.get("format", "single"),
                "trained_on": split,
                "data_dir": str(data),
                "data_manifest_sha256": sha256_file(data / MANIFEST),
                "rows": store.counts(),
                "users": [],
                "data_sha256": store.data_sha256(),
                "model_sha256": model_sha256(version / MODEL_DIR),
            }
        )
        atomic_write_json(stage / CURRENT, {"version": "v0001", "updated": now()})
    return Deployment(out)


def _raw_log(data_manifest: dict[str, Any], raw: str | Path | None) -> Any:
    from e2urec.data.readers import READERS

    config = data_manifest.get("config") or {}
    dataset = config.get("dataset")
    if dataset is None:
        raise E2URecError("the prepared data's manifest names no dataset; cannot read item titles")
    source = raw if raw is not None else config.get("raw")
    try:
        return READERS.get(dataset)(None if source is None else Path(source))
    except E2URecError as exc:
        raise E2URecError(
            f"cannot read the raw {dataset} data for titles and profiles ({exc}); pass --raw"
        ) from None
