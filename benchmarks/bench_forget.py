"""Deletion at production pace on a CPU-scale deployment: latency, coalescing, drift, kill -9.

Setup (reused when WORK already holds it): ML-100K, the cpu-ml100k protocol (last 10,000
samples, 5-item history, seed 42), a tiny T5 Original with the cpu-ml100k recipe, a deployment.
Then, each part on its own copy of the deployment:

  sequential  N single-user requests in a row on one warm worker (each method of --methods,
              default e2urec, with the cpu-ml100k settings): per request the end-to-end latency
              (enqueue → done), the process CPU seconds, the share spent unlearning, validation
              AUC after it (the worker's check on its validation sample), and beside it the time
              of one forward-and-backward pass of the serving model over the user's rows;
  heavy       the --heavy users with the most train rows, one request each, timed the same way;
  coalesced   the same N requests queued at once, then served (one pass when N ≤ --max-users);
  retrain     a Retrain (the Original's recipe) on the final retained data, and the distance of
              the final sequential / coalesced version to it: paper-JSD (full vocabulary, first
              answer position) on the forgotten users' train rows and test AUC, next to the
              Original's distance to the same Retrain;
  stream      --stream requests posted concurrently to a running `serve` (worker thread):
              all accepted, all done, the ledger verifies, none of their rows left;
  privacy     one single-user deletion (synchronous `forget`): version folders left, `e2urec
              audit` of the user, files holding any byte sequence of the user's prompts, the
              store's size over a compacted copy (VACUUM INTO);
  kill        --kill-trials times, each on a fresh copy: --kill-batch single-user requests (users
              drawn from all train users) queued, an `e2urec work` process killed
              with SIGKILL at a random moment after its pass began, a new `e2urec work --once`
              finishes; every request done, the ledger verifies, no rows left, no partial
              version, one version folder, no file holding the trial users' prompts, the audit
              of two of them clean, the store's size over a compacted copy.

Prints a summary and writes WORK/results.json.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_forget.py --work /tmp/bf
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from e2urec import api
from e2urec.data.prepare import PrepareConfig
from e2urec.deploy.deployment import Deployment
from e2urec.deploy.store import SPLITS
from e2urec.deploy.worker import Worker
from e2urec.errors import E2URecError
from e2urec.presets import preset_values
from e2urec.runs import read_run_manifest

DEFAULT_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
PRESET = preset_values("cpu-ml100k")
RECIPE = {k: v for k, v in PRESET["train"].items() if k != "backbone"}
PRESET_SETS = [f"{k}={v}" for k, v in PRESET["method_params"]["e2urec"].items()]


def preset_sets(method: str) -> list[str]:
    """The cpu-ml100k preset's settings of `method`."""
    return [f"{k}={v}" for k, v in (PRESET["method_params"].get(method) or {}).items()]


TOKEN = "bench"


