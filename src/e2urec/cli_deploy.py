"""The deployment subcommands of the `e2urec` command line: deploy, forget, work, ledger,
predict, serve, audit, rollback (each an `add_<name>` / `run_<name>` pair, as in `cli`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from e2urec.cli_args import add_output, add_sets, command
from e2urec.deploy import MAX_USERS, QUEUE_LIMIT
from e2urec.errors import E2URecError


def _say(line: str) -> None:
    print(line, file=sys.stderr)


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


def _arrow(check: dict[str, Any] | None) -> str:
    if not check:
        return "-"
    return "→".join("nan" if v is None else f"{v:.3f}" for v in (check["before"], check["after"]))


def table(entries: list[dict[str, Any]]) -> str:
    """A readable history: time, request, version, users, rows, method, MIA and valid AUC."""
    lines = [
        f"{'#':>3s}  {'time':29s} {'request':16s} {'version':8s} {'users':14s} "
        f"{'rows':>5s}  {'method':8s} {'MIA AUC':13s} {'valid AUC':13s}"
    ]
    for e in entries:
        users = ",".join(str(u)[:8] for u in e.get("users", [])) or "-"
        rows = (e.get("rows_removed") or e.get("rows") or {}).get("train", 0)
        checks = e.get("checks") or {}
        request = e.get("request_id") or e.get("kind", "")
        lines.append(
            f"{e['seq']:3d}  {e.get('time', ''):29s} {request[:16]:16s} "
            f"{e.get('version') or '-':8s} {users[:14]:14s} {rows:5d}  {e.get('method') or '-':8s} "
            f"{_arrow(checks.get('mia_auc')):13s} {_arrow(checks.get('valid_auc')):13s}"
        )
        if e.get("no_training_data"):
            ids = ",".join(str(u)[:8] for u in e["no_training_data"])
            lines.append(f"{'':5s}note: no training data held for user(s) {ids}")
    return "\n".join(lines)


def add_deploy(sub: argparse._SubParsersAction) -> None:
    summary = "create a deployment: a model version, its training data in SQLite, a ledger"
    p = command(sub, run_deploy, summary)
    p.add_argument("--from", dest="run", required=True, metavar="RUN", help="run to deploy")
    p.add_argument("--data", required=True, metavar="DIR", help="the run's prepared data folder")
    add_output(p, "DEP", "deployment folder to create")
    p.add_argument("--raw", help="raw data for titles and profiles (default: the data's own)")
    p.add_argument(
        "--rollback-window",
        default="0",
        metavar="DURATION",
        help="keep superseded versions this long for `e2urec rollback` (e.g. 30m, 12h, 7d; "
        "default 0: purged as soon as a new version serves)",
    )
    p.add_argument(
        "--method-for",
        action="append",
        default=[],
        metavar="PURPOSE=METHOD[:KEY=VALUE,...]",
        help="the method (and settings) serving requests of a purpose (privacy or pollution); "
        "default privacy=e2urec, pollution=e2urec:teacher=contrastive; repeatable",
    )
    p.add_argument(
        "--exact-every",
        type=int,
        metavar="K",
        help="exact window: the worker retrains on the retained rows (the run's recipe and "
        "seed) once K requests were served approximately, and serves the Retrain (default: "
        "none)",
    )
    p.add_argument(
        "--exact-within",
        metavar="DURATION",
        help="exact window: every served request is covered by such a Retrain within DURATION "
        "(e.g. 12h, 7d; default: none)",
    )


def run_deploy(args: argparse.Namespace) -> None:
    """Create deployment DEP from run RUN (an adapter run is merged): versions/v0001, store.sqlite
    with the run's training rows, the valid rows (utility checks), the test rows (held-out
    non-members for membership inference), the users' ratings, profiles and item titles (read
    from the raw data the folder was prepared from, or --raw), ledger.jsonl starting with a
    deploy entry, secret.key (mode 0600: keys the ledger's pseudonyms) and current.json. DEP
    appears whole or not at all."""
    from e2urec import api

    dep = api.deploy(
        args.run,
        args.data,
        args.out,
        raw=args.raw,
        overwrite=args.overwrite,
        rollback_window=args.rollback_window,
        method_for=args.method_for,
        exact_every=args.exact_every,
        exact_within=args.exact_within,
    )
    counts = dep.store.counts()
    print(
        f"deployed {args.out}: version {dep.current()}, {counts['train']} train / "
        f"{counts['valid']} valid / {counts['test']} test rows in the store"
    )


def add_forget(sub: argparse._SubParsersAction) -> None:
    summary = "serve a deletion request on a deployment: unlearn, check, switch, record"
    p = command(sub, run_forget, summary)
    p.add_argument("--deployment", required=True, metavar="DEP", help="deployment folder")
    p.add_argument("--users", help="comma-separated user ids, e.g. 12,45")
    p.add_argument(
        "--enqueue", action="store_true", help="queue the request and return (see `work`)"
    )
    p.add_argument(
        "--purpose",
        choices=["privacy", "pollution"],
        default="privacy",
        help="why the rows go: picks the deployment's method for it (default privacy)",
    )
    p.add_argument("--method", help="unlearning method (default: the purpose's)")
    p.add_argument("--reason", help="free text kept with the request (the ledger keeps its HMAC)")
    p.add_argument("--request-id", help="request id (default: keyed digest of users and method)")
    add_sets(p, "method parameter")


def run_forget(args: argparse.Namespace) -> None:
    """Forget users: the request joins the deployment's queue and the queue is served here and now
    (requests queued before it first): their stored training rows are unlearned from the current
    version with the method of --purpose (or --method), membership-inference AUC on their rows
    and validation AUC are checked before and after, their rows leave the store, current.json
    switches, the superseded version is purged and the ledger records the request. Rerunning an
    interrupted request finishes it; a finished one prints 'already done'. With --enqueue the
    request is only queued and the command returns at once; a worker (`e2urec serve` or `e2urec
    work`) serves it."""
    from e2urec import api

    users = None if args.users is None else parse_ids(args.users, "--users")
    options = {"method": args.method, "sets": args.sets, "reason": args.reason}
    options.update(purpose=args.purpose, request_id=args.request_id)
    if args.enqueue:
        if users is None:
            raise E2URecError("--enqueue needs --users")
        record, new = api.enqueue(args.deployment, users, **options)
        print(f"request {record['request_id']}: {_request_line(record, new)}")
        return
    result = api.forget(args.deployment, users, say=_say, **options)
    for note in result.notes:
        print(f"note: {note}")
    if result.status == "already done":
        print(f"request {result.request_id}: already done (ledger entry {result.entry['seq']})")
        return
    entry = result.entry
    rows = entry["rows_removed"]
    print(
        f"request {result.request_id}: {result.status}; version {entry['version']} serves; "
        f"removed {rows['train']} train / {rows['valid']} valid / {rows['test']} test rows"
    )
    for name, check in (entry.get("checks") or {}).items():
        if isinstance(check, dict):
            before, after = ("nan" if v is None else f"{v:.3f}" for v in check.values())
            print(f"  {name}: {before} -> {after}")


def _request_line(record: dict, new: bool = False) -> str:
    """A queued request's state in a few words."""
    state = record["state"]
    if state == "queued":
        merged = record.get("merged_with") or []
        also = f"; shares users with {', '.join(merged)}" if merged else ""
        return f"queued (position {record['position']}){also}" + ("" if new else ", as before")
    if state == "done":
        return f"done; version {record['version']} (ledger entry {record['ledger_seq']})"
    if state == "failed":
        return f"failed: {record.get('error')}"
    return state


def add_work(sub: argparse._SubParsersAction) -> None:
    p = command(sub, run_work, "serve a deployment's queued deletion requests (a worker process)")
    p.add_argument("--deployment", required=True, metavar="DEP", help="deployment folder")
    p.add_argument("--once", action="store_true", help="serve what is queued, then exit")
    add_queue_options(p)


def add_queue_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-users",
        type=int,
        default=MAX_USERS,
        help=f"most users in one pass (default {MAX_USERS})",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=0.0,
        help="seconds a queued request may wait for others to join its pass (default 0)",
    )


