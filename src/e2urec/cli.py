"""The `e2urec` command line: parse arguments, call the api, turn E2URecError into one line + exit 2.

Each subcommand is a pair of functions: `add_<name>(subparsers)` declares its arguments and sets
`func` to a `run_<name>(args)` that calls into `e2urec.api`. Heavy imports happen inside the
run functions so that `e2urec --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

from e2urec import __version__
from e2urec.cli_deploy import DEPLOY_COMMANDS
from e2urec.config import add_settings, settings_of
from e2urec.data.settings import PrepareConfig
from e2urec.errors import E2URecError
from e2urec.train.options import TrainJob

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"e2urec: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


# ---------------------------------------------------------------- list
def add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list",
        help="list registered datasets, methods, backbones or presets",
        description="List what is registered: datasets (readers), methods (unlearning), "
        "backbones (model families) or presets (bench configurations).",
    )
    p.add_argument("what", choices=["datasets", "methods", "backbones", "presets"])
    p.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> None:
    from e2urec import api

    for line in api.describe(args.what):
        print(line)


# ---------------------------------------------------------------- data
def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="fetch, synthesize or prepare datasets (rating logs -> LLMRec data)",
        description="Dataset commands: each verb below has its own --help.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="VERB", parser_class=_Parser)
    dsub.required = True
    for add in DATA_VERBS:
        add(dsub)


def add_data_prepare(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "prepare",
        help="rating log -> train/valid/test, retain/forget and shard JSONL with prompts",
        description="Build the paper's protocol: one sample per rating with at least "
        "--min-history earlier ratings by its user, the last --last-n samples split 60/20/20 "
        "chronologically, --forget-ratio of the train users forgotten, SISA and RecEraser "
        "shards. Writes DIR whole or not at all; an identical preparation already in DIR is "
        "reported and kept, anything else there is refused unless --overwrite.",
    )
    add_settings(p, PrepareConfig)
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.set_defaults(func=run_data_prepare)


def run_data_prepare(args: argparse.Namespace) -> None:
    from e2urec import api
    from e2urec.data.prepare import summary_table

    result = api.prepare(PrepareConfig(**settings_of(PrepareConfig, args)), args.overwrite)
    if result.already_prepared:
        print(f"{result.out}: already prepared with this configuration; nothing changed")
    else:
        print(f"prepared {result.out} (template {result.manifest['template']})")
    print(summary_table(result.manifest))


def add_data_fetch(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "fetch",
        help="download a MovieLens dataset into the cache (sha256-checked)",
        description="Download ml-1m or ml-100k from GroupLens (or $E2UREC_DATA_URL), check its "
        "pinned sha256 and unzip it into the cache ($E2UREC_CACHE, default ~/.cache/e2urec). "
        "Prints the cached folder; a dataset already cached is not downloaded again.",
    )
    p.add_argument("name", metavar="NAME", help="ml-1m or ml-100k")
    p.add_argument("--cache", metavar="DIR", help="cache folder (default $E2UREC_CACHE)")
    p.add_argument(
        "--offline",
        action="store_true",
        help="never download; use only what the cache holds (also E2UREC_OFFLINE=1)",
    )
    p.set_defaults(func=run_data_fetch)


def run_data_fetch(args: argparse.Namespace) -> None:
    from e2urec import api

    print(api.fetch(args.name, cache=args.cache, offline=args.offline))


def add_data_synthesize(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "synthesize",
        help="write seeded synthetic data in the MovieLens-1M format",
        description="Generate a seeded latent-factor rating log and write users.dat, movies.dat "
        "and ratings.dat in the MovieLens-1M format (read it with --dataset ml-1m or synthetic). "
        "DIR appears only when complete.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--users", type=int, default=600, help="number of users (default 600)")
    p.add_argument("--items", type=int, default=400, help="number of items (default 400)")
    p.add_argument("--ratings", type=int, default=30_000, help="number of ratings (default 30000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.set_defaults(func=run_data_synthesize)


def run_data_synthesize(args: argparse.Namespace) -> None:
    from e2urec import api

    out = api.synthesize(
        args.out,
        n_users=args.users,
        n_items=args.items,
        n_ratings=args.ratings,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(f"wrote {out} ({args.users} users, {args.items} items, {args.ratings} ratings)")


DATA_VERBS = [add_data_fetch, add_data_synthesize, add_data_prepare]


# ---------------------------------------------------------------- eval
def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score a run: utility (AUC, ACC, LogLoss) and distances to a reference run",
        description="Score RUN on prepared splits of DIR: AUC, ACC (0.5) and LogLoss of "
        "P(Yes) = softmax over the Yes/No answer tokens. With --reference (the Retrain run, "
        "p) also the mean paper_jsd (symmetric KL, the paper's 'JSD'), true JSD and L2 to the "
        "run (q) at the first answer position, over the full vocabulary (scope vocab, the "
        "paper's) and over Yes/No (scope yes_no). Writes RUN/predictions/<split>.parquet and "
        "RUN/metrics.json, merged by split (other splits' entries are kept).",
    )
    p.add_argument("run", metavar="RUN", help="run folder to evaluate")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data folder")
    p.add_argument("--reference", metavar="RUN", help="reference run (Retrain) for distances")
    p.add_argument(
        "--splits",
        default=None,
        help="comma-separated splits (default test,forget, plus holdout when the data has one)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="rows per batch (default 64)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    from e2urec import api
    from e2urec.eval.evaluate import summary_lines

    result = api.evaluate(
        args.run,
        args.data,
        reference=args.reference,
        splits=args.splits,
        batch_size=args.batch_size,
        device=args.device,
    )
    for line in summary_lines(result, args.splits):
        print(line)


# ---------------------------------------------------------------- train
def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a recommender on a prepared split (Original, Retrain, shard models)",
        description="Train a recommender on split --on of a prepared folder with the paper's "
        "recipe: AdamW, answer cross-entropy, early stopping on the valid split's answer CE "
        "(--patience epochs without improvement), best epoch kept. --on train gives the "
        "Original model, --on retain the Retrain reference, --on sisa-K / receraser-K a shard "
        "model. Writes RUN/model (safetensors), log.jsonl, config.resolved.yaml and "
        "manifest.json. An interrupted run continues with --resume. Works under "
        "`accelerate launch -m e2urec train ...` (--batch-size is per process).",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data folder")
    p.add_argument(
        "--on", default="train", help="split to train on: train | retain | sisa-K | receraser-K"
    )
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    add_settings(p, TrainJob)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in RUN")
    p.add_argument("--overwrite", action="store_true", help="replace an existing RUN")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> None:
    from e2urec import api
    from e2urec.train.runner import process_state

    manifest = api.train(
        args.data,
        args.on,
        out=args.out,
        **settings_of(TrainJob, args),
        resume=args.resume,
        overwrite=args.overwrite,
    )
    if process_state().is_main_process:
        fit, cost = manifest["fit"], manifest["cost"]
        print(
            f"trained {args.out} ({manifest['kind']}, {manifest['backbone']} {manifest['finetune']}"
            f" on {manifest['trained_on']}): {fit['epochs_run']} epochs, {fit['steps']} steps, "
            f"best epoch {fit['best_epoch']} valid CE {fit['best_valid']:.4f}, "
            f"{cost['wall_s']:.1f} s, {manifest['processes']} process(es)"
        )


# ---------------------------------------------------------------- unlearn / train-ensemble / export
def add_unlearn(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "unlearn",
        help="unlearn the forget set from an original run with a registered method",
        description="Serve the deletion request of a prepared folder: run --method (see "
        "`e2urec list methods` for methods, parameters and defaults) from the original run "
        "--from, trained on the same prepared data. Writes a run that `e2urec eval` scores "
        "like any other, with per-phase wall time, trainable parameters, peak memory, steps "
        "and samples in its manifest.",
    )
    p.add_argument("--method", required=True, help="method name (see `e2urec list methods`)")
    p.add_argument("--from", dest="base", required=True, metavar="RUN", help="original run")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data folder")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter (repeatable), e.g. --set alpha=2 --set aug=lora",
    )
    p.add_argument("--seed", type=int, help="seed (default: the original run's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing RUN")
    p.set_defaults(func=run_unlearn)


def run_unlearn(args: argparse.Namespace) -> None:
    from e2urec import api

    manifest = api.unlearn(
        args.method, args.base, args.data, args.out, args.sets, args.seed, args.overwrite
    )
    cost = manifest["cost"]
    print(
        f"unlearned {args.out} ({args.method}, format {manifest['format']}): "
        f"{cost['optimizer_steps']} steps, {cost['wall_s']:.1f} s, "
        f"{cost['trainable_params']} trainable params ({cost['trainable_pct']}%)"
    )
    if manifest.get("forget_p_yes"):
        means = ", ".join(
            f"{k.replace('_', ' ')} {v:.3f}" for k, v in manifest["forget_p_yes"].items()
        )
        print(f"forget set, mean P(Yes): {means}")
    if manifest.get("direction_check", "").startswith("skipped"):
        print(f"direction check {manifest['direction_check']}")
    if manifest.get("holdout_p_yes"):
        print(f"holdout users, mean P(Yes): original {manifest['holdout_p_yes']['original']:.3f}")
    if manifest.get("stop", {}).get("rule") == "membership":
        stop = manifest["stop"]
        print(f"stopped at step {stop['step']} by {stop['stopped_by']}: {stop['reason']}")


def add_train_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-ensemble",
        help="train an original SISA or RecEraser shard ensemble (the --from of those methods)",
        description="Train one model per shard of the full train split (forget samples "
        "included: SISA replays the seeded shard assignment of `data prepare`, RecEraser adds "
        "each forgotten user to the most similar shard with room) with the supervised recipe "
        "(early stopping on valid); SISA averages shard logits, RecEraser fits an attention "
        "aggregator on the valid split.",
    )
    p.add_argument("--method", required=True, choices=["sisa", "receraser", "apa"])
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data folder")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    add_settings(p, TrainJob, exclude=("finetune",))
    apa = p.add_argument_group("apa (docs/methods-apa.md)")
    apa.add_argument("--shards", type=int, help="K adapters (default: the prepared data's shards)")
    apa.add_argument("--tau", type=float, help="aggregation temperature (default 1000)")
    apa.add_argument("--neighbours", type=int, help="nearest valid rows per row (default 20)")
    apa.add_argument(
        "--whole",
        help="modules each adapter trains whole besides LoRA: auto (minilm: the LM-head "
        "transform), none, or comma-separated names (default auto)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing RUN")
    p.set_defaults(func=run_train_ensemble)


def run_train_ensemble(args: argparse.Namespace) -> None:
    from e2urec import api

    apa = {k: getattr(args, k) for k in ("shards", "tau", "neighbours", "whole")}
    apa = {k: v for k, v in apa.items() if v is not None}
    if apa and args.method != "apa":
        flags = ", ".join(f"--{k}" for k in apa)
        raise E2URecError(f"{flags}: only for --method apa (sisa/receraser shards are prepared)")
    manifest = api.train_ensemble(
        args.method,
        args.data,
        out=args.out,
        overwrite=args.overwrite,
        **settings_of(TrainJob, args),
        **apa,
    )
    members = manifest.get("members") or manifest["adapters"]
    sizes = ", ".join(f"{m['samples']} ({m['forget_samples']} forget)" for m in members)
    aggregate = manifest.get("aggregate") or "tau {tau}, {neighbours} neighbours".format(
        **manifest.get("aggregation", {})
    )
    print(f"trained {args.out} ({args.method} ensemble, {aggregate}): {sizes}")


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a run as a self-contained single-model run",
        description="Write RUN as a single-format run in DIR: an adapter run (E2URec) needs "
        "--merge, which folds the LoRA weights into the base model; a single run is copied.",
    )
    p.add_argument("run", metavar="RUN", help="run folder to export")
    p.add_argument("--merge", action="store_true", help="merge LoRA adapters into the model")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> None:
    from e2urec import api

    print(f"exported {api.export(args.run, args.out, args.merge, args.overwrite)}")


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run the paper's whole experiment from a preset (tables + plots)",
        description="Prepare the data, train the Original, train Retrain for every seed (two "
        "Retrains give the noise floor), run every selected unlearning method, evaluate each "
        "against the Retrain of the same seed, and write results.json/.csv/.md and plots. "
        "Resumable: rerunning the same command reuses every finished step. "
        "Presets: see `e2urec list presets`.",
    )
    p.add_argument("--preset", required=True, help="preset name, e.g. demo or cpu-ml100k")
    p.add_argument("--out", required=True, help="output folder (reused on a rerun)")
    p.add_argument(
        "--data-root",
        help="folder holding the raw dataset (e.g. a folder with ml-100k/ inside); "
        "default: the download cache of `e2urec data fetch`",
    )
    p.add_argument("--seeds", type=int, help="number of seeds (overrides the preset)")
    p.add_argument(
        "--methods",
        type=lambda v: [m.strip() for m in v.split(",") if m.strip()],
        help="comma-separated methods or variant rows; a method brings its variants "
        "(default: the preset's, usually all registered)",
    )
    p.add_argument("--config", help="YAML file merged over the preset")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.epochs=2"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="every step of a pretrained-backbone preset at its model's geometry (random "
        "weights, synthetic ML-1M-format data, a few optimizer steps each); reports step "
        "times, peak memory and the full preset's projected time (see docs/gpu.md)",
    )
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> None:
    from e2urec import api

    if args.smoke:
        from pathlib import Path

        report = api.smoke(args.preset, args.out, args.config, args.set, args.methods)
        print((Path(args.out) / "smoke.md").read_text(encoding="utf-8"))
        print(f"report: {Path(args.out) / 'smoke.json'} ({report['total_s']:.0f} s)")
        return
    result = api.bench(
        args.preset, args.out, args.data_root, args.seeds, args.methods, args.config, args.set
    )
    print((result.out / "results.md").read_text(encoding="utf-8"))
    print("results and plots:")
    for name, path in result.files.items():
        print(f"  {name:22s} {path}")


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="print a bench's results.json as the Markdown table the docs show",
        description="Render RESULTS (a bench's OUT folder, or a results.json file) as the "
        "Markdown table of results.md: mean ± std per method over seeds, best unlearning method "
        "in bold, and the signal check when signal.json lies beside it.",
    )
    p.add_argument("results", metavar="RESULTS", help="bench output folder or results.json")
    p.add_argument(
        "--columns",
        type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
        help="comma-separated columns, e.g. forget_residual_jsd,test_auc,time_ratio "
        "(default: every column that holds a value)",
    )
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> None:
    from e2urec import api

    print(api.report(args.results, args.columns), end="")


COMMANDS = [  # in workflow order, as `e2urec --help` lists them
    add_data,
    add_train,
    add_train_ensemble,
    add_unlearn,
    add_eval,
    add_export,
    add_bench,
    add_report,
    add_list,
    *DEPLOY_COMMANDS,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="e2urec",
        description="Unlearning for LLM-based recommenders: prepare rating logs into LLMRec "
        "instruction data, train recommenders, serve deletion requests with E2URec and its "
        "baselines, and measure forgetting, utility and cost.",
    )
    parser.add_argument("--version", action="version", version=f"e2urec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


class _WarningLines(logging.Handler):
    """Writes each record as `warning: ...` to the stderr of the moment (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"warning: {record.getMessage()}\n")


def show_library_warnings() -> None:
    """Library warnings (logger "e2urec") reach stderr as `warning: ...` lines, once."""
    logger = logging.getLogger("e2urec")
    if not any(isinstance(h, _WarningLines) for h in logger.handlers):
        logger.addHandler(_WarningLines(logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    show_library_warnings()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already written as one line
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code = args.func(args)  # a run function may return an exit code (audit: 1 = traces)
    except E2URecError as exc:
        sys.stderr.write(f"e2urec: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(
            "e2urec: interrupted; no half-written file was kept (a run folder already "
            "started stays, marked incomplete)\n"
        )
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
