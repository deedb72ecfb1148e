"""The exact retraining window: a full Retrain on the retained rows that supersedes every
approximately unlearned version.

A deployment created with `exact_every` K and/or `exact_within_s` W keeps serving each request
at once by its purpose's method (approximate). A forget entry of the ledger whose request
unlearned rows is *pending* until an `exact` entry lists it under `covers`. The worker starts a
Retrain when K requests are pending, or when the oldest pending request would otherwise pass
its window (started W minus the last Retrain's duration after that request was done), before
it serves the next pass: requests that arrive meanwhile wait in the queue and are unlearned on
top of the retrained version afterwards.

A Retrain is the deployment's recipe (the source run's backbone, fine-tuning mode, loop
settings, seed and init seed, recorded at deploy time) on the store's train rows as they are
(`Deployment.write_data`: train = retain = the rows retained now), the same job as an
independent `e2urec train --on retain`. Steps, each safe to repeat after a crash (kill -9):
1. one store row (table `retrains`, state running) names the version, the requests it covers
   and the rows' sha256; 2. the rows are written to DEP/requests/exact-N/data and the run trains
   in DEP/requests/exact-N/run, resuming from its checkpoint when one was left; 3. the version is
   written beside them and renamed into versions/ whole; 4. current.json switches, the ledger
   gets one `exact` entry, the row turns done and the working folder is deleted. The worker then
   purges the superseded versions (after the rollback window).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from e2urec.artifacts import MANIFEST, model_sha256, read_json
from e2urec.deploy.deployment import (
    REQUESTS,
    Deployment,
    VersionInfo,
    parse_duration,
    serve_version,
)
from e2urec.deploy.ledger import LedgerEntry
from e2urec.errors import E2URecError
from e2urec.runs import MODEL_DIR

KIND = "exact"
TABLE = "retrains"
RECIPE_KEYS = ("backbone", "finetune", "init_seed", "max_length")


def parse_window(every: int | None, within: str | None) -> dict[str, Any]:
    """The exact window's meta values from `deploy --exact-every K` (K >= 1) and
    `--exact-within DURATION` (> 0); None for a setting not given."""
    if every is not None and int(every) < 1:
        raise E2URecError(f"--exact-every {every}: give a number of requests >= 1")
    seconds = None if within is None else parse_duration(within, "--exact-within")
    if seconds is not None and seconds <= 0:
        raise E2URecError(f"--exact-within {within!r}: give a duration > 0 like 30m, 12h or 7d")
    return {"exact_every": None if every is None else int(every), "exact_within_s": seconds}


def recipe(run: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The training settings of run `run` (an `e2urec train` run: its backbone, fine-tuning
    mode, init seed, max length and every loop setting, seed included), or None for a run not
    trained by the supervised recipe (an unlearned run, an ensemble)."""
    import yaml

    from e2urec.runs import CONFIG

    config_file = run / CONFIG
    if manifest.get("kind") not in ("original", "retrain") or not config_file.is_file():
        return None
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    if config.get("command") != "train":
        return None
    settings = {k: config[k] for k in RECIPE_KEYS if k in config}
    return {**settings, **(config.get("loop") or {})}


