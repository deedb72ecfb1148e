"""The queue worker, the one deletion pipeline: queued requests served in order, in
coalesced passes, warm (a synchronous `forget` is a worker draining the queue in-process).

A `Worker` holds the deployment's lock while it lives and keeps in memory the serving model, the
store's train rows, seeded samples of validation and held-out test rows and the model's outputs
on them (once per version). A pass (see `queue.Queue.claim`): 1. the data hashes before and
after; 2. the method over the union of the pass's users, in memory, merged into one model;
3. checks per request: membership-inference AUC of its users' rows against the held-out sample
and validation AUC, before (cached) and after; 4. the version written whole (staged, one
rename): the commit point; 5. the rows removed (zeroed, WAL truncated), current.json switched,
one ledger entry per request (one atomic rewrite), the model swapped in (`on_switch`),
superseded versions purged, the requests done with pseudonyms for users (one transaction).
A crash before 4 leaves no version (the pass runs again); after it, step 5 is finished from the
version folder. A method that fails marks the pass's requests failed. A starting worker adopts
an older deployment's unfinished requests, removes leftovers and purges expired versions.
Before each pass (and once the queue is empty) the worker runs the exact window's Retrain when
it is due or was interrupted (`exact`), and reloads its warm state from the retrained version.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from e2urec.artifacts import (
    MANIFEST,
    read_json,
    sha256_file,
    staged_folder,
)
from e2urec.deploy import MAX_USERS, checks
from e2urec.deploy.deployment import (
    REQUESTS,
    Deployment,
    VersionInfo,
    model_sha256,
    quiet,
    served_format,
)
from e2urec.deploy.ledger import LedgerEntry
from e2urec.deploy.queue import Pass
from e2urec.errors import E2URecError
from e2urec.methods.base import UnlearnContext
from e2urec.quiet import quiet_transformers
from e2urec.runs import MODEL_DIR, SingleModel
from e2urec.train.streams import sample_rows

VALID_ROWS = 400
HOLDOUT_ROWS = 200
SEED = 0
EXACT_POLL_S = 10.0  # how often an idle worker looks whether the exact window is due
log = logging.getLogger("e2urec.worker")


def _copy(source: Any) -> Any:
    """A recommender sharing `source`'s tokenizer with a deep copy of its model."""
    recommender = copy.copy(source)
    recommender.model = copy.deepcopy(source.model)
    return recommender


def _kept(rows: list[dict], values: np.ndarray, users: set[int]) -> tuple[list, np.ndarray]:
    """`rows` and their `values` less `users`' rows."""
    keep = np.array([r["user_id"] not in users for r in rows], dtype=bool)
    return [r for r, k in zip(rows, keep, strict=True) if k], values[keep]


class WarmContext(UnlearnContext):
    """An `UnlearnContext` over the worker's memory: `original()` copies the serving model, the
    rows are given, and a prepared data folder is written only if a method reads
    `data_dir` (e.g. retrain)."""

    source: Any
    materialise: Callable[[], Path]
    _data_dir: Path | None

    @property  # type: ignore[override]
    def data_dir(self) -> Path:
        if self._data_dir is None:
            self._data_dir = self.materialise()
        return self._data_dir

    @data_dir.setter
    def data_dir(self, value: Path | None) -> None:
        self._data_dir = value

    __repr__ = object.__repr__  # the dataclass repr would read data_dir and write the folder

    def original(self, editable: bool = False) -> Any:
        """A copy of the serving model, every parameter trainable (as a loaded one); with
        `editable`, a version stored as an adapter comes as that adapter, trainable, over its
        frozen base (read from the version folder)."""
        from e2urec.backbones import holds_adapter, load_recommender

        if editable and holds_adapter(self.base_run / MODEL_DIR):
            return load_recommender(self.base_run / MODEL_DIR, editable=True)
        recommender = _copy(self.source)
        recommender.model.requires_grad_(True)
        return recommender