def say(line: str) -> None:
    print(line, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---------------------------------------------------------------- setup
def setup(args: argparse.Namespace, work: Path) -> Path:
    """Prepared data, the Original and the base deployment (each reused when present)."""
    data = Path(args.data) if args.data else work / "data"
    if not args.data:
        api.prepare(PrepareConfig(**PRESET["data"], raw=args.raw, out=str(data)))
    original = Path(args.original) if args.original else work / "original"
    if not (original / "manifest.json").is_file():
        say("training the Original (cpu-ml100k recipe)")
        api.train(data, "train", PRESET["train"]["backbone"], original, seed=0, **RECIPE)
    base = work / "deployment"
    if not base.is_dir():
        api.deploy(original, data, base)
    return base


def copy_of(base: Path, work: Path, name: str) -> Deployment:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    return Deployment(out)


def pick_users(
    dep: Deployment, count: int | None, seed: int, exclude: set[int] = frozenset()
) -> list[int]:
    """`count` (None: all) seeded random users holding train rows."""
    with dep.store.connect() as conn:
        users = [
            u
            for (u,) in conn.execute(
                "SELECT DISTINCT user_id FROM samples WHERE split = 'train' ORDER BY user_id"
            )
            if u not in exclude
        ]
    return random.Random(seed).sample(users, len(users) if count is None else count)


def pass_timings(dep: Deployment, pass_id: int) -> dict[str, float]:
    with dep.store.connect() as conn:
        row = conn.execute("SELECT timings FROM passes WHERE pass_id = ?", (pass_id,)).fetchone()
    return json.loads(row[0])


# ---------------------------------------------------------------- sequential and coalesced
def part_name(part: str, method: str) -> str:
    """The deployment copy of a part (e2urec keeps the original names)."""
    return part if method == "e2urec" else f"{part}-{method}"


def method_sets(method: str, args: argparse.Namespace) -> list[str]:
    return args.set if method == "e2urec" else preset_sets(method) + (args.extra or [])


def pass_seconds(worker: Worker, users: list[int]) -> dict[str, float]:
    """Wall and thread-CPU seconds of one forward-and-backward pass of the serving model over
    `users`' train rows (batches of 32): what any deletion must spend to read them once."""
    from e2urec.train.losses import answer_ce

    warm = worker.warm
    assert warm is not None
    rows = [r for r in warm.train if r["user_id"] in set(users)]
    recommender = warm.model.recommender
    model = recommender.model
    frozen = [p for p in model.parameters() if not p.requires_grad]  # e.g. after a LoRA merge
    for param in frozen:
        param.requires_grad_(True)
    wall, cpu = time.perf_counter(), time.thread_time()
    for start in range(0, len(rows), 32):
        batch = recommender.collate(rows[start : start + 32])
        answer_ce(*recommender.target_logits(batch, model)).backward()
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    model.zero_grad(set_to_none=True)
    for param in frozen:
        param.requires_grad_(False)
    return {"wall": wall, "cpu": cpu}


def sequential(
    base: Path,
    work: Path,
    users: list[int],
    args: argparse.Namespace,
    method: str = "e2urec",
    part: str = "sequential",
) -> dict:
    dep = copy_of(base, work, part_name(part, method))
    rows = []
    with Worker(dep, max_users=args.max_users) as worker:
        start_auc = _sample_auc(worker)
        for user in users:
            one_pass = pass_seconds(worker, [user])
            wall, cpu = time.perf_counter(), time.process_time()
            record, _ = dep.enqueue([user], method=method, sets=method_sets(method, args))
            (done,) = worker.drain()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            timings = pass_timings(dep, done["pass"])
            rows.append(
                {
                    "user": user,
                    "train_rows": done["rows_removed"]["train"],
                    "seconds": round(wall, 3),
                    "cpu_seconds": round(cpu, 3),
                    "unlearn_share": round(timings["wall_s"]["unlearn"] / wall, 3),
                    "unlearn_share_cpu": round(timings["cpu_s"]["unlearn"] / cpu, 3),
                    "pass_s": round(one_pass["wall"], 3),
                    "pass_cpu_s": round(one_pass["cpu"], 3),
                    "unlearn_cpu_s": timings["cpu_s"]["unlearn"],
                    "target_cpu_s": round(2 * one_pass["cpu"] + 0.3, 3),
                    "timings": timings,
                    "valid_auc_after": done["checks"]["valid_auc"]["after"],
                    "mia_auc": done["checks"]["mia_auc"],
                    "state": done["state"],
                }
            )
            say(
                f"  {part} {method} {len(rows):2d}: user {user} ({rows[-1]['train_rows']} rows) "
                f"{wall:.2f} s wall, {cpu:.2f} s CPU, unlearning {rows[-1]['unlearn_share']:.0%} "
                f"({timings['cpu_s']['unlearn']:.2f} s CPU; one fwd+bwd pass "
                f"{one_pass['cpu']:.2f} s CPU), valid AUC {rows[-1]['valid_auc_after']:.4f}"
            )
    seconds = [r["seconds"] for r in rows]
    return {
        "method": method,
        "median_unlearn_cpu_s": statistics.median(r["unlearn_cpu_s"] for r in rows),
        "median_pass_cpu_s": statistics.median(r["pass_cpu_s"] for r in rows),
        "within_target": sum(r["unlearn_cpu_s"] <= r["target_cpu_s"] for r in rows),
        "deployment": str(dep.path),
        "requests": rows,
        "valid_auc_start": start_auc,
        "valid_auc_end": rows[-1]["valid_auc_after"],
        "valid_auc_drop": round(start_auc - rows[-1]["valid_auc_after"], 4),
        "median_s": statistics.median(seconds),
        "p95_s": percentile(seconds, 0.95),
        "median_cpu_s": statistics.median(r["cpu_seconds"] for r in rows),
        "median_unlearn_share": statistics.median(r["unlearn_share"] for r in rows),
        "median_unlearn_share_cpu": statistics.median(r["unlearn_share_cpu"] for r in rows),
        "version": dep.current(),
    }


def _sample_auc(worker: Worker) -> float:
    from e2urec.deploy.checks import auc_or_none

    warm = worker.warm
    assert warm is not None
    return auc_or_none([r["label"] for r in warm.valid], warm.valid_p_yes) or float("nan")


def coalesced(
    base: Path, work: Path, users: list[int], args: argparse.Namespace, method: str = "e2urec"
) -> dict:
    dep = copy_of(base, work, part_name("coalesced", method))
    with Worker(dep, max_users=args.max_users) as worker:
        one_pass = pass_seconds(worker, users)
        wall, cpu = time.perf_counter(), time.process_time()
        sets = method_sets(method, args)
        ids = [dep.enqueue([u], method=method, sets=sets)[0]["request_id"] for u in users]
        served = worker.drain()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    passes = sorted({r["pass"] for r in served})
    timings = [pass_timings(dep, p) for p in passes]
    unlearn_cpu = sum(t["cpu_s"]["unlearn"] for t in timings)
    result = {
        "method": method,
        "pass_cpu_s": round(one_pass["cpu"], 3),
        "unlearn_cpu_s": round(unlearn_cpu, 3),
        "target_cpu_s": round(2 * one_pass["cpu"] + 0.3, 3),
        "deployment": str(dep.path),
        "requests": len(ids),
        "all_done": all(r["state"] == "done" for r in served) and len(served) == len(ids),
        "passes": len(passes),
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "unlearn_share": round(sum(t["wall_s"]["unlearn"] for t in timings) / wall, 3),
        "unlearn_share_cpu": round(sum(t["cpu_s"]["unlearn"] for t in timings) / cpu, 3),
        "timings": timings,
        "valid_auc": served[-1]["checks"]["valid_auc"],
        "version": dep.current(),
    }
    say(
        f"  coalesced {method}: {len(ids)} requests in {len(passes)} pass(es), {wall:.2f} s wall, "
        f"{cpu:.2f} s CPU, unlearning {result['unlearn_share']:.0%} ({unlearn_cpu:.2f} s CPU; "
        f"one fwd+bwd pass over the rows {one_pass['cpu']:.2f} s CPU)"
    )
    return result


def heaviest_users(dep: Deployment, count: int) -> list[int]:
    """The `count` users with the most train rows."""
    with dep.store.connect() as conn:
        found = conn.execute(
            "SELECT user_id, COUNT(*) AS n FROM samples WHERE split = 'train' "
            "GROUP BY user_id ORDER BY n DESC, user_id LIMIT ?",
            (count,),
        ).fetchall()
    return [u for u, _ in found]


# ---------------------------------------------------------------- distance to a Retrain
def retrain_distance(
    base: Path, work: Path, users: list[int], finals: dict[str, Path], args: argparse.Namespace
) -> dict:
    """Retrain on the final retained data; paper-JSD on the forgotten rows and test AUC of the
    Original and each final version against it."""
    from e2urec.deploy.checks import auc_or_none
    from e2urec.eval.predict import score_rows
    from e2urec.runs import load_run_model

    original_dep = Deployment(base)
    forgotten = original_dep.store.rows("train", users)
    final = Deployment(next(iter(finals.values())))
    data = work / "retain-data"
    if not (data / "manifest.json").is_file():
        final.write_data(data, label="final retained data")
    retrain = Path(args.retrain) if args.retrain else work / "retrain"
    if not _complete(retrain):
        say("training the Retrain on the final retained data (the Original's recipe)")
        began = time.perf_counter()
        backbone = PRESET["train"]["backbone"]
        api.train(data, "retain", backbone, retrain, seed=0, overwrite=True, **RECIPE)
        say(f"  Retrain took {time.perf_counter() - began:.0f} s")
    reference = load_run_model(retrain)
    test = final.store.rows("test")  # the remaining users' rows: one set for every model
    valid = final.store.rows("valid")
    labels, valid_labels = [r["label"] for r in test], [r["label"] for r in valid]
    reference_auc = auc_or_none(labels, score_rows(reference, test, progress=False).p_yes)
    models = {"original": original_dep.version_dir("v0001")}
    models.update(
        {name: Deployment(p).version_dir(Deployment(p).current()) for name, p in finals.items()}
    )
    result: dict[str, Any] = {"retrain_test_auc": reference_auc, "forgotten_rows": len(forgotten)}
    for name, folder in models.items():
        model = load_run_model(folder)
        on_forgotten = score_rows(model, forgotten, reference=reference, progress=False)
        assert on_forgotten.distances is not None
        on_test = score_rows(model, test, progress=False)
        test_auc = auc_or_none(labels, on_test.p_yes)
        valid_auc = auc_or_none(valid_labels, score_rows(model, valid, progress=False).p_yes)
        result[name] = {
            "paper_jsd_forgotten": float(on_forgotten.distances["vocab"]["paper_jsd"].mean()),
            "test_auc": test_auc,
            "test_auc_gap": abs(test_auc - reference_auc),
            "valid_auc_all_rows": valid_auc,
        }
        say(
            f"  {name:10s} vs Retrain: paper-JSD on forgotten rows "
            f"{result[name]['paper_jsd_forgotten']:.5f}, test AUC {test_auc:.4f} "
            f"(Retrain {reference_auc:.4f}); valid AUC on all {len(valid)} rows {valid_auc:.4f}"
        )
    return result


# ---------------------------------------------------------------- stream through serve
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stream(base: Path, work: Path, users: list[int], args: argparse.Namespace) -> dict:
    import httpx
    import uvicorn

    from e2urec.deploy.serve import create_app

    dep = copy_of(base, work, "stream")
    port = free_port()
    app = create_app(dep.path, token=TOKEN, max_users=args.max_users)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}

    def post(user: int) -> tuple[int, str, float]:
        began = time.perf_counter()
        reply = httpx.post(
            f"{url}/forget", json={"users": [user], "sets": args.set}, headers=auth, timeout=120
        )
        return (
            reply.status_code,
            reply.json().get("request_id", reply.text),
            time.perf_counter() - began,
        )

    try:
        began = time.perf_counter()
        with ThreadPoolExecutor(len(users)) as pool:
            replies = list(pool.map(post, users))
        accepted = [rid for status, rid, _ in replies if status == 202]
        states: dict[str, dict] = {}
        with httpx.Client(base_url=url, headers=auth, timeout=60) as client:
            while len(states) < len(accepted) and time.perf_counter() - began < args.stream_timeout:
                for rid in accepted:
                    if rid not in states:
                        record = client.get(f"/requests/{rid}").json()
                        if record["state"] in ("done", "failed"):
                            states[rid] = record
                time.sleep(0.5)
            ledger = client.get("/ledger")
        seconds = time.perf_counter() - began
    finally:
        server.should_exit = True
        thread.join(timeout=600)
    entries = api.ledger(dep.path)
    left = sum(len(dep.store.rows(s, users)) for s in ("train", "valid", "test"))
    result = {
        "requests": len(users),
        "accepted": len(accepted),
        "max_accept_s": round(max(s for _, _, s in replies), 3),
        "done": sum(1 for r in states.values() if r["state"] == "done"),
        "passes": len({r["pass"] for r in states.values()}),
        "seconds": round(seconds, 1),
        "ledger_verified": ledger.status_code == 200
        and sum(e["kind"] == "forget" for e in entries) == len(accepted),
        "rows_left": left,
    }
    say(
        f"  stream: {result['accepted']}/{len(users)} accepted (slowest answer "
        f"{result['max_accept_s']} s), {result['done']} done in {result['passes']} pass(es), "
        f"{seconds:.0f} s; ledger verified {result['ledger_verified']}; rows left {left}"
    )
    return result


