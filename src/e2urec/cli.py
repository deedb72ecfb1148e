"""The `e2urec` command line: parse arguments, call the api, turn E2URecError into one line + exit 2.

Each subcommand is a pair of functions: `run_<name>(args)` calls into `e2urec.api` (its docstring
is the command's description) and `add_<name>(subparsers)` declares its arguments, most of them
derived from the settings dataclasses (`config.add_settings`). Heavy imports happen inside the
run functions so that `e2urec --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from e2urec import __version__
from e2urec.cli_args import EXIT_USAGE, Parser, add_output, add_sets, command, names
from e2urec.cli_deploy import DEPLOY_COMMANDS
from e2urec.config import add_settings, settings_of
from e2urec.data.settings import PrepareConfig
from e2urec.errors import E2URecError
from e2urec.train.options import TrainJob, TrainOptions


# ---------------------------------------------------------------- list
def run_list(args: argparse.Namespace) -> None:
    """List what is registered: datasets (readers), methods (unlearning, with every parameter's
    type, default, choices and meaning), backbones (model families) or presets (bench
    configurations)."""
    from e2urec import api

    for line in api.describe(args.what):
        print(line)


def add_list(sub: argparse._SubParsersAction) -> None:
    p = command(sub, run_list, "list registered datasets, methods, backbones or presets")
    p.add_argument("what", choices=["datasets", "methods", "backbones", "presets"])


# ---------------------------------------------------------------- data
def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="fetch, synthesize or prepare datasets (rating logs -> LLMRec data)",
        description="Dataset commands: each verb below has its own --help.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="VERB", parser_class=Parser)
    dsub.required = True
    for add in (add_data_fetch, add_data_synthesize, add_data_prepare):
        add(dsub)


def run_data_prepare(args: argparse.Namespace) -> None:
    """Build the paper's protocol: one sample per rating with at least --min-history earlier
    ratings by its user, the last --last-n samples split 60/20/20 chronologically,
    --forget-ratio of the train users forgotten, SISA and RecEraser shards. Writes DIR whole or
    not at all; an identical preparation already in DIR is reported and kept, anything else
    there is refused unless --overwrite."""
    from e2urec import api
    from e2urec.data.prepare import summary_table

    result = api.prepare(PrepareConfig(**settings_of(PrepareConfig, args)), args.overwrite)
    if result.already_prepared:
        print(f"{result.out}: already prepared with this configuration; nothing changed")
    else:
        print(f"prepared {result.out} (template {result.manifest['template']})")
    print(summary_table(result.manifest))


def add_data_prepare(dsub: argparse._SubParsersAction) -> None:
    summary = "rating log -> train/valid/test, retain/forget and shard JSONL with prompts"
    p = command(dsub, run_data_prepare, summary, "prepare")
    add_settings(p, PrepareConfig)
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")


def run_data_fetch(args: argparse.Namespace) -> None:
    """Download ml-1m or ml-100k from GroupLens (or $E2UREC_DATA_URL), check its pinned sha256
    and unzip it into the cache ($E2UREC_CACHE, default ~/.cache/e2urec). Prints the cached
    folder; a dataset already cached is not downloaded again."""
    from e2urec import api

    print(api.fetch(args.name, cache=args.cache, offline=args.offline))


def add_data_fetch(dsub: argparse._SubParsersAction) -> None:
    summary = "download a MovieLens dataset into the cache (sha256-checked)"
    p = command(dsub, run_data_fetch, summary, "fetch")
    p.add_argument("name", metavar="NAME", help="ml-1m or ml-100k")
    p.add_argument("--cache", metavar="DIR", help="cache folder (default $E2UREC_CACHE)")
    p.add_argument(
        "--offline",
        action="store_true",
        help="never download; use only what the cache holds (also E2UREC_OFFLINE=1)",
    )


def run_data_synthesize(args: argparse.Namespace) -> None:
    """Generate a seeded latent-factor rating log and write users.dat, movies.dat and
    ratings.dat in the MovieLens-1M format (read it with --dataset ml-1m or synthetic). DIR
    appears only when complete."""
    from e2urec import api

    sizes = {"n_users": args.users, "n_items": args.items, "n_ratings": args.ratings}
    out = api.synthesize(args.out, **sizes, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {out} ({args.users} users, {args.items} items, {args.ratings} ratings)")


def add_data_synthesize(dsub: argparse._SubParsersAction) -> None:
    summary = "write seeded synthetic data in the MovieLens-1M format"
    p = command(dsub, run_data_synthesize, summary, "synthesize")
    add_output(p, "DIR", "output folder")
    p.add_argument("--users", type=int, default=600, help="number of users (default 600)")
    p.add_argument("--items", type=int, default=400, help="number of items (default 400)")
    p.add_argument("--ratings", type=int, default=30_000, help="number of ratings (default 30000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


# ---------------------------------------------------------------- eval
def run_eval(args: argparse.Namespace) -> None:
    """Score RUN on prepared splits of DIR: AUC, ACC (0.5) and LogLoss of P(Yes) = softmax over
    the Yes/No answer tokens. With --reference (the Retrain run, p) also the mean paper_jsd
    (symmetric KL, the paper's 'JSD'), true JSD and L2 to the run (q) at the first answer
    position, over the full vocabulary (scope vocab, the paper's) and over Yes/No (scope
    yes_no). Writes RUN/predictions/<split>.parquet and RUN/metrics.json, merged by split
    (other splits' entries are kept)."""
    from e2urec import api
    from e2urec.eval.evaluate import summary_lines

    options = {"splits": args.splits, "batch_size": args.batch_size, "device": args.device}
    result = api.evaluate(args.run, args.data, reference=args.reference, **options)
    for line in summary_lines(result, args.splits):
        print(line)


def add_eval(sub: argparse._SubParsersAction) -> None:
    summary = "score a run: utility (AUC, ACC, LogLoss) and distances to a reference run"
    p = command(sub, run_eval, summary)
    p.add_argument("run", metavar="RUN", help="run folder to evaluate")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data folder")
    p.add_argument("--reference", metavar="RUN", help="reference run (Retrain) for distances")
    p.add_argument(
        "--splits",
        help="comma-separated splits (default test,forget, plus holdout when the data has one)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="rows per batch (default 64)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


# ---------------------------------------------------------------- train
def add_recipe(p: argparse.ArgumentParser) -> None:
    """The supervised recipe's settings (TrainJob), the trainer options in their own group."""
    options = [f.name for f in dataclasses.fields(TrainOptions)]
    add_settings(p, TrainJob, exclude=tuple(options))
    add_settings(p.add_argument_group("trainer options"), TrainOptions)


def run_train(args: argparse.Namespace) -> None:
    """Train a recommender on split --on of a prepared folder with the paper's recipe: AdamW,
    answer cross-entropy, early stopping on the valid split's answer CE (--patience epochs
    without improvement), best epoch kept. --on train gives the Original model, --on retain the
    Retrain reference, --on sisa-K / receraser-K a shard model. Writes RUN/model (safetensors),
    log.jsonl, config.resolved.yaml and manifest.json. An interrupted run continues with
    --resume. Works under `accelerate launch -m e2urec train ...` (--batch-size is per
    process)."""
    from e2urec import api
    from e2urec.train.runner import process_state

    options = {"resume": args.resume, "overwrite": args.overwrite}
    manifest = api.train(args.data, args.on, out=args.out, **settings_of(TrainJob, args), **options)
    if process_state().is_main_process:
        fit, cost = manifest["fit"], manifest["cost"]
        print(
            f"trained {args.out} ({manifest['kind']}, {manifest['backbone']} {manifest['finetune']}"
            f" on {manifest['trained_on']}): {fit['epochs_run']} epochs, {fit['steps']} steps, "
            f"kept epoch {fit['best_epoch']}"
            + (f" (valid CE {fit['best_valid']:.4f})" if fit["best_valid"] is not None else "")
            + ", "
            f"{cost['wall_s']:.1f} s, {manifest['processes']} process(es)"
        )


def add_train(sub: argparse._SubParsersAction) -> None:
    summary = "train a recommender on a prepared split (Original, Retrain, shard models)"
    p = command(sub, run_train, summary)
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data folder")
    p.add_argument(
        "--on", default="train", help="split to train on: train | retain | sisa-K | receraser-K"
    )
    add_output(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in RUN")
    add_recipe(p)


# ---------------------------------------------------------------- unlearn / train-ensemble / export
def run_unlearn(args: argparse.Namespace) -> None:
    """Serve the deletion request of a prepared folder: run --method (see `e2urec list methods`
    for methods, parameters and defaults) from the original run --from, trained on the same
    prepared data. Writes a run that `e2urec eval` scores like any other, with per-phase wall
    time, trainable parameters, peak memory, steps and samples in its manifest."""
    from e2urec import api

    options = {"sets": args.sets, "seed": args.seed, "overwrite": args.overwrite}
    manifest = api.unlearn(args.method, args.base, args.data, args.out, **options)
    cost = manifest["cost"]
    print(
        f"unlearned {args.out} ({args.method}, format {manifest['format']}): "
        f"{cost['optimizer_steps']} steps, {cost['wall_s']:.1f} s, "
        f"{cost['trainable_params']} trainable params ({cost['trainable_pct']}%)"
    )
    if manifest.get("forget_p_yes"):
        means = (f"{k.replace('_', ' ')} {v:.3f}" for k, v in manifest["forget_p_yes"].items())
        print(f"forget set, mean P(Yes): {', '.join(means)}")
    if manifest.get("direction_check", "").startswith("skipped"):
        print(f"direction check {manifest['direction_check']}")
    if manifest.get("holdout_p_yes"):
        print(f"holdout users, mean P(Yes): original {manifest['holdout_p_yes']['original']:.3f}")
    if manifest.get("stop", {}).get("rule") == "membership":
        stop = manifest["stop"]
        print(f"stopped at step {stop['step']} by {stop['stopped_by']}: {stop['reason']}")


def add_unlearn(sub: argparse._SubParsersAction) -> None:
    summary = "unlearn the forget set from an original run with a registered method"
    p = command(sub, run_unlearn, summary)
    p.add_argument("--method", required=True, help="method name (see `e2urec list methods`)")
    p.add_argument("--from", dest="base", required=True, metavar="RUN", help="original run")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data folder")
    add_output(p)
    add_sets(p, "method parameter (repeatable), e.g. --set alpha=2 --set aug=lora")
    p.add_argument("--seed", type=int, help="seed (default: the original run's)")


def run_train_ensemble(args: argparse.Namespace) -> None:
    """Train one model per shard of the full train split (forget samples included: SISA replays
    the seeded shard assignment of `data prepare`, RecEraser adds each forgotten user to the
    most similar shard with room) with the supervised recipe (early stopping on valid); SISA
    averages shard logits, RecEraser fits an attention aggregator on the valid split."""
    from e2urec import api

    apa = ("shards", "tau", "neighbours", "whole", "represent_layers")
    apa = {k: getattr(args, k) for k in apa}
    apa = {k: v for k, v in apa.items() if v is not None}
    if apa and args.method != "apa":
        flags = ", ".join("--" + k.replace("_", "-") for k in apa)
        raise E2URecError(f"{flags}: only for --method apa (sisa/receraser shards are prepared)")
    recipe = {**settings_of(TrainJob, args), **apa}
    manifest = api.train_ensemble(
        args.method, args.data, out=args.out, overwrite=args.overwrite, **recipe
    )
    members = manifest.get("members") or manifest["adapters"]
    sizes = ", ".join(f"{m['samples']} ({m['forget_samples']} forget)" for m in members)
    aggregate = manifest.get("aggregate") or "tau {tau}, {neighbours} neighbours".format(
        **manifest.get("aggregation", {})
    )
    print(f"trained {args.out} ({args.method} ensemble, {aggregate}): {sizes}")


def add_train_ensemble(sub: argparse._SubParsersAction) -> None:
    summary = "train an original SISA or RecEraser shard ensemble (the --from of those methods)"
    p = command(sub, run_train_ensemble, summary)
    p.add_argument("--method", required=True, choices=["sisa", "receraser", "apa"])
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data folder")
    add_output(p)
    add_recipe(p)
    apa = p.add_argument_group("apa (docs/methods-apa.md)")
    apa.add_argument("--shards", type=int, help="K adapters (default: the prepared data's shards)")
    apa.add_argument("--tau", type=float, help="aggregation temperature (default 1000)")
    apa.add_argument("--neighbours", type=int, help="nearest valid rows per row (default 20)")
    apa.add_argument(
        "--whole",
        help="modules each adapter trains whole besides LoRA: auto (minilm: the LM-head "
        "transform), none, or comma-separated names (default auto)",
    )
    apa.add_argument(
        "--represent-layers",
        type=int,
        metavar="L",
        help="the base's first L blocks give a row's representation, for the partition and the "
        "per-row weights (default: all; 0: the mean token embedding; fewer makes scoring with "
        "tau > 0 cheaper)",
    )


def run_export(args: argparse.Namespace) -> None:
    """Write RUN as a single-format run in DIR: an adapter run (E2URec) needs --merge, which
    folds the LoRA weights into the base model; a single run is copied."""
    from e2urec import api

    print(f"exported {api.export(args.run, args.out, args.merge, args.overwrite)}")


def add_export(sub: argparse._SubParsersAction) -> None:
    p = command(sub, run_export, "write a run as a self-contained single-model run")
    p.add_argument("run", metavar="RUN", help="run folder to export")
    p.add_argument("--merge", action="store_true", help="merge LoRA adapters into the model")
    add_output(p, "DIR")


def run_import(args: argparse.Namespace) -> None:
    """Turn a recommender trained elsewhere into a run: the checkpoint named by --backbone
    (e.g. causal:/models/my-llmrec), or a PEFT LoRA adapter (--adapter) over it, plus the
    prepared data folder it was trained on. `unlearn --from`, `eval` and `deploy --from`
    accept the run; a LoRA adapter stays an adapter over the base it names."""
    from e2urec import api

    manifest = api.import_run(
        args.data, args.backbone, args.out, adapter=args.adapter,
        max_length=args.max_length, overwrite=args.overwrite,
    )  # fmt: skip
    kind = "adapter over " + args.backbone if args.adapter else args.backbone
    print(f"imported {args.out} ({kind}, {manifest['finetune']}; data {args.data})")


def add_import(sub: argparse._SubParsersAction) -> None:
    summary = "turn a Hugging Face checkpoint or PEFT adapter trained elsewhere into a run"
    p = command(sub, run_import, summary)
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data it was trained on")
    p.add_argument(
        "--backbone", required=True, metavar="SPEC",
        help="the checkpoint: causal:PATH_OR_ID, t5:PATH_OR_ID, gguf:FILE or smollm2",
    )  # fmt: skip
    p.add_argument("--adapter", metavar="DIR", help="a PEFT LoRA adapter trained over SPEC")
    p.add_argument("--max-length", type=int, default=512, help="max prompt+answer tokens")
    add_output(p)


# ---------------------------------------------------------------- bench / report
def run_bench(args: argparse.Namespace) -> None:
    """Prepare the data, train the Original, train Retrain for every seed (two Retrains give the
    noise floor), run every selected unlearning method, evaluate each against the Retrain of the
    same seed, and write results.json/.csv/.md and plots. Resumable: rerunning the same command
    reuses every finished step. With --stream N: the stream bench (see `e2urec.stream`) writes
    results.json, results.md and plots/stream.png. Presets: see `e2urec list presets`."""
    from pathlib import Path

    from e2urec import api

    options = {"config_file": args.config, "sets": args.sets, "methods": args.methods}
    if args.smoke:
        report = api.smoke(args.preset, args.out, **options)
        print((Path(args.out) / "smoke.md").read_text(encoding="utf-8"))
        print(f"report: {Path(args.out) / 'smoke.json'} ({report['total_s']:.0f} s)")
        return
    if args.stream is not None:
        options["stream"] = args.stream
    result = api.bench(args.preset, args.out, data_root=args.data_root, seeds=args.seeds, **options)
    print((result.out / "results.md").read_text(encoding="utf-8"))
    print("results and plots:")
    for name, path in result.files.items():
        print(f"  {name:22s} {path}")


def add_bench(sub: argparse._SubParsersAction) -> None:
    summary = "run the paper's whole experiment from a preset (tables + plots)"
    p = command(sub, run_bench, summary)
    p.add_argument("--preset", required=True, help="preset name, e.g. demo or cpu-ml100k")
    p.add_argument("--out", required=True, help="output folder (reused on a rerun)")
    p.add_argument(
        "--data-root",
        help="folder holding the raw dataset (e.g. a folder with ml-100k/ inside); "
        "default: the download cache of `e2urec data fetch`",
    )
    p.add_argument("--seeds", type=int, help="number of seeds (overrides the preset)")
    p.add_argument(
        "--stream",
        type=int,
        metavar="N",
        help="the stream bench instead: N forget users, each its own request through a "
        "deployment of the Original, per method (default: each purpose's default, influence, "
        "neggrad, bad-t), measured at 1/4, 1/2, 3/4 and N against Retrains without exactly "
        "the users forgotten so far (first seed); per-request latency by phase",
    )
    p.add_argument(
        "--methods",
        type=names,
        help="comma-separated methods or variant rows; a method brings its variants "
        "(default: the preset's, usually all registered)",
    )
    p.add_argument("--config", help="YAML file merged over the preset")
    add_sets(p, "override, e.g. train.epochs=2")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="every step of a pretrained-backbone preset at its model's geometry (random "
        "weights, synthetic ML-1M-format data, a few optimizer steps each); reports step "
        "times, peak memory and the full preset's projected time (see docs/gpu.md)",
    )


def run_report(args: argparse.Namespace) -> None:
    """Render RESULTS (a bench's OUT folder, or a results.json file) as the Markdown table of
    results.md: mean ± std per method over seeds, best unlearning method in bold, and the
    signal check when signal.json lies beside it."""
    from e2urec import api

    print(api.report(args.results, args.columns), end="")


def add_report(sub: argparse._SubParsersAction) -> None:
    summary = "print a bench's results.json as the Markdown table the docs show"
    p = command(sub, run_report, summary)
    p.add_argument("results", metavar="RESULTS", help="bench output folder or results.json")
    p.add_argument(
        "--columns",
        type=names,
        help="comma-separated columns, e.g. forget_residual_jsd,test_auc,time_ratio "
        "(default: every column that holds a value)",
    )


COMMANDS = [  # in workflow order, as `e2urec --help` lists them
    add_data,
    add_train,
    add_train_ensemble,
    add_unlearn,
    add_eval,
    add_export,
    add_import,
    add_bench,
    add_report,
    add_list,
    *DEPLOY_COMMANDS,
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="e2urec",
        description="Unlearning for LLM-based recommenders: prepare rating logs into LLMRec "
        "instruction data, train recommenders, serve deletion requests with E2URec and its "
        "baselines, and measure forgetting, utility and cost.",
    )
    parser.add_argument("--version", action="version", version=f"e2urec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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