class Warm:
    """The serving version in memory: model, train rows, check samples and their outputs."""

    def __init__(self, dep: Deployment, valid_rows: int, holdout_rows: int) -> None:
        self.version = dep.current()
        self.model = dep.load_model(self.version)
        self.manifest = read_json(dep.version_dir(self.version) / MANIFEST, "version manifest")
        self.train = dep.store.rows("train")
        self.valid = sample_rows(dep.store.rows("valid"), valid_rows, SEED, "deploy", "valid")
        self.holdout = sample_rows(dep.store.rows("test"), holdout_rows, SEED, "deploy", "holdout")
        self.valid_p_yes = checks.losses_and_p_yes(self.model, self.valid)[1]
        self.holdout_loss = checks.losses_and_p_yes(self.model, self.holdout)[0]

    def without(self, users: set[int]) -> tuple[list, np.ndarray, list, np.ndarray]:
        """The valid sample rows and their P(Yes), the holdout sample rows and their losses,
        less `users`' rows."""
        return (
            *_kept(self.valid, self.valid_p_yes, users),
            *_kept(self.holdout, self.holdout_loss, users),
        )

    def advance(self, version: str, built: Any, users: set[int]) -> None:
        """Serve `version` (`built`: (model, manifest, the new model's valid P(Yes) and holdout
        losses on the kept sample rows), None when only rows left); drop `users`' rows."""
        self.valid, valid_p_yes, self.holdout, holdout_loss = self.without(users)
        built = built or (self.model, self.manifest, (valid_p_yes, holdout_loss))
        self.version, (self.model, self.manifest, outputs) = version, built
        self.valid_p_yes, self.holdout_loss = outputs
        self.train = [r for r in self.train if r["user_id"] not in users]