# ---------------------------------------------------------------- kill -9
def kill_trials(base: Path, work: Path, users: list[int], args: argparse.Namespace) -> dict:
    """Each trial on a fresh copy of the deployment: --kill-batch users drawn from `users`."""
    rng = random.Random(1)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    trials = []
    sets = args.set + (args.kill_set or [])
    for trial in range(args.kill_trials):
        dep = copy_of(base, work, "kill")
        command = [sys.executable, "-m", "e2urec", "work", "--deployment", str(dep.path)]
        mine = sorted(rng.sample(users, args.kill_batch))
        needles = [r["prompt"].encode() for s in SPLITS for r in dep.store.rows(s, mine)]
        ids = [dep.enqueue([u], sets=sets)[0]["request_id"] for u in mine]
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("pass "):
                break
        delay = rng.uniform(0.0, args.kill_window)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        where = _kill_point(dep)
        finish = subprocess.run([*command, "--once"], capture_output=True, text=True, env=env)
        records = [dep.request(rid) for rid in ids]
        current = dep.current()
        ok = {
            "finished": finish.returncode == 0,
            "all_done": all(r is not None and r["state"] == "done" for r in records),
            "ledger_verified": _verifies(dep),
            "rows_left": sum(len(dep.store.rows(s, mine)) for s in ("train", "valid", "test")),
            "partial_versions": len(list((dep.path / "versions").glob(".*"))),
            "current_whole": (dep.version_dir(current) / "version.json").is_file(),
            "versions": len(dep.versions()),
            "files_with_prompts": files_holding(dep.path, needles),
            "audit_traces": sum(api.audit(dep.path, u).traces for u in mine[:2]),
            "store_ratio": store_ratio(dep),
        }
        trials.append({"delay_s": round(delay, 2), "killed": where, **ok})
        say(f"  kill {trial + 1:2d}: after {delay:.1f} s ({where}) → {ok}")
    good = [
        t
        for t in trials
        if t["finished"]
        and t["all_done"]
        and t["ledger_verified"]
        and not t["rows_left"]
        and not t["partial_versions"]
        and t["current_whole"]
        and t["versions"] == 1
        and not t["files_with_prompts"]
        and not t["audit_traces"]
        and t["store_ratio"] <= 1.2
    ]
    return {"trials": trials, "all_good": len(good) == len(trials)}