def run_work(args: argparse.Namespace) -> None:
    """Hold DEP and serve its queue in order: the queued requests with one method become one
    unlearning pass over the union of their users (at most --max-users), checked on the
    requests' own rows, switched and recorded with one ledger entry per request. The model and
    data stay in memory between passes. A pass cut short (crash, kill) is finished first on the
    next start; superseded versions are purged at start and after each pass once the rollback
    window passed. Without --once it runs until interrupted."""
    from e2urec import api

    records = api.work(
        args.deployment,
        once=args.once,
        max_users=args.max_users,
        max_wait=args.max_wait,
        say=_say,
    )
    for record in records:
        print(f"request {record['request_id']}: {_request_line(record)}; {record['seconds']} s")
    if args.once and not records:
        print("nothing queued")


def add_ledger(sub: argparse._SubParsersAction) -> None:
    p = command(sub, run_ledger, "print a deployment's history and verify its hash chain")
    p.add_argument("--deployment", required=True, metavar="DEP", help="deployment folder")
    p.add_argument(
        "--expect-head",
        metavar="SHA256",
        help="a head hash printed earlier (full or a 12+ digit prefix): fail unless it is "
        "still an entry of the chain",
    )
    p.add_argument("--user", type=int, help="say whether and when this user was forgotten")
    p.add_argument("--secret", help="the deployment's secret file (default DEP/secret.key)")