class Worker:
    """Serves a deployment's queue (see the module docstring). Use as a context manager:
    entering takes the lock, recovers and loads the warm state; `step()` serves one pass,
    `drain()` all queued requests, `run(stop)` until `stop`.

    max_users: most users in one pass (the first request always fits); max_wait: seconds the
    oldest queued request may wait for others to join its pass (0: take what is queued).
    on_switch(version, model) is called after each switch (serve swaps its model there).
    """

    def __init__(
        self,
        deployment: str | Path | Deployment,
        max_users: int = MAX_USERS,
        max_wait: float = 0.0,
        valid_rows: int = VALID_ROWS,
        holdout_rows: int = HOLDOUT_ROWS,
        say: Callable[[str], None] = quiet,
        on_switch: Callable[[str, SingleModel], None] | None = None,
    ) -> None:
        if max_users < 1:
            raise E2URecError(f"max users per pass must be at least 1, got {max_users}")
        if max_wait < 0:
            raise E2URecError(f"max wait must be at least 0 seconds, got {max_wait}")
        self.dep = deployment if isinstance(deployment, Deployment) else Deployment(deployment)
        self.max_users, self.max_wait = max_users, max_wait
        self.valid_rows, self.holdout_rows = valid_rows, holdout_rows
        self.say, self.on_switch = say, on_switch
        self._lock: Any = None
        self.warm: Warm | None = None
        self._exact_look = 0.0  # monotonic time before which an idle worker skips the window

    def __enter__(self) -> Worker:
        self._lock = self.dep.lock("a queue worker")
        self._lock.__enter__()
        try:
            dep = self.dep
            dep.ensure_keys()
            dep.adopt_old_requests()
            dep.store.forget_known(dep.keys.pseudonym)
            running = dep.queue.running_pass()
            retraining = dep.store.select("retrains", "state = 'running'")
            keep = [running.version] if running else []
            self._purge((*keep, *(r["version"] for r in retraining)))
            with quiet_transformers():
                self.warm = Warm(dep, self.valid_rows, self.holdout_rows)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)

    def _purge(self, keep: tuple[str, ...] = ()) -> None:
        for version in self.dep.purge(keep):
            self.say(f"purged superseded version {version}")

    # ---------------------------------------------------------------- the loop
    def ready(self) -> bool:
        """Whether a pass should start now: one is interrupted, or queued requests exist and
        the oldest waited `max_wait` seconds or their users fill a pass."""
        queue = self.dep.queue
        if queue.running_pass() is not None:
            return True
        queued = queue.requests(("queued",))
        if not queued:
            return False
        users = {u for r in queued for u in r["users"]}
        waited = time.time() - min(r["created_s"] for r in queued)
        return waited >= self.max_wait or len(users) >= self.max_users

    def step(self, wait: bool = True) -> list[dict[str, Any]]:
        """Serve one pass if one is ready (`wait=False`: ignore `max_wait`); returns the
        records of its requests (empty: nothing to do). Expired versions are purged first."""
        queue = self.dep.queue
        work = queue.running_pass()
        if work is None:
            # before the next pass, which is unlearned on top of the Retrain (when idle, the
            # window is looked at every EXACT_POLL_S seconds: it reads the whole ledger)
            self.retrain_if_due(idle=not queue.requests(("queued",)))
            if self.dep.store.retired():
                self._purge()
            if wait and not self.ready():
                return []
            self.dep.ledger.entries()  # a tampered ledger stops the worker before any pass
            work = queue.claim(self.max_users, self.dep.current(), self.dep.next_version())
            if work is None:
                return []
        self.serve_pass(work)
        return [queue.get(r["request_id"]) or {} for r in work.requests]

    def drain(self) -> list[dict[str, Any]]:
        """Serve passes until nothing is queued; returns every served request's record."""
        served: list[dict[str, Any]] = []
        while True:
            records = self.step(wait=False)
            served.extend(records)
            if not records and not self.retrain_if_due():
                return served

    def retrain_if_due(self, idle: bool = False) -> bool:
        """Run the exact window's Retrain when one is unfinished or due (see `exact`), then
        serve it from memory and purge what it supersedes; returns whether one ran. `idle`:
        look only if EXACT_POLL_S seconds passed since the last look."""
        from e2urec.deploy import exact

        if idle and time.monotonic() < self._exact_look:
            return False
        self._exact_look = time.monotonic() + EXACT_POLL_S
        job = exact.start(self.dep, self.say)
        if job is None:
            return False
        exact.run(self.dep, job, self.say)
        with quiet_transformers():
            self.warm = warm = Warm(self.dep, self.valid_rows, self.holdout_rows)
        if self.on_switch is not None:
            self.on_switch(warm.version, warm.model)
        self._purge()
        return True

    def run(self, stop: threading.Event, poll: float = 0.2) -> None:
        """Serve passes until `stop` is set; errors are logged and retried after a pause."""
        while not stop.is_set():
            try:
                if self.step():
                    continue
            except Exception as exc:  # noqa: BLE001 (a server's worker must keep running)
                log.error("e2urec worker: %s", exc)
                stop.wait(5.0)
            stop.wait(poll)

    # ---------------------------------------------------------------- one pass
    def serve_pass(self, work: Pass) -> None:
        """Run pass `work` to the end (see the module docstring)."""
        clock, dep = Clock(), self.dep
        folder = dep.path / REQUESTS / f"pass-{work.pass_id}"
        final = dep.version_dir(work.version)
        ids = ", ".join(r["request_id"] for r in work.requests)
        self.say(f"pass {work.pass_id}: {len(work.requests)} request(s) ({ids})")
        if work.data_sha256_before is None:
            with clock.phase("hash"):
                before, after = dep.store.data_sha256_without(work.users)
            dep.queue.set_hashes(work.pass_id, before, after)
            work.data_sha256_before, work.data_sha256_after = before, after
        built = None
        if work.unlearned_users and not final.exists():
            try:
                built = self._build(work, folder, final, clock)
            except Exception as exc:
                reason = (
                    str(exc) if isinstance(exc, E2URecError) else f"{type(exc).__name__}: {exc}"
                )
                dep.queue.fail(work, reason)
                shutil.rmtree(folder, ignore_errors=True)
                self.say(f"pass {work.pass_id} failed: {reason}")
                return
        with clock.phase("commit"):
            checks_by_id, recorded = self._commit(work, final)
        with clock.phase("switch_memory"):
            self._advance(work, built)  # the new version serves before anyone reads "done"
        with clock.phase("purge"):
            self._purge()  # and the superseded one is gone (or kept for the window)
            shutil.rmtree(folder, ignore_errors=True)
        timings = clock.summary()
        dep.queue.finish(work, checks_by_id, recorded, timings, dep.keys.pseudonyms)
        self.say(
            f"pass {work.pass_id}: version {work.version} serves ({timings['wall_s']['total']:.1f} s)"
        )

    def _build(
        self, work: Pass, folder: Path, final: Path, clock: Clock
    ) -> tuple[SingleModel, dict[str, Any], tuple[np.ndarray, np.ndarray]]:
        """Unlearn, check and write the new version whole; returns (model, manifest, the new
        model's sample outputs)."""
        warm = self.warm
        assert warm is not None
        users, unlearned = set(work.users), set(work.unlearned_users)
        forget = [r for r in warm.train if r["user_id"] in unlearned]
        retain = [r for r in warm.train if r["user_id"] not in users]
        with clock.phase("checks_before"), quiet_transformers():
            member_before = checks.losses_and_p_yes(warm.model, forget)[0]
        with clock.phase("unlearn"), quiet_transformers():
            fields, model = self._unlearn(work, folder, forget, retain)
        valid, valid_before, holdout, holdout_before = warm.without(users)
        with clock.phase("checks_after"), quiet_transformers():
            member_after = checks.losses_and_p_yes(model, forget)[0]
            valid_after = checks.losses_and_p_yes(model, valid)[1]
            holdout_after = checks.losses_and_p_yes(model, holdout)[0]
        labels = [r["label"] for r in valid]
        valid_auc = {
            "before": checks.auc_or_none(labels, valid_before),
            "after": checks.auc_or_none(labels, valid_after),
        }
        owners = np.array([r["user_id"] for r in forget])
        per_request = {}
        for request in work.requests:
            mine = np.isin(owners, request["users"])
            per_request[request["request_id"]] = {
                "mia_auc": {
                    "before": checks.mia_or_none(member_before[mine], holdout_before),
                    "after": checks.mia_or_none(member_after[mine], holdout_after),
                },
                "valid_auc": valid_auc,
                "members": int(mine.sum()),
                "nonmembers": len(holdout),
                "valid_rows": len(valid),
            }
        with clock.phase("save"), quiet_transformers():
            manifest = self._save(work, final, model, fields, per_request, folder)
        # named after its own folder: the next pass's adapters must not name the parent, which is
        # purged (peft would look that name up on the Hub)
        model.recommender.model.name_or_path = str(final / MODEL_DIR)
        return model, manifest, (valid_after, holdout_after)

    def _unlearn(
        self, work: Pass, folder: Path, forget: list[dict], retain: list[dict]
    ) -> tuple[dict[str, Any], SingleModel]:
        """Run the method in memory from the serving model; returns its manifest fields and
        the resulting model merged into one."""
        from e2urec.config import as_dict
        from e2urec.methods import METHODS
        from e2urec.train.cost import CostMeter
        from e2urec.train.runner import start_run
        from e2urec.unlearn import method_params

        warm = self.warm
        assert warm is not None
        users = set(work.users)
        params = method_params(work.method, work.sets)
        run_dir = folder / "run"
        config = {"command": "forget-pass", "method": work.method, "params": as_dict(params)}
        start_run(run_dir, config, overwrite=True, resume=False)
        ctx = WarmContext(
            base_run=self.dep.version_dir(warm.version),
            base_manifest=warm.manifest,
            data_dir=None,
            run_dir=run_dir,
            seed=int(warm.manifest.get("seed") or 42),
            meter=CostMeter(),
            params=params,
            _rows={"train": warm.train, "forget": forget, "retain": retain},
        )
        ctx._rows["valid"] = [r for r in self.dep.store.rows("valid") if r["user_id"] not in users]
        ctx.source = warm.model.recommender
        ctx.materialise = lambda: self.dep.write_data(
            folder / "data", work.users, work.unlearned_users, f"pass-{work.pass_id}"
        )
        fields = METHODS.get(work.method).run(ctx)
        return {**fields, "params": as_dict(params)}, _merged(fields, run_dir, warm.model)

    def _save(
        self,
        work: Pass,
        final: Path,
        model: SingleModel,
        fields: dict[str, Any],
        per_request: dict[str, Any],
        folder: Path,
    ) -> dict[str, Any]:
        """Write the new version folder whole (staged, one rename); returns its manifest."""
        from e2urec.unlearn import finish_staged_run, write_single

        warm = self.warm
        assert warm is not None
        inherited = ("backbone", "family", "seed", "init_seed", "finetune", "loop")
        manifest = {k: warm.manifest[k] for k in inherited if k in warm.manifest}
        served = served_format(fields.get("format"))
        fmt = fields["format"] if served else "single"
        manifest.update(format=fmt, kind="unlearned", method=work.method, complete=True)
        manifest.update(params=fields.get("params"), cost=fields.get("cost"), trained_on="train")
        manifest.update(
            unlearned="forget", deployment_pass=work.pass_id, parent_version=warm.version
        )
        # the method's own report (e.g. influence's solver and curvature); a format served as
        # it is keeps its fields at the top, where its loader reads them (e.g. APA's adapters)
        own = {k: v for k, v in fields.items() if k not in manifest and k != "base_run"}
        if served:
            manifest.update(own)
        else:
            manifest["method_report"] = own
        adapter = folder / "run" / "adapter" / "adapter_model.safetensors"
        with staged_folder(final) as stage:
            parent = self.dep.version_dir(warm.version)
            if served:  # the run's own files, as the format's loader reads them
                served.write(folder / "run", stage, True)
                model_hashes = hashes = finish_staged_run(stage, parent, manifest)
            else:  # an adapter over the shared base where the result is one, else the model
                source = _adapter_result(fields, folder, parent) or model.recommender
                hashes = write_single(stage, source, parent, manifest)
                model_hashes = {n.removeprefix(f"{MODEL_DIR}/"): h for n, h in hashes.items()}
            VersionInfo(
                work.version,
                model_sha256(stage if served else stage / MODEL_DIR, model_hashes),
                parent_version=warm.version,
                method=work.method,
                adapter_sha256=sha256_file(adapter) if adapter.is_file() else None,
                checks=per_request,
                pass_id=work.pass_id,
                requests=[r["request_id"] for r in work.requests],
            ).write(stage)
        return {**manifest, "weights_sha256": hashes}

    def _commit(self, work: Pass, final: Path) -> tuple[dict[str, Any], dict[str, int]]:
        """Switch to the pass's version and record it in the ledger (each step skipped when
        already done); returns the checks and the ledger seq per request id."""
        dep = self.dep
        info = VersionInfo.read(final)
        checks_by_id = (info.checks or {}) if work.unlearned_users else {}
        dep.switch(work.version, work.users)
        recorded = {
            e["request_id"]: e["seq"]
            for e in dep.ledger.entries()
            if (e.get("pass") or {}).get("id") == work.pass_id
        }
        fresh = [
            forget_entry(work, r, info, checks_by_id.get(r["request_id"]), dep.keys)
            for r in work.requests
            if r["request_id"] not in recorded
        ]
        for entry in dep.ledger.extend(fresh) if fresh else []:
            recorded[entry["request_id"]] = entry["seq"]
        return checks_by_id, recorded

    def _advance(self, work: Pass, built: Any) -> None:
        """Bring the warm state to the pass's version (from memory when this worker built it)."""
        warm = self.warm
        assert warm is not None
        if built is not None or work.version == warm.version:
            warm.advance(work.version, built, set(work.users))
        else:  # built by a worker that was killed: load it
            with quiet_transformers():
                self.warm = warm = Warm(self.dep, self.valid_rows, self.holdout_rows)
        if self.on_switch is not None:
            self.on_switch(warm.version, warm.model)


