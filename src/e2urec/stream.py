"""`e2urec bench --stream N`: deletion requests one user at a time, through the deployment
pipeline, measured against Retrains matched to each prefix of the stream.

Plan (into OUT, resumable like `bench`): prepare the preset's data and train its Original;
order the forget users outcome-blind (sha256 of the seed and the user id) and take the first N;
for each checkpoint k (¼, ½, ¾ and all of N) a prepared folder whose forget split is the first k
users' train rows and its Retrain (the preset's recipe and seed, trained on the rest: the
matched-prefix Retrain); deploy the Original. Then, per method, on its own copy of the
deployment: each user is one request, enqueued and served by one `deploy.worker.Worker` (one
pass per request, the code production runs). Per request: the user's train rows, one forward
and backward pass over them (what any deletion must spend to read them), and the latency in
phases (queue wait, unlearning, checks, writing and publishing). At each checkpoint the
served model is scored against the matched Retrain and the Original: residual paper-JSD on the
rows forgotten so far, test AUC, PrivLeak on those rows (non-members: the holdout users' rows),
and the drift of P(Yes) on the test rows of users still retained. Writes OUT/results.json
(`{"stream": ...}`), OUT/results.md and OUT/plots/stream.png; `e2urec report OUT` renders it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from e2urec import presets
from e2urec.artifacts import MANIFEST, atomic_write_json, atomic_write_yaml, read_json
from e2urec.bench import Bench, Step
from e2urec.errors import E2URecError
from e2urec.report.tables import ORIGINAL, RETRAIN

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
# the deployment's default method of each purpose, then the baselines the stream compares
DEFAULT_METHODS = ("e2urec", "e2urec-contrastive", "influence", "neggrad", "bad-t")
PUBLISH = ("hash", "save", "commit", "switch_memory", "purge")
CHECKS = ("checks_before", "checks_after")


def order_users(users: list[int], seed: int) -> list[int]:
    """`users` ordered by sha256 of "seed:user" (outcome-blind, the same on every machine)."""
    return sorted(set(users), key=lambda u: hashlib.sha256(f"{seed}:{u}".encode()).hexdigest())


def checkpoints(n: int, fractions: Any = FRACTIONS) -> list[int]:
    """Request counts at which the stream is measured: `fractions` of `n` (rounded up; by
    default ¼, ½, ¾ and all of it; the last is always `n`)."""
    if n < 1:
        raise E2URecError(f"--stream needs at least 1 request, got {n}")
    if not isinstance(fractions, list | tuple) or not all(
        isinstance(f, int | float) and 0 < f <= 1 for f in fractions
    ):
        raise E2URecError(
            f"stream.fractions must be a list of numbers in (0, 1], got {fractions!r}"
        )
    return sorted({max(1, math.ceil(n * f)) for f in fractions} | {n})


def percentiles(values: list[float]) -> dict[str, float | None]:
    """P50, P95 (linear interpolation) and max of `values`; None each when empty."""
    if not values:
        return {"p50": None, "p95": None, "max": None}
    array = np.asarray(values, dtype=float)
    p50, p95 = np.percentile(array, [50, 95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "max": float(array.max())}


def phases(record: dict[str, Any], timings: dict[str, Any]) -> dict[str, float]:
    """A served request's latency in seconds by phase (wall clock): queue wait (accepted →
    its pass began), unlearning, checks, writing and publishing, and the total."""
    wall = timings.get("wall_s") or {}
    began = record["created_s"] + (record["seconds"] or 0.0) - wall.get("total", 0.0)
    out = {
        "queue_s": max(0.0, began - record["created_s"]),
        "unlearn_s": wall.get("unlearn", 0.0),
        "checks_s": sum(wall.get(p, 0.0) for p in CHECKS),
        "publish_s": sum(wall.get(p, 0.0) for p in PUBLISH),
        "total_s": record["seconds"] or 0.0,
    }
    return {k: round(v, 3) for k, v in out.items()}


def gradient_pass_seconds(recommender: Any, rows: list[dict[str, Any]]) -> float:
    """Wall seconds of one forward and backward pass of `recommender`'s model over `rows`
    (batches of 32): what any deletion must spend to read the rows once."""
    from e2urec.train.losses import answer_ce

    model = recommender.model
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    began = time.perf_counter()
    for start in range(0, len(rows), 32):
        batch = recommender.collate(rows[start : start + 32])
        answer_ce(*recommender.target_logits(batch, model)).backward()
    seconds = time.perf_counter() - began
    model.zero_grad(set_to_none=True)
    for param in frozen:
        param.requires_grad_(False)
    return round(seconds, 3)


def prefix_data(data: Path, out: Path, users: list[int]) -> Path:
    """A copy of prepared folder `data` whose forget split is `users`' train rows and retain
    split the other train rows (every other split as it is)."""
    from e2urec.data.dataset import load_split
    from e2urec.data.prepare import split_file, write_split

    if (out / MANIFEST).is_file():
        return out
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(data, stage)
    train = load_split(data, "train")
    gone = train["user_id"].isin(users)
    manifest = read_json(data / MANIFEST, "prepared-data manifest")
    for name, frame in (("forget", train[gone]), ("retain", train[~gone])):
        manifest["files"][split_file(name)] = write_split(stage, name, frame)
    manifest["forgotten_users"] = sorted(users)
    atomic_write_json(stage / MANIFEST, manifest)
    stage.rename(out)
    return out


class Stream:
    """The stream bench of one BenchConfig into `out` (see the module docstring)."""

    def __init__(
        self, config: presets.BenchConfig, out: Path, n: int, data_root: str | None
    ) -> None:
        self.config, self.out, self.n = config, out, n
        self.seed = config.seeds[0]
        self.marks = checkpoints(n, config.stream.get("fractions") or FRACTIONS)
        self.bench = Bench(config, out, data_root)
        names = list(config.stream.get("methods") or [])
        names = names or [m for m in DEFAULT_METHODS if m in self.bench.methods]
        unknown = [m for m in names if m not in self.bench.methods]
        if unknown:
            raise E2URecError(
                f"stream method(s) {', '.join(unknown)} are not rows of this bench; known: "
                f"{', '.join(self.bench.methods)}"
            )
        self.methods = names
        self.purpose = "pollution" if config.data.pollute != "none" else "privacy"

    @property
    def data_dir(self) -> Path:
        return self.bench.data_dir

    def prefix_dir(self, k: int) -> Path:
        return self.out / "stream" / f"prefix-{k}"

    def retrain_dir(self, k: int) -> Path:
        return self.bench.run_dir(f"{RETRAIN}-prefix{k}")

    def users(self) -> list[int]:
        """The first N forget users in outcome-blind order."""
        from e2urec.data.dataset import load_split

        forget = load_split(self.data_dir, "forget")["user_id"].tolist()
        ordered = order_users(forget, self.seed)
        if len(ordered) < self.n:
            raise E2URecError(f"--stream {self.n}: the data has only {len(ordered)} forget users")
        return ordered[: self.n]

    def setup(self) -> list[int]:
        """Prepare, train the Original, the matched-prefix data and Retrains, and deploy."""
        from e2urec.train.recipes import train as train_run

        base = self.bench.plan()[:2]  # prepare data, train the Original
        self.bench.execute(base)
        users = self.users()
        train = asdict(self.config.train)
        backbone = train.pop("backbone")
        options = dict(train, seed=self.seed, overwrite=True)
        steps = []
        for k in self.marks:
            folder, out = self.prefix_dir(k), self.retrain_dir(k)
            prefix_data(self.data_dir, folder, users[:k])
            steps.append(
                Step(
                    f"train the matched Retrain of the first {k} request(s)",
                    out,
                    {"on": "retain", "backbone": backbone, "users": users[:k], **options},
                    lambda f=folder, o=out: train_run(f, "retain", backbone, o, **options),
                    [folder / MANIFEST],
                )
            )
        self.bench.execute(steps)
        self.deployment()
        return users

    def deployment(self) -> Path:
        """The Original deployed (once; each method serves a copy)."""
        from e2urec.deploy.deployment import deploy

        folder = self.out / "stream" / "deployment"
        if not (folder / "current.json").is_file():
            deploy(self.bench.run_dir(ORIGINAL), self.data_dir, folder, overwrite=True)
        return folder

    def run(self, preset: str) -> dict[str, Path]:
        """Run every method's stream (a finished one is reused); the report is written after
        each method, so a stream cut short still shows the methods it finished. Returns the
        report's files."""
        from e2urec.report import stream as report
        from e2urec.stream_scoring import References

        users = self.setup()
        references = References(self, users)
        results = {
            "preset": preset,
            "requests": self.n,
            "seed": self.seed,
            "purpose": self.purpose,
            "users": users,
            "checkpoints": self.marks,
            "reference": references.summary(),
            "methods": {},
        }
        files: dict[str, Path] = {}
        for name in self.methods:
            results["methods"][name] = self.method(name, users, references)
            files = report.write({"stream": results}, self.out)
        return files

    def method(self, name: str, users: list[int], references: Any) -> dict[str, Any]:
        """One method's stream on a fresh copy of the deployment (reused when finished)."""
        from e2urec.deploy.deployment import Deployment
        from e2urec.deploy.worker import Worker

        saved = self.out / "stream" / f"{name}.json"
        params, sets = self.bench.method_sets(name)
        key = {"users": users, "params": params, "marks": self.marks}
        if saved.is_file() and (old := read_json(saved, "stream result")).get("key") == key:
            self.bench.say(f"stream {name}: reused")
            return old
        copy = self.out / "stream" / f"dep-{name}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.deployment(), copy)
        dep, method = Deployment(copy), self.bench.base_method(name)
        requests, measured = [], []
        with Worker(dep, max_users=1) as worker:
            for number, user in enumerate(users, 1):
                rows = [r for r in worker.warm.train if r["user_id"] == user]
                gradient = gradient_pass_seconds(worker.warm.model.recommender, rows)
                record, _ = dep.enqueue([user], method, sets, purpose=self.purpose)
                worker.step(wait=False)
                requests.append(self._request(dep, record["request_id"], user, gradient))
                self.bench.say(f"stream {name} {number}/{len(users)}: {requests[-1]}")
                if number in self.marks:
                    measured.append(references.measure(number, worker.warm.model))
        shutil.rmtree(copy, ignore_errors=True)
        result = {"key": key, "method": method, "sets": sets, "requests": requests}
        result.update(checkpoints=measured, latency=latency(requests))
        atomic_write_json(saved, result)
        return result

    def _request(self, dep: Any, request_id: str, user: int, gradient: float) -> dict[str, Any]:
        record = dep.request(request_id) or {}
        if record.get("state") != "done":
            raise E2URecError(f"stream request {request_id} {record.get('state')}: {record}")
        found = dep.store.select("passes", "pass_id = ?", (record["pass"],))
        timings = read_timings(found[0]["timings"]) if found else {}
        return {
            "user": user,
            "rows": record["rows_removed"]["train"],
            "gradient_pass_s": gradient,
            **phases(record, timings),
        }