def run_ledger(args: argparse.Namespace) -> None:
    """Print the ledger of DEP as a table (time, request, version, users as pseudonyms, rows,
    method, MIA AUC and valid AUC before->after) after verifying its sha256 hash chain (no
    secret needed); a tampered ledger is one error naming the first bad entry (exit 2). The
    chain cannot show a removed last entry by itself: keep the printed head hash elsewhere and
    pass it later as --expect-head. With --user (needs the deployment's secret) it says whether
    and when that user was forgotten, and whether the deletion is exact yet (an exact-window
    Retrain covers it) or still approximate."""
    from e2urec import api
    from e2urec.deploy.ledger import entry_hash

    if args.user is not None:
        found = api.forgotten(args.deployment, args.user, args.secret)
        for entry in found:
            reason = f"; reason: {entry['reason']}" if entry.get("reason") else ""
            print(
                f"user {args.user} was forgotten at {entry.get('time')}: request "
                f"{entry.get('request_id')} (ledger entry {entry['seq']}, version "
                f"{entry.get('version')}, purpose {entry.get('purpose') or 'privacy'}){reason}"
            )
            print(f"  deletion: {entry['exact']}")
        if not found:
            print(f"user {args.user}: no deletion recorded in the ledger")
        return
    entries = api.ledger(args.deployment, args.expect_head)
    print(table(entries))
    head = entry_hash(entries[-1]) if entries else "-"
    print(f"hash chain verified: {len(entries)} entries; head sha256 {head}")


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = command(sub, run_predict, "P(like) per item for a user with a deployment's current version")
    p.add_argument("--deployment", required=True, metavar="DEP", help="deployment folder")
    p.add_argument("--user", required=True, type=int, help="user id")
    p.add_argument("--items", required=True, help="comma-separated item ids")


def run_predict(args: argparse.Namespace) -> None:
    """Render the prompt for USER from their most recent stored ratings (the data's template and
    history length) for each item, and print P(Yes) per item."""
    from e2urec import api

    scores = api.predict(args.deployment, args.user, parse_ids(args.items, "--items"))
    for item, p in scores.items():
        print(f"{item}\t{p:.4f}")


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = command(sub, run_serve, "serve a deployment over HTTP (predict, forget, ledger)")
    p.add_argument("--deployment", required=True, metavar="DEP", help="deployment folder")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    p.add_argument(
        "--no-worker", action="store_true", help="leave the queue to a separate `e2urec work`"
    )
    add_queue_options(p)
    p.add_argument(
        "--queue-limit",
        type=int,
        default=QUEUE_LIMIT,
        help=f"unfinished requests the queue holds before refusing more (default {QUEUE_LIMIT})",
    )


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {value!r}")
    return port