def forget_entry(
    work: Pass, request: dict[str, Any], info: VersionInfo, measured: Any, keys: Any
) -> LedgerEntry:
    """The ledger entry of one request served by pass `work` (users as keyed pseudonyms)."""
    unlearned = bool(work.unlearned_users)
    missing = sorted(set(request["users"]) - set(work.unlearned_users))
    return LedgerEntry(
        "forget",
        work.version,
        request_id=request["request_id"],
        users=keys.pseudonyms(request["users"]),
        no_training_data=keys.pseudonyms(missing),
        rows_removed=request["rows_removed"],
        data_sha256_before=work.data_sha256_before,
        data_sha256_after=work.data_sha256_after,
        method=work.method if unlearned else None,
        params=work.sets,
        purpose=request.get("purpose") or "privacy",
        reason_hmac=keys.reason(request.get("reason")),
        parent_version=work.parent_version,
        model_sha256=info.model_sha256,
        adapter_sha256=info.adapter_sha256 if unlearned else None,
        checks=measured,
        mia_loss=checks.MIA_LOSS if measured else None,
        queued=request["created"],
        pass_id={
            "id": work.pass_id,
            "requests": [r["request_id"] for r in work.requests],
            "users": keys.pseudonyms(work.users),
        },  # fmt: skip
    )


