"""The library's entry points; the CLI is a thin layer over these functions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2urec.data.prepare import PrepareConfig, PrepareResult


def describe(what: str) -> list[str]:
    """One line per registered dataset, backbone or preset; per method, a line and then one per
    parameter (type, choices, range, default, help: from its declaration)."""
    if what == "methods":
        from e2urec.unlearn import describe_methods

        return describe_methods()
    if what == "presets":
        from e2urec.presets import preset_names, preset_values

        return [
            f"{name:24s} {' '.join(str(preset_values(name).get('description', '')).split())}"
            for name in preset_names()
        ]
    if what == "datasets":
        from e2urec.data.readers import READERS as registry
    elif what == "backbones":
        from e2urec.backbones import BACKBONES as registry
    else:
        raise ValueError(what)
    return [f"{name:16s} {registry.meta(name).get('description', '')}" for name in registry]


def bench(preset: str, out: str | Path, **options: Any) -> Any:
    """Run (or continue) the experiment of `preset` into `out`: data, Original, Retrains,
    every method, evaluation, tables and plots. Options: data_root (where datasets are
    looked for), seeds (how many), methods (a list), config_file, sets ("key=value" items);
    see `e2urec.bench.bench`. With stream=N: the stream bench instead (N single-user requests
    through the deployment pipeline, against matched-prefix Retrains; `e2urec.stream`)."""
    from e2urec.bench import bench as run

    requests = options.pop("stream", None)
    if requests:
        from e2urec.stream import stream_bench

        options.pop("seeds", None)
        return stream_bench(preset, out, requests, **options)
    return run(preset, out, **options)


def report(results: str | Path, columns: Sequence[str] | None = None) -> str:
    """The Markdown table (and signal check) of a bench's results.json: `results` is the file
    or the folder holding it (a bench's OUT); `columns` picks table columns by name."""
    from e2urec.report.tables import render_results

    return render_results(results, columns)


def register_method(method: Any) -> Any:
    """Make an `e2urec.methods.Method` known by its name to `unlearn`, `bench`, `forget` and
    `describe("methods")`; returns it. See the docs' "Add your own method"."""
    from e2urec.methods.base import register

    return register(method)


def smoke(preset: str, out: str | Path, **options: Any) -> dict[str, Any]:
    """Every step of `preset` at its backbone's geometry, a few steps each, with a projection of
    the full preset's time. Options: config_file, sets, methods (a subset of the preset's),
    gpu_tflops; see `e2urec.smoke.smoke`."""
    from e2urec.smoke import smoke as run

    return run(preset, out, **options)


def prepare(config: PrepareConfig, overwrite: bool = False) -> PrepareResult:
    """Prepare a dataset with the paper's protocol (see `e2urec.data.prepare`)."""
    from e2urec.data.prepare import prepare as run

    return run(config, overwrite=overwrite)


def fetch(name: str, cache: str | Path | None = None, offline: bool = False) -> Path:
    """Cached folder of a downloadable dataset, downloaded and sha256-checked if needed."""
    from e2urec.data.sources import fetch as run

    return run(name, cache=cache, offline=offline)


def synthesize(
    out: str | Path,
    n_users: int = 600,
    n_items: int = 400,
    n_ratings: int = 30_000,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a seeded synthetic rating log to `out` in the MovieLens-1M format, atomically."""
    from e2urec.artifacts import staged_folder
    from e2urec.data.synthetic import generate, write_ml1m

    log = generate(n_users, n_items, n_ratings, seed)
    with staged_folder(out, overwrite=overwrite) as staging:
        write_ml1m(log, staging)
    return Path(out)


def evaluate(
    run: str | Path, data: str | Path, reference: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """Score `run` on prepared splits (and against a `reference` run); write RUN/metrics.json
    (merged by split) and RUN/predictions/<split>.parquet. Options (splits: None = test, forget
    and, when the data has one, holdout; batch_size, device, progress, logit_cache): see
    `e2urec.eval.evaluate.evaluate`."""
    from e2urec.eval.evaluate import evaluate as run_eval

    return run_eval(run, data, reference, **options)


def train(
    data: str | Path,
    on: str,
    backbone: str,
    out: str | Path,
    **options: Any,
) -> dict[str, Any]:
    """Train a recommender on split `on` of prepared folder `data` into run folder `out`;
    returns the run manifest. Options: resume, overwrite and the settings of
    `e2urec.train.options.TrainJob` (epochs, lr, batch_size, patience, keep, seed, finetune,
    max_length, ...); see `e2urec.train.recipes.train`."""
    from e2urec.train.recipes import train as run_train

    return run_train(data, on, backbone, out, **options)


def unlearn(
    method: str, base_run: str | Path, data: str | Path, out: str | Path, **options: Any
) -> dict[str, Any]:
    """Unlearn the forget set of `data` from original run `base_run` with `method`; returns the
    run manifest. Options: sets ("key=value" params), seed, overwrite; see
    `e2urec.unlearn.unlearn`."""
    from e2urec.unlearn import unlearn as run

    return run(method, base_run, data, out, **options)


def train_ensemble(
    method: str, data: str | Path, backbone: str, out: str | Path, **recipe: Any
) -> dict[str, Any]:
    """Train an original SISA, RecEraser or APA ensemble (overwrite, and the recipe fields:
    seed, epochs, lr, batch_size, patience, max_steps, ...; see
    `e2urec.methods.ensemble.Recipe`)."""
    from e2urec.methods.ensemble import train_ensemble_from_options as run

    return run(method, data, backbone, out, **recipe)


def export(run: str | Path, out: str | Path, merge: bool = True, overwrite: bool = False) -> Path:
    """Write `run` as a self-contained single-format run (`merge` folds LoRA adapters in)."""
    from e2urec.unlearn import export as run_export

    return run_export(run, out, merge, overwrite)


def import_run(data: str | Path, backbone: str, out: str | Path, **options: Any) -> dict[str, Any]:
    """A run from a recommender trained elsewhere on prepared `data`: checkpoint `backbone`,
    or (options: adapter, max_length, overwrite) a PEFT LoRA adapter over it; returns the run
    manifest. See `e2urec.import_run`."""
    from e2urec.import_run import import_run as run_import

    return run_import(data, backbone, out, **options)


def deploy(run: str | Path, data: str | Path, out: str | Path, **settings: Any) -> Any:
    """Create a deployment from `run` on prepared `data` (settings: raw, overwrite,
    rollback_window, method_for, exact_every, exact_within; see
    `e2urec.deploy.deployment.deploy`); returns the `Deployment`."""
    from e2urec.deploy.deployment import deploy as run_deploy

    return run_deploy(run, data, out, **settings)


def forget(deployment: str | Path, users: Sequence[int] | None, **options: Any) -> Any:
    """Serve a deletion request on `deployment` now (options: purpose, method, sets, reason,
    request_id, say): enqueue it and drain the queue; returns the `ForgetResult`. See
    `e2urec.deploy.deployment`."""
    from e2urec.deploy.deployment import Deployment

    return Deployment(deployment).forget(users, **options)


def enqueue(
    deployment: str | Path, users: Sequence[int], **options: Any
) -> tuple[dict[str, Any], bool]:
    """Record a deletion request in the deployment's queue (options: purpose, method, sets,
    reason, request_id, limit); returns its record and whether it is new. See `e2urec.deploy.queue`."""
    from e2urec.deploy.deployment import Deployment

    return Deployment(deployment).enqueue(users, **options)


def work(deployment: str | Path, once: bool = False, **options: Any) -> list[dict[str, Any]]:
    """Serve the deployment's queue (options: max_users, max_wait, say): with `once`, what is
    queued, then return the served requests' records; else until interrupted. See
    `e2urec.deploy.worker`."""
    import threading

    from e2urec.deploy.worker import Worker

    with Worker(deployment, **options) as worker:
        if once:
            return worker.drain()
        worker.run(threading.Event())
    return []


def ledger(deployment: str | Path, expect_head: str | None = None) -> list[dict[str, Any]]:
    """The deployment's ledger entries, after verifying the hash chain (and, with
    `expect_head`, that an earlier recorded head hash is still one of its entries)."""
    from e2urec.deploy.deployment import Deployment

    return Deployment(deployment).ledger.entries(expect_head)


def predict(deployment: str | Path, user: int, items: Sequence[int]) -> dict[int, float]:
    """P(like) per item for `user` with the deployment's current version."""
    from e2urec.deploy.deployment import Deployment

    return Deployment(deployment).predict(user, items)