def run_serve(args: argparse.Namespace) -> None:
    """FastAPI + uvicorn: POST /forget {users, purpose?, method?, reason?} with 'Authorization:
    Bearer $E2UREC_SERVE_TOKEN' (unset: forgetting is refused) queues a deletion request (202
    {request_id, state}); POST /predict {user, items}, GET /requests/ID and GET
    /ledger[?expect_head=SHA256] need $E2UREC_READ_TOKEN or the forget token (open when neither
    is set, allowed on a loopback host only). A worker thread serves the queue (see `e2urec
    work`); predictions go on during a pass."""
    from e2urec.deploy.serve import serve

    serve(
        args.deployment,
        host=args.host,
        port=args.port,
        worker=not args.no_worker,
        max_users=args.max_users,
        max_wait=args.max_wait,
        queue_limit=args.queue_limit,
    )


def add_audit(sub: argparse._SubParsersAction) -> None:
    summary = "scan every file of a deployment for traces of a user's rows and id"
    p = command(sub, run_audit, summary)
    p.add_argument("--deployment", required=True, metavar="DEP", help="deployment folder")
    p.add_argument("--user", required=True, type=int, help="user id")
    p.add_argument("--data", help="the prepared data folder holding the user's rows")
    p.add_argument("--secret", help="the deployment's secret file (default DEP/secret.key)")


def run_audit(args: argparse.Namespace) -> int:
    """Read every file under DEP as bytes (SQLite with its free pages and WAL, versions, request
    records, the ledger, logs) and report each trace of USER: the bytes of their prompts (taken
    from the store or the prepared data folder the deployment was built from) and their id; or
    'no trace'. Needs the deployment's secret (to tell the ledger's keyed pseudonym from a
    plaintext id). Exit 1 when a trace is found."""
    from e2urec import api

    report = api.audit(args.deployment, args.user, data=args.data, secret=args.secret)
    for name, traces in report.files.items():
        for trace in traces or ["no trace"]:
            print(f"{name}: {trace}")
    for note in report.notes:
        print(f"note: {note}")
    total = len(report.files)
    if report.traces:
        print(f"user {args.user}: {report.traces} trace(s) in {total} files")
        return 1
    print(
        f"user {args.user}: no trace in {total} files ({report.scanned_bytes} bytes, "
        f"{report.needles} byte strings of their rows searched)"
    )
    return 0


def add_rollback(sub: argparse._SubParsersAction) -> None:
    summary = "serve a superseded version again (one kept by the rollback window)"
    p = command(sub, run_rollback, summary)
    p.add_argument("--deployment", required=True, metavar="DEP", help="deployment folder")
    p.add_argument("--to", metavar="VERSION", help="the kept version to serve (e.g. v0002)")


def run_rollback(args: argparse.Namespace) -> None:
    """Switch DEP back to a version the rollback window still keeps (default: the newest one before
    the serving version), purge the versions after it and record the rollback in the ledger. It
    says which deletions it undoes: their rows stay deleted from the store, but the model that
    serves again was trained on them."""
    from e2urec import api

    result = api.rollback(args.deployment, args.to)
    undoes = ", ".join(result["undoes"]) or "none"
    print(f"rolled back {result['from']} -> {result['to']}; undoes the unlearning of: {undoes}")
    if result["undoes"]:
        print(
            "note: their rows stay deleted from the store, but the model now serving was "
            "trained on them"
        )


DEPLOY_COMMANDS = [
    add_deploy,
    add_forget,
    add_work,
    add_ledger,
    add_predict,
    add_serve,
    add_audit,
    add_rollback,
]