def files_holding(folder: Path, needles: list[bytes]) -> list[str]:
    """Files under `folder` holding any of `needles`."""
    return [
        p.relative_to(folder).as_posix()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and any(n in p.read_bytes() for n in needles)
    ]


def store_ratio(dep: Deployment) -> float:
    """The store's size (with its WAL) over a compacted copy of the same rows."""
    compact = dep.path.parent / f"{dep.path.name}-compact.sqlite"
    compact.unlink(missing_ok=True)
    with dep.store.connect() as conn:
        conn.execute("VACUUM INTO ?", (str(compact),))
    size = sum(
        p.stat().st_size for p in dep.path.glob("store.sqlite*") if p.suffix != ".sqlite-shm"
    )
    ratio = size / compact.stat().st_size
    compact.unlink()
    return round(ratio, 4)


def privacy(base: Path, work: Path, user: int, args: argparse.Namespace) -> dict:
    """One deletion: what is left of the user in the deployment folder."""
    dep = copy_of(base, work, "privacy")
    needles = [r["prompt"].encode() for s in SPLITS for r in dep.store.rows(s, [user])]
    before = files_holding(dep.path, needles)
    began = time.perf_counter()
    result = dep.forget([user], sets=args.set)
    seconds = time.perf_counter() - began
    report = api.audit(dep.path, user)
    out = {
        "user": user,
        "status": result.status,
        "rows": len(needles),
        "seconds": round(seconds, 2),
        "files_with_prompts_before": before,
        "versions": dep.versions(),
        "files_with_prompts_after": files_holding(dep.path, needles),
        "audit_traces": report.traces,
        "audit_files": len(report.files),
        "audit_notes": report.notes,
        "store_ratio": store_ratio(dep),
        "wal_bytes": sum(p.stat().st_size for p in dep.path.glob("store.sqlite-wal")),
    }
    say(f"  privacy: {out}")
    return out


