"""Deployments: model versions, the data they were trained on, and deletion requests.

A deployment folder DEP holds:
  versions/vNNNN/   single-format runs (manifest.json, model/, version.json), one per version;
                    a run format served as it is (`runs.SERVED`, e.g. apa) keeps its own files
  current.json      which version serves (written atomically)
  store.sqlite      the data the current version was trained on and the request queue (`store`)
  ledger.jsonl      the hash-chained history (`ledger`); secret.key keys its pseudonyms (0600)
  requests/pass-N/  the working folder of a pass in progress (deleted when it ends)

Every deletion goes through one pipeline: `enqueue` records a checked request in the queue, a
`worker.Worker` serves queued requests in passes; a synchronous `forget` is enqueue plus
draining the queue in-process. After a switch, versions that no longer serve (every one was
trained on, or derived from a model trained on, the forgotten rows) are purged at once, or once
the deployment's rollback window has passed; each purge is a ledger entry. A request names a
purpose (privacy or pollution) that picks the method and settings the deployment maps it to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2urec.artifacts import (
    MANIFEST,
    atomic_write_json,
    model_sha256,
    read_json,
    sha256_file,
    staged_folder,
)
from e2urec.deploy.ledger import LEDGER, SECRET, Keys, Ledger, LedgerEntry, iso, written
from e2urec.deploy.queue import QUEUE_LIMIT, Queue, conflict, ledger_record
from e2urec.deploy.store import SPLITS, STORE, Store
from e2urec.errors import E2URecError
from e2urec.quiet import quiet_transformers
from e2urec.runs import MODEL_DIR, SERVED, RunModel

CURRENT = "current.json"
VERSIONS = "versions"
REQUESTS = "requests"
VERSION_INFO = "version.json"
LOCK = ".forget.lock"
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
PURPOSES = ("privacy", "pollution")
# pollution: the contrastive teacher, the README's measured recommendation for poisoned rows
DEFAULT_METHODS = {"privacy": ["e2urec"], "pollution": ["e2urec", "teacher=contrastive"]}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def quiet(message: str) -> None:
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


@dataclass
class VersionInfo:
    """version.json of a version folder: where it came from and its weights' sha256."""

    version: str
    model_sha256: str
    parent_version: str | None = None
    created: str = dataclasses.field(default_factory=iso)
    method: str | None = None
    adapter_sha256: str | None = None
    checks: dict[str, Any] | None = None
    pass_id: int | None = None
    requests: list[str] | None = None
    source_run: str | None = None

    def write(self, folder: Path) -> None:
        """Write version.json into `folder` (atomic)."""
        atomic_write_json(folder / VERSION_INFO, written(self))

    @classmethod
    def read(cls, folder: Path) -> VersionInfo:
        """version.json of `folder` (older records included)."""
        data = read_json(folder / VERSION_INFO, "version record")
        data["pass_id"] = data.pop("pass", None)
        if "request_id" in data:  # a synchronous request of an older deployment
            data["requests"] = [data.pop("request_id")]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def serve_version(folder: Path, version: str) -> None:
    """Point the deployment in `folder` at `version` (current.json, written atomically)."""
    atomic_write_json(folder / CURRENT, {"version": version, "updated": iso()})


def parse_duration(text: str, what: str = "rollback window") -> float:
    """ "0", "90s", "30m", "12h", "7d" → seconds; a negative or malformed one is an error
    naming `what`."""
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if match is None or float(match[1]) < 0:
        raise E2URecError(f"{what} {text!r}: give a duration >= 0 like 0, 90s, 30m, 12h or 7d")
    return float(match[1]) * UNITS[match[2] or "s"]


def check_method(method: str, sets: Sequence[str], fmt: str = "single") -> None:
    """`method` must be a registered method that starts from the deployment's run format `fmt`
    (a single model, or e.g. "apa") and `sets` valid settings of it."""
    from e2urec.methods import METHODS
    from e2urec.unlearn import method_params

    spec = METHODS.get(method)
    if spec.base_format != fmt:
        serves = "a single model" if fmt == "single" else f"{fmt} runs"
        raise E2URecError(
            f"method {method!r} starts from a {spec.base_format} original; this deployment "
            f"serves {serves}"
        )
    method_params(method, list(sets))


def default_methods(fmt: str) -> dict[str, list[str]]:
    """Purpose → [method, *settings] by default: DEFAULT_METHODS for a single model, else the
    method that unlearns runs of format `fmt` (e.g. apa) for every purpose."""
    from e2urec.methods import METHODS

    if fmt == "single":
        return {k: list(v) for k, v in DEFAULT_METHODS.items()}
    names = [name for name in METHODS if METHODS.get(name).base_format == fmt]
    return {purpose: names[:1] for purpose in PURPOSES}