def rollback(deployment: str | Path, to: str | None = None) -> dict[str, Any]:
    """Serve a version kept by the rollback window again (default: the newest one); returns
    {"from", "to", "undoes": request ids}. See `e2urec.deploy.deployment`."""
    from e2urec.deploy.deployment import Deployment

    return Deployment(deployment).rollback(to)


def forgotten(
    deployment: str | Path, user: int, secret: str | Path | None = None
) -> list[dict[str, Any]]:
    """The verified ledger's forget entries that name `user` (by keyed pseudonym, which needs
    the deployment's secret, or by id in older entries), each with the request's reason and
    under "exact" whether the deletion is exact yet (`deploy.exact.status`)."""
    from e2urec.deploy import exact
    from e2urec.deploy.deployment import Deployment
    from e2urec.deploy.ledger import Keys, names

    dep = Deployment(deployment)
    pseudonym = (Keys(secret) if secret is not None else dep.keys).pseudonym(user)
    found = [e for e in dep.ledger.entries() if e.get("kind") == "forget"]
    found = [e for e in found if names(e, user, pseudonym)]
    settings, entries = dep.settings(), dep.ledger.entries()
    return [
        {
            **e,
            "reason": (dep.request(e["request_id"]) or {}).get("reason"),
            "exact": exact.status(settings, entries, e["request_id"]),
        }
        for e in found
    ]


def audit(deployment: str | Path, user: int, **options: Any) -> Any:
    """Every trace of `user` in the deployment's files (options: data, secret); returns the
    `Report`. See `e2urec.deploy.audit`."""
    from e2urec.deploy.audit import audit as run_audit

    return run_audit(deployment, user, **options)