# ---------------------------------------------------------------- what the ledger says
def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def covering(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """request id → the `exact` ledger entry that covers it."""
    return {rid: e for e in entries if e.get("kind") == KIND for rid in e.get("covers") or []}


def pending(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Forget entries that unlearned rows and no exact Retrain covers yet, oldest first."""
    covered = covering(entries)
    return [
        e
        for e in entries
        if e.get("kind") == "forget" and e.get("method") and e["request_id"] not in covered
    ]


def due_at(settings: dict[str, Any], entries: list[dict[str, Any]]) -> float | None:
    """Unix time by which the pending requests' Retrain must be served (the oldest's window),
    or None (no window in time, or nothing pending)."""
    waiting, within = pending(entries), settings.get("exact_within_s")
    if not waiting or not within:
        return None
    return _seconds(waiting[0]["time"]) + float(within)


def due(settings: dict[str, Any], entries: list[dict[str, Any]], now: float) -> bool:
    """Whether a Retrain should start now: `exact_every` requests pending, or the oldest
    pending one's window ends within the last Retrain's duration."""
    waiting = pending(entries)
    every = settings.get("exact_every")
    if not waiting:
        return False
    if every and len(waiting) >= every:
        return True
    deadline = due_at(settings, entries)
    last = [e for e in entries if e.get("kind") == KIND]
    took = float(last[-1].get("seconds") or 0.0) if last else 0.0
    return deadline is not None and now + took >= deadline


def status(settings: dict[str, Any], entries: list[dict[str, Any]], request_id: str) -> str:
    """How request `request_id`'s deletion stands: exact (since which Retrain) or approximate
    (and when the window makes it exact)."""
    entry = covering(entries).get(request_id)
    if entry is not None:
        return (
            f"exact since {entry['time']} (Retrain version {entry['version']}, ledger entry "
            f"{entry['seq']})"
        )
    forget = next((e for e in entries if e.get("request_id") == request_id), {})
    if not forget.get("method"):
        return "exact (no model was trained on rows of theirs that the deployment held)"
    every, deadline = settings.get("exact_every"), due_at(settings, entries)
    if not every and deadline is None:
        return f"approximate ({forget['method']}); this deployment has no exact window"
    when = []
    if deadline is not None:
        when.append(f"by {datetime.fromtimestamp(deadline).astimezone().isoformat()}")
    if every:
        left = max(every - len(pending(entries)), 0)
        when.append(f"after {left} more request(s)" if left else "at the worker's next step")
    return f"approximate ({forget['method']}) until the exact Retrain, due {' or '.join(when)}"


# ---------------------------------------------------------------- the Retrain
def start(dep: Deployment, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The unfinished Retrain (after a crash), else a new one when the window says it is due
    (recorded in one transaction), else None."""
    store = dep.store
    running = store.select(TABLE, "state = 'running'")
    if running:
        return running[0]
    settings = dep.settings()
    if not (settings.get("exact_every") or settings.get("exact_within_s")):
        return None
    entries = dep.ledger.entries()
    if not due(settings, entries, time.time()):
        return None
    covers = [e["request_id"] for e in pending(entries)]
    values = {"state": "running", "version": dep.next_version(), "covers": json.dumps(covers)}
    values.update(parent_version=dep.current(), data_sha256=store.data_sha256())
    values["started"] = time.time()
    with store.transaction() as conn:
        values["retrain_id"] = store.insert(TABLE, values, conn)
    say(f"exact Retrain {values['retrain_id']}: covers {len(covers)} request(s)")
    return values


def run(dep: Deployment, job: dict[str, Any], say: Callable[[str], None]) -> str:
    """Finish Retrain `job` (see the module docstring); returns the version that serves."""
    folder = dep.path / REQUESTS / f"exact-{job['retrain_id']}"
    final = dep.version_dir(job["version"])
    if not final.exists():
        if dep.store.data_sha256() != job["data_sha256"]:  # cannot happen while it runs first
            raise E2URecError("the store's rows changed during an exact Retrain; restart it")
        _train_version(dep, job, folder, final)
    _commit(dep, job, final)
    shutil.rmtree(folder, ignore_errors=True)
    say(f"exact Retrain {job['retrain_id']}: version {job['version']} serves")
    return job["version"]


def _train_version(dep: Deployment, job: dict[str, Any], folder: Path, final: Path) -> None:
    """Train the Retrain in `folder` (resumed from its checkpoint when one is there) and move
    its version into place whole."""
    from e2urec.train.recipes import train
    from e2urec.unlearn import export

    settings = dep.store.meta().get("recipe")
    if not settings:
        raise E2URecError(f"deployment {dep.path} records no training recipe to retrain with")
    settings = dict(settings)
    backbone = settings.pop("backbone")
    data = folder / "data"
    if not (data / MANIFEST).is_file():
        dep.write_data(data, label=f"exact-{job['retrain_id']}")
    began, run_dir = time.time(), folder / "run"
    manifest = (
        read_json(run_dir / MANIFEST, "run manifest") if (run_dir / MANIFEST).is_file() else {}
    )
    if not manifest.get("complete"):  # else it finished before a crash: export it
        manifest = train(data, "retain", backbone, run_dir, resume=True, **settings)
    staged = folder / "version"
    export(run_dir, staged, merge=True, overwrite=True, keep_adapter=True)  # LoRA: its adapter
    sha = model_sha256(staged / MODEL_DIR)
    info = VersionInfo(job["version"], sha, parent_version=job["parent_version"], method="retrain")
    info.requests = json.loads(job["covers"])
    info.checks = {"seconds": round(time.time() - began, 3), "fit": manifest.get("fit")}
    info.write(staged)
    os.rename(staged, final)


def _commit(dep: Deployment, job: dict[str, Any], final: Path) -> None:
    """Serve the Retrain's version, record it in the ledger and mark it done (each step skipped
    when already done)."""
    info = VersionInfo.read(final)
    old = dep.current()
    if old != job["version"]:
        dep.store.retire(old)
        serve_version(dep.path, job["version"])
    entries = dep.ledger.entries()
    if not any(e.get("kind") == KIND and e.get("retrain") == job["retrain_id"] for e in entries):
        covers = json.loads(job["covers"])
        users = sorted({u for e in entries if e.get("request_id") in covers for u in e["users"]})
        details = {"retrain": job["retrain_id"], "covers": covers, "trained_on": "retain"}
        details.update(data_sha256=job["data_sha256"], rows_trained=dep.store.counts()["train"])
        details.update(recipe=dep.store.meta().get("recipe"), seconds=info.checks["seconds"])
        entry = LedgerEntry(
            KIND,
            job["version"],
            users=users,
            method="retrain",
            parent_version=job["parent_version"],
            model_sha256=info.model_sha256,
            details=details,
        )
        dep.ledger.append(entry)
    done = {"state": "done", "finished": time.time()}
    dep.store.update(TABLE, done, "retrain_id = ?", (job["retrain_id"],))