def parse_method_for(items: Sequence[str], fmt: str = "single") -> dict[str, list[str]]:
    """ "pollution=e2urec:teacher=contrastive,alpha=2" items → purpose → [method, *settings],
    over the defaults for run format `fmt`; each method and setting checked."""
    purposes = default_methods(fmt)
    for item in items:
        purpose, _, spec = item.partition("=")
        method, _, settings = spec.partition(":")
        if purpose not in PURPOSES or not method:
            raise E2URecError(
                f"--method-for {item!r}: expected PURPOSE=METHOD[:KEY=VALUE,...] with PURPOSE "
                f"one of {', '.join(PURPOSES)}"
            )
        sets = [s.strip() for s in settings.split(",") if s.strip()]
        check_method(method, sets, fmt)
        purposes[purpose] = [method, *sets]
    return purposes


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
        self.keys = Keys(self.path / SECRET)

    @functools.cached_property
    def queue(self) -> Queue:
        """The deployment's durable request queue (tables created on first use)."""
        return Queue(self.store)

    def ensure_keys(self) -> None:
        """Create the tables and the secret of an older deployment that never had them (a
        deployment whose secret went missing is an error, not a new key)."""
        self.queue  # noqa: B018 (an older store gets its queue tables first)
        if not self.keys.path.is_file() and not self.store.meta().get("keyed"):
            self.keys.create()
            self.store.set_meta({"keyed": True})

    def settings(self) -> dict[str, Any]:
        """purposes (purpose → [method, *settings]), rollback_window_s, format and the exact
        window (exact_every, exact_within_s; None when not set)."""
        meta = self.store.meta()
        return {
            "purposes": meta.get("purposes") or DEFAULT_METHODS,
            "rollback_window_s": float(meta.get("rollback_window_s") or 0.0),
            "format": meta.get("format") or "single",
            "exact_every": meta.get("exact_every"),
            "exact_within_s": meta.get("exact_within_s"),
        }

    def current(self) -> str:
        """The name of the version that serves (vNNNN)."""
        return read_json(self.path / CURRENT, "deployment pointer")["version"]

    def version_dir(self, version: str) -> Path:
        """The folder of version `version`."""
        return self.path / VERSIONS / version

    def versions(self) -> list[str]:
        """Names of the version folders present, oldest first."""
        return sorted(p.name for p in (self.path / VERSIONS).glob("v[0-9]*"))

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
        history = self.store.history(user, int(meta["history_len"]))
        if not history:
            self._check_known([user])
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

    # ---------------------------------------------------------------- requests
    @contextlib.contextmanager
    def lock(self, holder: str = "a forget request") -> Iterator[None]:
        """Hold the deployment's lock (the lock file names `holder` and the pid while held);
        another holder → one clear error naming it. The OS drops the lock of a killed process."""
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

    def _check_known(self, users: list[int]) -> None:
        self.ensure_keys()
        unknown = sorted(set(users) - self.store.known_users(users, self.keys.pseudonym))
        if unknown:
            raise E2URecError(
                f"unknown user id(s), never in this deployment's data: "
                f"{', '.join(map(str, unknown))}; nothing was changed"
            )

    def checked(
        self,
        users: Sequence[int],
        method: str | None = None,
        sets: Sequence[str] | None = None,
        purpose: str = "privacy",
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """A deletion request checked (users known, purpose, method and settings valid, request
        id well formed) with its method resolved: an explicit `method` (and `sets`), else the
        deployment's method for `purpose` (with `sets` added to its settings)."""
        users = sorted(set(int(u) for u in users))
        if not users:
            raise E2URecError("no users given: a deletion request names at least one user")
        if purpose not in PURPOSES:
            raise E2URecError(f"purpose {purpose!r}: use one of {', '.join(PURPOSES)}")
        if request_id is not None and not REQUEST_ID.fullmatch(request_id):
            raise E2URecError(
                f"request id {request_id!r}: use 1-64 letters, digits, '.', '_' or '-'"
            )
        settings = self.settings()
        if method is None:
            method, *mapped = settings["purposes"].get(purpose) or DEFAULT_METHODS[purpose]
            sets = [*mapped, *(sets or [])]
        check_method(method, sets or [], settings["format"])
        self._check_known(users)
        rid = request_id or self.keys.request_id(users, method)
        return {"request_id": rid, "users": users, "method": method, "sets": list(sets or [])}

    def enqueue(
        self,
        users: Sequence[int],
        method: str | None = None,
        sets: Sequence[str] | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        limit: int = QUEUE_LIMIT,
        purpose: str = "privacy",
    ) -> tuple[dict[str, Any], bool]:
        """Check a deletion request (see `checked`) and record it in the queue (one
        transaction); returns its record and whether it is new (see `queue.Queue.enqueue`)."""
        request = self.checked(users, method, sets, purpose, request_id)
        rid, users = request["request_id"], request["users"]
        names = self.keys.pseudonyms(users)
        done = None if self.queue.get(rid) else self.ledger.find(rid)
        if done is not None:  # served by a synchronous forget of an older deployment
            if sorted(done.get("users") or []) not in (users, sorted(names)):
                raise conflict(rid, done.get("users") or [], None)
            return ledger_record(done), False
        return self.queue.enqueue(
            rid, users, request["method"], request["sets"], reason, purpose, limit, names
        )

    def request(self, request_id: str) -> dict[str, Any] | None:
        """The record of a request (from the queue, or the ledger for a synchronous request of
        an older deployment); None if unknown."""
        record = self.queue.get(request_id)
        if record is not None:
            return record
        entry = self.ledger.find(request_id)
        return None if entry is None else ledger_record(entry)

    def forget(
        self,
        users: Sequence[int] | None,
        say: Callable[[str], None] = quiet,
        request_id: str | None = None,
        **options: Any,
    ) -> ForgetResult:
        """Serve a deletion request now: enqueue it, then drain the queue in this process (the
        requests queued before it are served first, in order). `users` None resumes
        `request_id`. Options: method, sets, reason, purpose (see `enqueue`) and the worker's
        (max_users, valid_rows, holdout_rows)."""
        from e2urec.deploy.worker import Worker

        request = {
            k: options.pop(k) for k in ("method", "sets", "reason", "purpose") if k in options
        }
        if users is None and request_id is None:
            raise E2URecError("give the users to forget (or a --request-id to resume)")
        if users is not None:
            checks = {k: v for k, v in request.items() if k != "reason"}
            request_id = self.checked(users, request_id=request_id, **checks)["request_id"]
        record = self.request(request_id)
        if record is None and users is None:
            raise E2URecError(f"no request {request_id!r} to resume; give --users")
        if record is not None and record["state"] == "done":
            if users is not None:
                self.enqueue(users, request_id=request_id, **request)  # a conflict is an error
            return self._result(request_id, "already done")
        with Worker(self, say=say, **options) as worker:
            if users is not None:
                self.enqueue(users, request_id=request_id, **request)
            worker.drain()
        return self._result(request_id, "done")

    def _result(self, request_id: str, status: str) -> ForgetResult:
        record = self.request(request_id) or {}
        if record.get("state") == "failed":
            raise E2URecError(f"request {request_id} failed: {record.get('error')}")
        entry = self.ledger.entries()[record["ledger_seq"] - 1]
        missing = entry.get("no_training_data") or []
        notes = [f"no training data held for {len(missing)} of its user(s)"] if missing else []
        if status == "done" and len(missing) == len(entry.get("users") or []):
            status = "no training data"
        return ForgetResult(status, request_id, entry, notes)

    # ---------------------------------------------------------------- versions
    def next_version(self) -> str:
        """The name the next new version gets (after every version ever named)."""
        named = [e.get("version") or "" for e in self.ledger.entries()] + self.versions()
        numbers = [int(v[1:]) for v in named if re.fullmatch(r"v\d+", v)]
        return f"v{max(numbers, default=0) + 1:04d}"

    def switch(self, version: str, users: Sequence[int]) -> None:
        """Remove `users`' rows from the store (one transaction, then compacted), then point
        current.json at `version` (atomic); each step is a no-op when already done."""
        self.store.remove_users(users, self.keys.pseudonyms(sorted(set(users))))
        old = self.current()
        if old != version:
            self.store.retire(old)
            serve_version(self.path, version)

    def purge(self, keep: Sequence[str] = ()) -> list[str]:
        """Delete every version that does not serve (nor is in `keep`) once the rollback window
        has passed since it stopped serving; each purge is a ledger entry."""
        window = self.settings()["rollback_window_s"]
        serving, retired, now = self.current(), self.store.retired(), time.time()
        purged = []
        for version in self.versions():
            if version == serving or version in keep:
                continue
            since = retired.get(version)
            if since is None:
                self.store.retire(version, now)
                since = now
            if now - since >= window:
                self._purge(version, since, "superseded")
                purged.append(version)
        return purged

    def _purge(self, version: str, since: float, why: str) -> None:
        folder = self.version_dir(version)
        recorded = any(
            e.get("kind") == "purge" and e.get("version") == version for e in self.ledger.entries()
        )
        if not recorded:
            try:
                sha = VersionInfo.read(folder).model_sha256
            except E2URecError:
                sha = model_sha256(folder / MODEL_DIR)
            details = {"superseded": iso(since), "why": why}
            self.ledger.append(LedgerEntry("purge", version, model_sha256=sha, details=details))
        shutil.rmtree(folder)
        self.store.unretire(version)

    def rollback(self, to: str | None = None) -> dict[str, Any]:
        """Serve a kept earlier version again; the versions after it are purged. Returns
        {"from", "to", "undoes": request ids whose unlearning the old version lacks}."""
        with self.lock("a rollback"):
            if self.queue.running_pass() is not None or self.store.select(
                "retrains", "state = 'running'"
            ):
                raise E2URecError(
                    "a pass or an exact Retrain is unfinished; finish it first with "
                    "`e2urec work --once`"
                )
            serving = self.current()
            kept = [v for v in self.versions() if v < serving]
            target = to or (kept[-1] if kept else None)
            if target is None or target not in kept:
                window = self.settings()["rollback_window_s"]
                raise E2URecError(
                    f"no kept version {to or 'before ' + serving} to roll back to (kept: "
                    f"{', '.join(kept) or 'none'}; rollback window {window:g} s)"
                )
            undoes = [
                e["request_id"]
                for e in self.ledger.entries()
                if e.get("kind") == "forget"
                and e.get("method")
                and target < e["version"] <= serving
            ]
            details = {"undoes": undoes}
            self.ledger.append(
                LedgerEntry("rollback", target, parent_version=serving, details=details)
            )
            serve_version(self.path, target)
            self.store.unretire(target)
            for version in [v for v in self.versions() if v > target]:
                self._purge(version, time.time(), "rolled back")
        return {"from": serving, "to": target, "undoes": undoes}

    def adopt_old_requests(self) -> None:
        """An older deployment's unfinished synchronous requests (requests/ID/request.json)
        join the queue; every leftover working folder and receipt is deleted, except an
        unfinished exact Retrain's (`exact`), which resumes from it."""
        folder = self.path / REQUESTS
        for path in sorted(folder.glob("*/request.json")) if folder.is_dir() else []:
            old = read_json(path, "request record")
            if old.get("status") != "done" and self.queue.get(old["request_id"]) is None:
                self.queue.enqueue(
                    old["request_id"], old["users"], old["method"], old.get("sets") or [],
                    old.get("reason"), names=self.keys.pseudonyms(old["users"]),
                )  # fmt: skip
        running = self.store.select("retrains", "state = 'running'")
        keep = {f"exact-{r['retrain_id']}" for r in running}  # resumed from its checkpoint
        for child in folder.iterdir() if folder.is_dir() else []:
            if child.name in keep:
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        for leftover in (self.path / VERSIONS).glob(".*"):
            shutil.rmtree(leftover, ignore_errors=True)

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

        from e2urec.data.prepare import BASE_SPLITS, COLUMNS, FORMAT, split_file, write_split

        users, forget_users = set(users), set(forget_users)
        train = self.store.rows("train")
        splits = {s: [r for r in self.store.rows(s) if r["user_id"] not in users] for s in SPLITS}
        splits["retain"], splits["train"] = splits["train"], train
        splits["forget"] = [r for r in train if r["user_id"] in forget_users]
        meta = self.store.meta()
        with staged_folder(out, overwrite=True) as stage:
            files = {
                split_file(name): write_split(stage, name, pd.DataFrame(rows, columns=COLUMNS))
                for name, rows in splits.items()
            }
            manifest = {"format": FORMAT, "config": meta["data_config"], "files": files}
            manifest.update(template=meta["template"], domain=meta["domain"])
            manifest.update(splits=list(BASE_SPLITS), forgotten_users=sorted(forget_users))
            atomic_write_json(stage / MANIFEST, {**manifest, "deployment_request": label})
        return out


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
    rollback_window: str | float = 0,
    method_for: Sequence[str] = (),
    exact_every: int | None = None,
    exact_within: str | None = None,
) -> Deployment:
    """Create deployment `out` from run `run` on prepared data `data` (see the module docstring).

    Item titles and user profiles come from the raw data the folder was prepared from (its
    manifest's dataset and raw path), or from `raw`. `rollback_window`: how long superseded
    versions are kept (a duration, see `parse_duration`); `method_for`: purpose → method items
    (see `parse_method_for`); `exact_every` / `exact_within`: the exact retraining window (see
    `exact`; needs a run trained by `e2urec train`, whose recipe is recorded). Everything is
    checked before the folder is created.
    """
    from e2urec.data.dataset import read_manifest
    from e2urec.deploy import exact
    from e2urec.runs import read_run_manifest
    from e2urec.unlearn import export

    run, data = Path(run).absolute(), Path(data).absolute()
    rollback = parse_duration(str(rollback_window))
    manifest = read_run_manifest(run)
    fmt = manifest.get("format", "single")
    served = served_format(fmt)
    purposes = parse_method_for(method_for, fmt if served else "single")
    data_manifest = read_manifest(data)
    if manifest.get("data_manifest_sha256") != sha256_file(data / MANIFEST):
        raise E2URecError(f"--data {data} is not the prepared data run {run} was trained on")
    split = training_split(manifest)
    window, recipe = exact.parse_window(exact_every, exact_within), exact.recipe(run, manifest)
    if recipe is None and any(v is not None for v in window.values()):
        raise E2URecError(
            f"an exact window needs a run trained by `e2urec train` (its recipe is what the "
            f"Retrain repeats); {run} is a {manifest.get('kind')} run"
        )
    tables = _store_tables(data, data_manifest, split, raw)
    if served is not None:
        served.check(run, manifest, tables["samples"]["train"])
    meta = {"source_run": str(run), "source_data": str(data), "keyed": True}
    meta.update(tables.pop("meta"), purposes=purposes, rollback_window_s=rollback, recipe=recipe)
    meta.update(window)
    if served is not None:
        meta["format"] = fmt
    with staged_folder(out, overwrite=overwrite) as stage:
        version = stage / VERSIONS / "v0001"
        if served is None:  # an adapter over its named base stays one (the base is shared)
            export(run, version, merge=True, keep_adapter=True)
        else:
            write_served(served, run, manifest, version)
        store = Store.create(stage / STORE, **tables, meta=meta)
        Keys(stage / SECRET).create()
        sha = model_sha256(version if served else version / MODEL_DIR)
        VersionInfo("v0001", sha, source_run=str(run)).write(version)
        fields = {"source_run": str(run), "source_kind": manifest.get("kind"), "trained_on": split}
        fields.update(source_format=manifest.get("format", "single"), data_dir=str(data))
        fields.update(data_manifest_sha256=sha256_file(data / MANIFEST), rows=store.counts())
        fields.update(data_sha256=store.data_sha256(), rollback_window_s=rollback, **window)
        Ledger(stage / LEDGER).append(
            LedgerEntry("deploy", "v0001", model_sha256=sha, details=fields)
        )
        serve_version(stage, "v0001")
    return Deployment(out)