def _adapter_result(fields: dict[str, Any], folder: Path, parent: Path) -> Path | None:
    """The method's result as an adapter over the deployment's base, when it is one: the
    adapter it stored (a method that edits the serving adapter), or its LoRA student stacked
    onto the serving version's adapter (`backbones.adapters.stack_adapters`); None when the
    serving version is a whole model."""
    from e2urec.backbones import holds_adapter
    from e2urec.backbones.adapters import stack_adapters
    from e2urec.runs import ADAPTER_DIR

    stored = folder / "run" / MODEL_DIR
    if holds_adapter(stored):
        return stored
    if fields.get("format") == "adapter" and holds_adapter(parent / MODEL_DIR):
        stacked = folder / "stacked"
        shutil.rmtree(stacked, ignore_errors=True)  # a rerun of an interrupted pass
        stack_adapters(parent / MODEL_DIR, folder / "run" / ADAPTER_DIR, stacked)
        return stacked
    return None


def _merged(fields: dict[str, Any], run_dir: Path, serving: Any) -> Any:
    """The method's result as the model to serve: its LoRA adapters (`runs.load_adapter_run`
    over a copy of the serving model) folded in, the whole model it saved, or a run format the
    deployment serves as it is (`runs.Served.load`, over the serving model's frozen parts)."""
    from e2urec.backbones import load_recommender
    from e2urec.runs import load_adapter_run

    fmt = fields.get("format")
    served = served_format(fmt)
    if served is not None:
        model = served.load(run_dir, fields, serving)
        model.recommender.model.eval()
        return model
    if fmt == "adapter":
        source = SingleModel(_copy(serving.recommender))
        recommender = load_adapter_run(run_dir, fields, source).recommender
        recommender.model = recommender.model.merge_and_unload()
    elif fmt == "single":
        recommender = load_recommender(run_dir / MODEL_DIR)
    else:
        raise E2URecError(f"a deployment cannot serve a {fmt!r} run; use a single-model method")
    return SingleModel(recommender)


class Clock:
    """Wall and CPU seconds (this thread's: what a phase costs without competing processes)
    per phase of a pass."""

    def __init__(self) -> None:
        self.began = self.now()
        self.spent: dict[str, np.ndarray] = {}

    @staticmethod
    def now() -> np.ndarray:
        """(wall, thread CPU) seconds."""
        return np.array([time.perf_counter(), time.thread_time()])

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the block's wall and CPU seconds to phase `name`."""
        start = self.now()
        try:
            yield
        finally:
            self.spent[name] = self.spent.get(name, 0.0) + self.now() - start

    def summary(self) -> dict[str, dict[str, float]]:
        """{"wall_s": {phase: s, ..., "total": s}, "cpu_s": {...}}, rounded to ms."""
        rows = {**self.spent, "total": self.now() - self.began}
        return {
            k: {n: round(float(v[i]), 3) for n, v in rows.items()}
            for i, k in enumerate(("wall_s", "cpu_s"))
        }