def read_timings(text: str | None) -> dict[str, Any]:
    """A pass's timings column decoded."""
    return json.loads(text) if text else {}


def latency(requests: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """P50, P95 and max per phase over a method's requests, and of unlearning over the
    target 2 × one gradient pass + 0.3 s."""
    names = ("queue_s", "unlearn_s", "checks_s", "publish_s", "total_s", "gradient_pass_s")
    out = {n: percentiles([r[n] for r in requests]) for n in names}
    over = [r["unlearn_s"] / (2 * r["gradient_pass_s"] + 0.3) for r in requests]
    out["unlearn_over_target"] = percentiles(over)
    return out


def stream_bench(
    preset: str,
    out: str | Path,
    requests: int,
    data_root: str | None = None,
    methods: list[str] | None = None,
    config_file: str | None = None,
    sets: list[str] | None = None,
) -> Any:
    """Run (or continue) the stream bench of `preset` with `requests` single-user requests
    into `out`; returns the `bench.BenchResult` (results.json, results.md, plot)."""
    from e2urec.bench import BenchResult

    config = presets.resolve(preset, config_file, sets)
    if methods:
        config.stream = {**config.stream, "methods": methods}
        config.methods = list(methods)
    out = Path(out)
    runner = Stream(config, out, requests, data_root)
    runner.bench.check()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(out / "config.resolved.yaml", {"preset": preset, **presets.as_dict(config)})
    return BenchResult(out, [], runner.run(preset))