def served_format(fmt: str) -> Any:
    """How a deployment serves run format `fmt` as it is (`runs.Served`, registered by the
    method that starts from it, e.g. apa), or None: the run is merged into one model."""
    import e2urec.methods  # noqa: F401 (the methods register the formats they serve)

    return SERVED.get(fmt) if fmt in SERVED else None


def write_served(served: Any, run: Path, manifest: dict[str, Any], version: Path) -> None:
    """Version `version` of a run format the deployment serves as it is (`runs.SERVED`): the
    run's weights copied, its manifest with their sha256."""
    from e2urec.artifacts import weights_sha256

    version.mkdir(parents=True)
    served.write(run, version, False)
    fields = {k: v for k, v in manifest.items() if k not in ("base_run", "weights_sha256")}
    fields.update(exported_from=str(run), weights_sha256=weights_sha256(version))
    atomic_write_json(version / MANIFEST, fields)


def _store_tables(
    data: Path, data_manifest: dict[str, Any], split: str, raw: str | Path | None
) -> dict[str, Any]:
    """Store.create's arguments: the run's train rows, valid and test rows, their users'
    ratings and profiles, item titles, and the meta the prompts need."""
    from e2urec.data.dataset import load_split

    frames = {name: load_split(data, split if name == "train" else name) for name in SPLITS}
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
    items = log.items[["item_id", "title"]].drop_duplicates("item_id").astype({"title": str})
    return {
        "samples": {name: frame.to_dict("records") for name, frame in frames.items()},
        "ratings": ratings[["user_id", "item_id", "rating", "timestamp"]].itertuples(index=False),
        "profiles": profiles,
        "items": items.itertuples(index=False),
        "users": sorted(users),
        "meta": {
            "template": data_manifest["template"],
            "domain": data_manifest.get("domain", "movies"),
            "history_len": int(config.get("history_len", 10)),
            "data_config": config,
        },
    }


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
