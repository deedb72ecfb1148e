"""kill -9 during the exact window's Retrain: nothing lost, no partial or superseded version.

Each trial copies DEP (a deployment created with `deploy --exact-every K`), queues K single-user
requests (users drawn with the trial's seed), starts `e2urec work --once`, waits until its
Retrain has begun (DEP/requests/exact-N/run exists), sleeps a random part of --spread seconds,
kills it with SIGKILL and runs `e2urec work --once` again. A trial passes when every request is
done, the ledger verifies and holds one `exact` entry covering them, the deployment keeps one
version (the Retrain's, or a version unlearned on top of it when requests remained), no
`versions/.*` partial folder or `requests/exact-*` working folder is left, and none of the
users' rows remain in the store. Prints one line per trial and writes WORK/exact-kill.json.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_exact.py --deployment DEP \
        --work /tmp/bx --trials 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from e2urec import api
from e2urec.deploy.deployment import Deployment


def trial(base: Path, work: Path, number: int, spread: float) -> dict:
    dep_path = work / f"trial-{number}"
    shutil.rmtree(dep_path, ignore_errors=True)
    shutil.copytree(base, dep_path)
    dep = Deployment(dep_path)
    every = int(dep.settings()["exact_every"] or 1)
    rng = random.Random(number)
    users = rng.sample(sorted({r["user_id"] for r in dep.store.rows("train")}), every)
    ids = [api.enqueue(dep_path, [u])[0]["request_id"] for u in users]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "e2urec", "work", "--deployment", str(dep_path), "--once"]
    worker = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    while not list((dep_path / "requests").glob("exact-*/run")) and worker.poll() is None:
        time.sleep(0.05)
    delay = rng.uniform(0, spread)
    time.sleep(delay)
    killed = worker.poll() is None
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    began = time.perf_counter()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    entries = api.ledger(dep_path)
    exact = [e for e in entries if e.get("kind") == "exact"]
    dep = Deployment(dep_path)
    checks = {
        "rerun_ok": rerun.returncode == 0,
        "all_done": all((dep.request(r) or {}).get("state") == "done" for r in ids),
        "one_exact_covering_all": len(exact) == 1 and set(exact[0]["covers"]) == set(ids),
        "one_version": len(dep.versions()) == 1,
        "no_partial": not list((dep_path / "versions").glob(".*")),
        "no_working_folder": not list((dep_path / "requests").glob("exact-*")),
        "rows_gone": sum(dep.store.counts(users).values()) == 0,
    }
    shutil.rmtree(dep_path, ignore_errors=True)
    return {
        "trial": number,
        "killed_during_retrain": killed,
        "killed_after_s": round(delay, 2),
        "recovery_s": round(time.perf_counter() - began, 1),
        **checks,
        "passed": all(checks.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployment", required=True, type=Path, help="deployment to copy")
    parser.add_argument("--work", required=True, type=Path, help="working folder")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--spread", type=float, default=20.0, help="kill within this many s")
    args = parser.parse_args()
    if not Deployment(args.deployment).settings()["exact_every"]:
        parser.error(f"{args.deployment} has no --exact-every window")
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for number in range(1, args.trials + 1):
        results.append(trial(args.deployment, args.work, number, args.spread))
        print(json.dumps(results[-1]), flush=True)
    passed = sum(r["passed"] for r in results)
    print(f"{passed}/{len(results)} trials passed")
    (args.work / "exact-kill.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
