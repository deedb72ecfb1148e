"""`e2urec bench`: the paper's whole experiment as one resumable plan of steps.

Plan: prepare the data → train the Original → Retrain for every seed and every floor seed
(the reference; two Retrains of different seeds give the noise floor) → the SISA / RecEraser original ensembles
when those methods are selected → every selected method for every seed → evaluate each run on
test and forget against the Retrain of the same seed (each Retrain's answer logits are scored
once and held in memory for the evaluations after it) → results.json / .csv / .md and plots.

Every step writes into its own folder under OUT and leaves a stamp (OUT/steps/<name>.json)
holding the hash of its configuration and inputs; a rerun reuses a step whose stamp and output
are intact, so a bench that crashed continues where it stopped.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from e2urec import presets
from e2urec.artifacts import (
    MANIFEST,
    atomic_write_json,
    atomic_write_yaml,
    read_json,
    sha256_bytes,
    sha256_file,
)
from e2urec.config import settings_of
from e2urec.errors import E2URecError
from e2urec.report.tables import NOISE_FLOOR, ORIGINAL, RETRAIN

ENSEMBLE_METHODS = ("sisa", "receraser", "apa")
EVAL_SPLITS = ("test", "forget")
HOLDOUT_SPLIT = "holdout"


@dataclass
class Step:
    """One unit of the plan: a name, the folder it fills, the inputs it hashes, and its action."""

    name: str
    out: Path
    key: dict[str, Any]
    action: Callable[[], Any]
    inputs: list[Path] = field(default_factory=list)  # files whose content the step depends on

    def fingerprint(self) -> str:
        digests = {str(p): sha256_file(p) for p in self.inputs}
        blob = json.dumps({"key": self.key, "inputs": digests}, sort_keys=True, default=str)
        return sha256_bytes(blob.encode())


@dataclass
class BenchResult:
    """Where the bench wrote its results, and the rows of results.json."""

    out: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path]


def resolve_raw(data: presets.BenchData, data_root: str | None, say: Callable[[str], None]):
    """(dataset name, raw folder or None) to prepare: --data-root, then the download cache, then
    (with `data.fetch`) a download into the cache, then the preset's fallback dataset (said in
    one line, with why), else one clear error."""
    from e2urec.data import sources

    if data_root:
        root = Path(data_root)
        for candidate in (root / data.dataset, root):
            if candidate.is_dir() and _holds_dataset(candidate, data.dataset):
                return data.dataset, candidate
    downloadable = data.dataset in sources.SPECS
    if downloadable and (cached := sources.find_cached(data.dataset)) is not None:
        return data.dataset, cached
    if data.dataset == "synthetic":
        return data.dataset, None
    where = "in the download cache" + (f" or under --data-root {data_root}" if data_root else "")
    problem = f"{data.dataset} files not found {where}"
    if data.fetch and downloadable and sources.offline_env():
        problem += " and E2UREC_OFFLINE is set"
    elif data.fetch and downloadable:
        url, cache = sources.dataset_url(data.dataset), sources.cache_dir()
        say(f"{problem}; downloading {url} into {cache} (sha256-checked)")
        try:
            return data.dataset, sources.fetch(data.dataset)
        except E2URecError as exc:  # its first clause says what failed; the rest is a hint
            problem = f"{data.dataset} not downloaded: {str(exc).split('; ')[0]}"
    if data.fallback_dataset:
        say(
            f"NOTE: {problem}; using the {data.fallback_dataset} dataset instead "
            f"(run `e2urec data fetch {data.dataset}` or pass --data-root)"
        )
        return data.fallback_dataset, None
    raise E2URecError(
        f"{problem}; run `e2urec data fetch {data.dataset}` or pass --data-root FOLDER"
    )


def _holds_dataset(folder: Path, dataset: str) -> bool:
    from e2urec.data.readers import READERS

    try:
        READERS.get(dataset)(folder)
    except E2URecError:
        return False
    return True


class Bench:
    """Builds and runs the plan for one BenchConfig into folder `out`."""

    def __init__(self, config: presets.BenchConfig, out: Path, data_root: str | None) -> None:
        from e2urec.eval.predict import AnswerLogitCache
        from e2urec.methods import METHODS

        self.config = config
        self.out = out
        self.data_root = data_root
        variants = _check_variants(config.variants, METHODS.names())
        chosen = list(config.methods)
        if config.methods == "all":  # methods that need a pretrained base skip tiny backbones
            tiny = config.train.backbone.partition(":")[0].endswith("-tiny")
            chosen = [m for m in METHODS.names() if not (tiny and METHODS.get(m).needs_pretrained)]
        for name in chosen:
            if name not in variants:
                METHODS.get(name)
        # A variant runs with `all`, when named, or when its method is chosen.
        self.variants = {
            name: spec
            for name, spec in variants.items()
            if config.methods == "all" or name in chosen or spec["method"] in chosen
        }
        self.methods = [m for m in chosen if m not in (RETRAIN, *variants)] + list(self.variants)
        self.data_dir = out / "data"
        # Every method is evaluated against its seed's Retrain: score each Retrain once per split.
        self.logit_cache = AnswerLogitCache()
        # Retrain seeds: the methods' seeds, then the floor-only ones (noise floor, no methods).
        self.retrain_seeds = list(dict.fromkeys([*config.seeds, *config.floor_seeds]))
        self.steps: list[Step] = []
        self.started = time.monotonic()

    # ------------------------------------------------------------------ plan
    def run_dir(self, name: str) -> Path:
        return self.out / "runs" / name

    def plan(self) -> list[Step]:
        """Every step of the experiment, in order."""
        from e2urec.methods.ensemble import recipe_class, train_ensemble_from_options
        from e2urec.train.recipes import train as train_run

        c, train = self.config, asdict(self.config.train)
        backbone = train.pop("backbone")
        data_manifest = self.data_dir / MANIFEST
        steps = [Step("prepare data", self.data_dir, {"data": asdict(c.data)}, self._prepare)]

        def train_step(name: str, on: str, seed: int) -> Step:
            out = self.run_dir(name)
            options = dict(train, seed=seed, overwrite=True)
            return Step(
                f"train {name}",
                out,
                {"on": on, "backbone": backbone, **options},
                lambda: train_run(self.data_dir, on, backbone, out, **options),
                [data_manifest],
            )

        steps.append(train_step(ORIGINAL, "train", c.seeds[0]))
        steps += [train_step(f"{RETRAIN}-seed{s}", "retain", s) for s in self.retrain_seeds]
        for method in self.methods:
            if method in ENSEMBLE_METHODS:
                out = self.run_dir(f"{method}-original")
                # the method's settings that are recipe fields (e.g. APA's neighbours) train it
                own = settings_of(recipe_class(method), c.method_params.get(method) or {})
                recipe = dict(train, seed=c.seeds[0], **own)
                steps.append(
                    Step(
                        f"train {method} original ensemble",
                        out,
                        {"method": method, "backbone": backbone, **recipe},
                        lambda m=method, o=out, r=recipe: train_ensemble_from_options(
                            m, self.data_dir, backbone, o, overwrite=True, **r
                        ),
                        [data_manifest],
                    )
                )
        for seed in c.seeds:
            for method in self.methods:
                steps.append(self._unlearn_step(method, seed, data_manifest))
        steps += self._eval_steps()
        return steps

    def base_method(self, name: str) -> str:
        """The registered method a row name runs: itself, or a variant's method."""
        return self.variants[name]["method"] if name in self.variants else name

    def method_sets(self, method: str) -> tuple[dict[str, Any], list[str]]:
        """The preset's parameters of `method` (a variant's: its method's, then its own) and the
        `--set key=value` items they become."""
        params = dict(self.config.method_params.get(self.base_method(method)) or {})
        params.update(self.variants.get(method, {}).get("params") or {})
        if self.base_method(method) in ENSEMBLE_METHODS:
            params = _unlearn_fields(self.base_method(method), params)
        sets = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items()]
        return params, sets

    def check(self) -> None:
        """Refuse settings out of range before anything is written: the data preparation, the
        training recipe (checked as the ensembles' Recipe) and every method's parameters."""
        from e2urec.data.prepare import PrepareConfig
        from e2urec.data.settings import PrepareSettings
        from e2urec.methods.ensemble import Recipe
        from e2urec.unlearn import method_params

        data = settings_of(PrepareSettings, self.config.data)
        PrepareConfig(**data, out=str(self.data_dir)).validate("data.")
        Recipe(**settings_of(Recipe, self.config.train)).check("train.")
        for method in self.methods:
            method_params(self.base_method(method), self.method_sets(method)[1])

    def _unlearn_step(self, method: str, seed: int, data_manifest: Path) -> Step:
        from e2urec.unlearn import unlearn

        ensemble = self.base_method(method)
        base = self.run_dir(f"{ensemble}-original" if ensemble in ENSEMBLE_METHODS else ORIGINAL)
        out = self.run_dir(f"{method}-seed{seed}")
        params, sets = self.method_sets(method)
        key = {"method": self.base_method(method), "seed": seed, "params": params}
        if method in self.variants:
            key["variant"] = method
        return Step(
            f"unlearn {method} (seed {seed})",
            out,
            key,
            lambda: unlearn(
                self.base_method(method),
                base,
                self.data_dir,
                out,
                sets=sets,
                seed=seed,
                overwrite=True,
            ),
            [data_manifest, base / MANIFEST],
        )

    def _eval_steps(self) -> list[Step]:
        seeds, retrain_seeds = self.config.seeds, self.retrain_seeds
        pairs = [(ORIGINAL, s) for s in seeds]
        pairs += [(f"{m}-seed{s}", s) for s in seeds for m in self.methods]
        steps = []
        for name, seed in pairs:
            steps.append(self._eval_step(name, f"{RETRAIN}-seed{seed}"))
        for i, seed in enumerate(retrain_seeds):  # each Retrain against the next: the noise floor
            other = retrain_seeds[(i + 1) % len(retrain_seeds)]
            if other != seed:
                steps.append(self._eval_step(f"{RETRAIN}-seed{seed}", f"{RETRAIN}-seed{other}"))
        return steps

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """test and forget, plus the holdout users' rows (membership non-members) when held out."""
        holdout = (HOLDOUT_SPLIT,) if self.config.data.holdout_ratio > 0 else ()
        return EVAL_SPLITS + holdout

    def _eval_step(self, run_name: str, reference_name: str) -> Step:
        run, reference = self.run_dir(run_name), self.run_dir(reference_name)
        out = self.out / "evals" / f"{run_name}-vs-{reference_name}.json"
        splits = self.eval_splits

        def action() -> None:
            from e2urec.eval.evaluate import evaluate

            metrics = evaluate(
                run,
                self.data_dir,
                reference=reference,
                splits=splits,
                progress=False,
                logit_cache=self.logit_cache,
            )
            atomic_write_json(out, metrics)

        return Step(
            f"evaluate {run_name} against {reference_name}",
            out,
            {"run": run_name, "reference": reference_name, "splits": splits},
            action,
            [self.data_dir / MANIFEST, run / MANIFEST, reference / MANIFEST],
        )

    # ------------------------------------------------------------------ actions
    def _prepare(self) -> None:
        from e2urec.data.prepare import PrepareConfig, prepare
        from e2urec.data.settings import PrepareSettings

        data = self.config.data
        dataset, raw = resolve_raw(data, self.data_root, self.say)
        config = PrepareConfig(
            **{**settings_of(PrepareSettings, data), "dataset": dataset},
            out=str(self.data_dir),
            raw=str(raw) if raw else None,
        )
        prepare(config, overwrite=True)

    # ------------------------------------------------------------------ running
    def say(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    def execute(self, steps: list[Step] | None = None) -> None:
        """Run `steps` (default: the plan), reusing steps whose stamp matches; print which step
        of how many."""
        steps = self.plan() if steps is None else steps
        stamps = self.out / "steps"
        for number, step in enumerate(steps, 1):
            clock = _clock(time.monotonic() - self.started)
            header = f"[{number:>{len(str(len(steps)))}}/{len(steps)} {clock}] {step.name}"
            stamp = stamps / f"{step.out.relative_to(self.out).as_posix().replace('/', '__')}.json"
            ready = _step_complete(step.out)
            if ready and stamp.is_file() and _stamp_value(stamp) == step.fingerprint():
                self.say(f"{header}: reused")
                continue
            self.say(f"{header} ...")
            began = time.monotonic()
            step.action()
            atomic_write_json(stamp, {"step": step.name, "fingerprint": step.fingerprint()})
            self.say(f"{header}: done in {_clock(time.monotonic() - began)}")

    # ------------------------------------------------------------------ results
    def rows(self) -> list[dict[str, Any]]:
        """One row per method × seed (plus Original, Retrain and noise-floor rows)."""
        seeds, retrain_seeds = self.config.seeds, self.retrain_seeds
        retrain_time = {
            s: _seconds(_cost(self.run_dir(f"{RETRAIN}-seed{s}"))) for s in retrain_seeds
        }
        rows = []
        for seed in seeds:
            rows.append(self._row(ORIGINAL, ORIGINAL, seed, f"{RETRAIN}-seed{seed}", retrain_time))
            for method in self.methods:
                run = f"{method}-seed{seed}"
                rows.append(self._row(method, run, seed, f"{RETRAIN}-seed{seed}", retrain_time))
        pairs_seen = set()  # the distances are symmetric: one noise-floor row per pair of seeds
        for i, seed in enumerate(retrain_seeds):
            other = retrain_seeds[(i + 1) % len(retrain_seeds)]
            if other == seed:
                continue
            run = f"{RETRAIN}-seed{seed}"
            retrain = self._row(RETRAIN, run, seed, f"{RETRAIN}-seed{other}", retrain_time)
            floor = {k: retrain.pop(k) for k in list(retrain) if k.startswith("forget_")}
            rows.append(retrain)
            pair = frozenset((seed, other))
            # the floor row is compared with a methods' seed, whose Original gives its residual
            if pair not in pairs_seen and other in seeds:
                pairs_seen.add(pair)
                rows.append(
                    {
                        "method": NOISE_FLOOR,
                        "seed": seed,
                        "run": retrain["run"],
                        "reference": retrain["reference"],
                        **floor,
                    }
                )
        return rows

    def _row(
        self, method: str, run: str, seed: int, reference: str, retrain_time: dict[int, float]
    ) -> dict[str, Any]:
        metrics = read_json(self.out / "evals" / f"{run}-vs-{reference}.json", "evaluation")
        cost = _cost(self.run_dir(run))
        row: dict[str, Any] = {"method": method, "seed": seed, "run": str(self.run_dir(run))}
        for split in EVAL_SPLITS:
            entry = metrics["splits"][split]
            for name in ("auc", "acc", "logloss"):
                row[f"{split}_{name}"] = entry.get(name)
        for scope, prefix in (("vocab", "forget_"), ("yes_no", "forget_yesno_")):
            for name, value in metrics["splits"]["forget"]["distance"][scope].items():
                row[prefix + name] = value
        row.update(self._prediction_evidence(run, reference))
        row["time_s"] = _seconds(cost)
        row["time_ratio"] = row["time_s"] / retrain_time[seed] if retrain_time[seed] else None
        row["trainable_params"] = cost.get("trainable_params")
        row["trainable_pct"] = cost.get("trainable_pct")
        row["peak_memory_mb"] = cost.get("peak_memory_mb")
        return row

    def _prediction_evidence(self, run: str, reference: str) -> dict[str, Any]:
        """From the runs' per-row predictions: KS forget quality against the reference, the
        reference's forget AUC (for the AUC residual), membership AUC forget vs holdout and
        PrivLeak (with a holdout), mean P(Yes) on the shilling targets' test rows."""
        from e2urec.eval import evidence, metrics

        run_dir, ref_dir = self.run_dir(run), self.run_dir(reference)
        out: dict[str, Any] = {"reference": str(ref_dir)}
        if len(self.retrain_seeds) < 2:  # a lone Retrain is never scored itself
            return out
        forget = evidence.read_predictions(run_dir, "forget")
        ref_forget = evidence.read_predictions(ref_dir, "forget")
        out["forget_quality"] = evidence.forget_quality(forget, ref_forget)
        out["reference_forget_auc"] = metrics.auc(ref_forget["label"], ref_forget["p_yes"])
        if HOLDOUT_SPLIT in self.eval_splits:
            own = evidence.membership_auc(forget, evidence.read_predictions(run_dir, HOLDOUT_SPLIT))
            ref = evidence.membership_auc(
                ref_forget, evidence.read_predictions(ref_dir, HOLDOUT_SPLIT)
            )
            out["mia_auc"] = own
            out["mia_loss"] = evidence.MIA_LOSS
            out["forget_privleak"] = metrics.privleak(own, ref)
        targets = self.scenario.get("target_items")
        if targets:
            test = evidence.read_predictions(run_dir, "test")
            out["target_p_yes"] = evidence.mean_p_yes_on_items(
                test, self.test_items.reindex(test["id"]).reset_index(drop=True), targets
            )
        return out

    @functools.cached_property
    def scenario(self) -> dict[str, Any]:
        """The prepared data's scenario (pollution, holdout), read once after it exists."""
        return read_json(self.data_dir / MANIFEST, "prepared-data manifest").get("scenario", {})

    @functools.cached_property
    def test_items(self):
        """Item id of each test row, by row id (read once, for target P(Yes))."""
        from e2urec.data.dataset import load_split

        return load_split(self.data_dir, "test").set_index("id")["item_id"]

    def report(self) -> BenchResult:
        """Write results.json/.csv/.md and the plots; return where they are."""
        from e2urec.report import forgetting, plots, tables

        polluted = self.scenario.get("pollute", "none")
        rows = forgetting.add_relative_metrics(self.rows(), recovery=polluted != "none")
        signal = forgetting.signal_check(rows, polluted=polluted)
        atomic_write_json(self.out / "results.json", rows)
        atomic_write_json(self.out / "signal.json", signal)
        files = {"results.json": self.out / "results.json", "signal.json": self.out / "signal.json"}
        files.update(tables.write_tables(rows, self.out, notes=forgetting.signal_text(signal)))
        summary = tables.summarise(rows)
        plot_dir = self.out / "plots"
        files["tradeoff.png"] = plots.plot_tradeoff(summary, plot_dir / "tradeoff.png")
        files["cost.png"] = plots.plot_cost(summary, plot_dir / "cost.png")
        if "e2urec" in self.methods:
            log = self.run_dir(f"e2urec-seed{self.config.seeds[0]}") / "log.jsonl"
            files["e2urec_training.png"] = plots.plot_training_curves(
                log, plot_dir / "e2urec_training.png"
            )
        return BenchResult(self.out, rows, files)


def bench(
    preset: str,
    out: str | Path,
    data_root: str | None = None,
    seeds: int | None = None,
    methods: list[str] | None = None,
    config_file: str | None = None,
    sets: list[str] | None = None,
) -> BenchResult:
    """Run (or continue) the experiment of `preset` into `out` and write its report."""
    config = presets.resolve(preset, config_file, sets)
    if seeds is not None:
        if seeds < 1:
            raise E2URecError(f"--seeds must be at least 1, got {seeds}")
        config.seeds = list(range(seeds))
    if methods:
        config.methods = methods
    out = Path(out)
    runner = Bench(config, out, data_root)
    runner.check()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(out / "config.resolved.yaml", {"preset": preset, **presets.as_dict(config)})
    runner.say(f"bench {preset}: {len(runner.plan())} steps into {out}")
    runner.execute()
    return runner.report()


def _unlearn_fields(method: str, values: dict[str, Any]) -> dict[str, Any]:
    """An ensemble method's preset settings that are its unlearning parameters; those that are
    only fields of its recipe (e.g. APA's lr, epochs, whole) train its original ensemble (see
    `plan`), and a name that is neither is one clear error."""
    from e2urec.methods import METHODS
    from e2urec.methods.ensemble import recipe_class

    own = settings_of(METHODS.get(method).params, values)
    unknown = sorted(set(values) - set(own) - set(settings_of(recipe_class(method), values)))
    if unknown:
        raise E2URecError(
            f"method_params.{method}: unknown setting(s) {', '.join(unknown)} (neither an "
            f"unlearning parameter of {method} nor a field of its training recipe)"
        )
    return own


def _check_variants(variants: Any, methods: list[str]) -> dict[str, dict[str, Any]]:
    """Preset `variants` (row name → {method, params}): named rows of a method run with other
    parameters, e.g. E2URec with each teacher; one clear error for a malformed entry."""
    if not isinstance(variants, dict):
        raise E2URecError("bench variants must map a row name to {method: NAME, params: {...}}")
    for name, spec in variants.items():
        if name in methods or name == RETRAIN:
            raise E2URecError(f"bench variant {name!r} clashes with a method name")
        if not isinstance(spec, dict) or spec.get("method") not in methods:
            raise E2URecError(f"bench variant {name!r} needs method: one of {', '.join(methods)}")
        unknown = set(spec) - {"method", "params"}
        if unknown or not isinstance(spec.get("params", {}), dict):
            raise E2URecError(f"bench variant {name!r} takes only method and params (a mapping)")
    return variants


def _seconds(cost: dict[str, Any]) -> float:
    """A run's time: compute seconds (checkpoint writes excluded; older runs: wall seconds)."""
    return cost.get("compute_s", cost["wall_s"])


def _cost(run: Path) -> dict[str, Any]:
    return read_json(run / MANIFEST, "run manifest").get("cost", {})


def _step_complete(out: Path) -> bool:
    if out.suffix == ".json":
        return out.is_file()
    manifest = out / MANIFEST
    if not manifest.is_file():
        return False
    try:
        content = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return bool(content.get("complete", True))


def _stamp_value(stamp: Path) -> str | None:
    try:
        return json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, json.JSONDecodeError):
        return None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"