def _complete(run: Path) -> bool:
    try:
        return bool(read_run_manifest(run))
    except E2URecError:
        return False


def _kill_point(dep: Deployment) -> str:
    running = dep.queue.running_pass()
    if running is None:
        return "between passes"
    if not dep.version_dir(running.version).exists():
        return "before the version was written"
    if dep.current() != running.version:
        return "version written, not switched"
    return "switched, not recorded"


def _verifies(dep: Deployment) -> bool:
    try:
        dep.ledger.entries()
    except Exception:  # noqa: BLE001 (the bench reports it)
        return False
    return True


# ---------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="working folder (reused across runs)")
    parser.add_argument("--raw", default=str(DEFAULT_RAW), help="ml-100k folder")
    parser.add_argument("--data", help="an existing cpu-ml100k prepared folder")
    parser.add_argument("--original", help="an existing Original run on --data")
    parser.add_argument("--retrain", help="an existing Retrain on the final retained data")
    parser.add_argument("--requests", type=int, default=20, help="single-user requests (20)")
    parser.add_argument("--stream", type=int, default=50, help="concurrent requests (50)")
    parser.add_argument("--stream-timeout", type=float, default=900.0)
    parser.add_argument("--kill-trials", type=int, default=10)
    parser.add_argument("--kill-window", type=float, default=12.0, help="kill within s of a pass")
    parser.add_argument("--kill-batch", type=int, default=2, help="requests per kill trial (2)")
    parser.add_argument(
        "--kill-set",
        action="append",
        metavar="KEY=VALUE",
        help="settings added for the kill trials only (e.g. max_steps=5 for short passes)",
    )
    parser.add_argument("--max-users", type=int, default=64, help="users per pass (64)")
    parser.add_argument(
        "--parts",
        default="sequential,heavy,coalesced,retrain,stream,privacy,kill",
        help="parts to run",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="an E2URec setting of every request, after the cpu-ml100k preset's "
        f"({', '.join(PRESET_SETS)}), e.g. teacher=contrastive; repeatable",
    )
    parser.add_argument(
        "--methods", default="e2urec", help="methods served side by side (e2urec,influence)"
    )
    parser.add_argument("--heavy", type=int, default=3, help="heaviest users served singly (3)")
    parser.add_argument(
        "--extra",
        action="append",
        metavar="KEY=VALUE",
        help="a setting of every request of the methods other than e2urec (after the preset's)",
    )
    args = parser.parse_args()
    args.set = PRESET_SETS + (args.set or [])
    return args


def main() -> None:
    args = parse_args()
    methods = args.methods.split(",")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    results_path = work / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1))

    base = setup(args, work)
    dep = Deployment(base)
    users = pick_users(dep, args.requests, seed=0)
    results["setup"] = {
        "deployment": str(base),
        "sets": args.set,
        "store": dep.store.counts(),
        "users": users,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": os.getloadavg(),
    }
    say(f"deployment {base}: {dep.store.counts()}; users {users}")
    heavy = heaviest_users(dep, args.heavy)
    results["setup"]["heavy_users"] = heavy
    for method in methods:
        if "sequential" in parts:
            say(f"sequential ({method})")
            results[part_name("sequential", method)] = sequential(base, work, users, args, method)
            save()
        if "heavy" in parts:
            say(f"heaviest users ({method})")
            results[part_name("heavy", method)] = sequential(
                base, work, heavy, args, method, part="heavy"
            )
            save()
        if "coalesced" in parts:
            say(f"coalesced ({method})")
            results[part_name("coalesced", method)] = coalesced(base, work, users, args, method)
            save()
    if "retrain" in parts:
        say("distance to a Retrain on the final retained data")
        found = [*sorted(work.glob("sequential*")), *sorted(work.glob("coalesced*"))]
        finals = {d.name: d for d in found if d.is_dir()}  # every method's, this run's or earlier
        results["retrain"] = retrain_distance(base, work, users, finals, args)
        save()
    others = pick_users(dep, args.stream + 1, seed=1, exclude=set(users))
    if "stream" in parts:
        say("stream")
        results["stream"] = stream(base, work, others[: args.stream], args)
        save()
    if "privacy" in parts:
        say("privacy")
        results["privacy"] = privacy(base, work, others[-1], args)
        save()
    if "kill" in parts:
        say("kill -9")
        results["kill"] = kill_trials(base, work, pick_users(dep, None, seed=2), args)
        save()
    results["setup"]["load_average_end"] = os.getloadavg()
    save()
    summary(results)


def summary(results: dict[str, Any]) -> None:
    print("\nsummary")
    seq, co = results.get("sequential"), results.get("coalesced")
    if seq:
        print(
            f"  single-user request (warm): median {seq['median_s']:.2f} s, p95 {seq['p95_s']:.2f} s "
            f"wall; median {seq['median_cpu_s']:.2f} s CPU; unlearning share "
            f"{seq['median_unlearn_share']:.0%} of wall, {seq['median_unlearn_share_cpu']:.0%} "
            "of CPU  [target <= 5 s, >= 30%]"
        )
        print(
            f"  validation AUC over {len(seq['requests'])} sequential requests: "
            f"{seq['valid_auc_start']:.4f} -> {seq['valid_auc_end']:.4f} (drop "
            f"{seq['valid_auc_drop']:+.4f})  [target drop <= 0.01]"
        )
    if co and seq:
        print(
            f"  {co['requests']} coalesced: {co['seconds']:.1f} s wall = "
            f"{co['seconds'] / seq['median_s']:.1f}x one request ({co['cpu_seconds']:.1f} s CPU = "
            f"{co['cpu_seconds'] / seq['median_cpu_s']:.1f}x)  [target <= 2x]"
        )
    for name, part in results.items():
        if not isinstance(part, dict) or "method" not in part:
            continue
        if "requests" in part and isinstance(part["requests"], list):
            rows = part["requests"]
            print(
                f"  {name}: unlearning CPU {min(r['unlearn_cpu_s'] for r in rows):.2f}-"
                f"{max(r['unlearn_cpu_s'] for r in rows):.2f} s (median "
                f"{part['median_unlearn_cpu_s']:.2f}); one fwd+bwd pass median "
                f"{part['median_pass_cpu_s']:.2f} s; within 2x pass + 0.3 s: "
                f"{part['within_target']}/{len(rows)}"
            )
        else:
            print(
                f"  {name}: unlearning CPU {part['unlearn_cpu_s']:.2f} s; one fwd+bwd pass "
                f"{part['pass_cpu_s']:.2f} s (target {part['target_cpu_s']:.2f} s)"
            )
    dist = results.get("retrain")
    if dist:
        for name in [k for k in dist if isinstance(dist[k], dict)]:
            if name in dist:
                d = dist[name]
                print(
                    f"  {name:10s} vs Retrain: paper-JSD {d['paper_jsd_forgotten']:.5f}, "
                    f"test AUC gap {d['test_auc_gap']:.4f}; valid AUC (all rows) "
                    f"{d['valid_auc_all_rows']:.4f}"
                )
    if results.get("stream"):
        print(f"  stream: {results['stream']}")
    if results.get("kill"):
        print(
            f"  kill -9: {len(results['kill']['trials'])} trials, all good {results['kill']['all_good']}"
        )


if __name__ == "__main__":
    main()
