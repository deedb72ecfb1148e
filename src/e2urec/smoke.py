"""`e2urec bench --preset P --smoke`: every step of a preset whose backbone is a pretrained model,
at that model's own geometry, in minutes on a CPU.

The backbone is built from the architecture shipped for it (`backbones.families.GEOMETRIES`:
T5-base, Qwen2.5-0.5B with 2 of its 24 layers) with random weights, so there is no hub access;
the data are synthetic ratings written in the MovieLens-1M format and read by the `ml-1m`
reader. Every step of the preset's plan runs (data, Original, Retrain, the ensembles, every
method, evaluation, tables) with SMOKE_STEPS optimizer steps of SMOKE_BATCH rows per trained
phase and the preset's first seed. The report (OUT/smoke.json, OUT/smoke.md) gives each step's
seconds and the peak memory so far, the measured seconds per optimizer step and per scored row,
and a projection of the full preset from its step counts: on this machine (measured seconds per
row × the full preset's rows) and on a GPU (6·N·T training and 2·N·T scoring FLOPs per row for a
model of N parameters and T tokens per row, at an assumed sustained `gpu_tflops`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from e2urec import presets
from e2urec.artifacts import atomic_write_json, atomic_write_text
from e2urec.bench import ENSEMBLE_METHODS, Bench
from e2urec.errors import E2URecError

SMOKE_STEPS = 2  # optimizer steps per trained phase
SMOKE_BATCH = 2  # rows per step
SMOKE_LAST_N = 60  # samples prepared: 36 train, 12 valid, 12 test
SMOKE_RATINGS = {"n_users": 200, "n_items": 150, "n_ratings": 3000, "seed": 0}
SMOKE_NEIGHBOURS = 4  # APA's validation neighbours: the smoke's valid split is 12 rows
SMOKE_LAYERS = {"causal-config": 2}  # decoders keep their width and vocabulary, fewer layers
GPU_TFLOPS = 100.0  # assumed sustained bf16 throughput of one data-centre GPU on these batches
TRAINED_PHASES = ("train", "unlearn", "student", "augmented_model", "control_model")


def smoke_spec(backbone: str, preset: str) -> str:
    """The smoke's backbone spec for a preset's backbone, or one clear error."""
    from e2urec.backbones.families import HUB_GEOMETRIES

    spec = HUB_GEOMETRIES.get(backbone)
    if spec is None:
        known = ", ".join(sorted({k.partition(":")[2] for k in HUB_GEOMETRIES}))
        raise E2URecError(
            f"--smoke needs a preset whose backbone has a model config shipped with e2urec "
            f"({known}); preset {preset!r} trains {backbone!r}"
        )
    family = spec.partition(":")[0]
    return f"{spec}@{SMOKE_LAYERS[family]}" if family in SMOKE_LAYERS else spec


def smoke_config(config: presets.BenchConfig, preset: str) -> presets.BenchConfig:
    """The preset shrunk to a smoke run: geometry backbone, synthetic ML-1M data, first seed,
    SMOKE_STEPS steps of SMOKE_BATCH rows everywhere; the methods train at `train.precision`."""
    from e2urec.methods import METHODS, TrainParams

    smoke = copy.deepcopy(config)
    smoke.data = dataclasses.replace(
        config.data, dataset="ml-1m", fetch=False, fallback_dataset="", last_n=SMOKE_LAST_N
    )
    smoke.train = dataclasses.replace(
        config.train,
        backbone=smoke_spec(config.train.backbone, preset),
        epochs=1,
        max_steps=SMOKE_STEPS,
        batch_size=SMOKE_BATCH,
    )
    smoke.seeds = config.seeds[:1]
    params = {}
    for name in METHODS.names():
        values = dict(config.method_params.get(name) or {})
        if issubclass(METHODS.get(name).params, TrainParams):
            values.update(max_steps=SMOKE_STEPS, batch_size=SMOKE_BATCH)
            values["precision"] = config.train.precision
        if "neighbours" in {f.name for f in dataclasses.fields(METHODS.get(name).params)}:
            values["neighbours"] = SMOKE_NEIGHBOURS
        params[name] = values
    smoke.method_params = params
    return smoke


class _TimedBench(Bench):
    """The bench with every step timed and the peak memory after each recorded."""

    timings: list[dict[str, Any]]

    def plan(self) -> list[Any]:
        steps = super().plan()
        self.timings = []
        for step in steps:
            step.action = self._timed(step.name, step.action)
        return steps

    def _timed(self, name: str, action: Any) -> Any:
        def run() -> Any:
            from e2urec.train.cost import peak_memory_mb

            began = time.perf_counter()
            result = action()
            memory, kind = peak_memory_mb()
            self.timings.append(
                {
                    "step": name,
                    "seconds": round(time.perf_counter() - began, 2),
                    "peak_memory_mb": round(memory, 1),
                    "memory_kind": kind,
                }
            )
            return result

        return run


def smoke(
    preset: str,
    out: str | Path,
    config_file: str | None = None,
    sets: list[str] | None = None,
    methods: list[str] | None = None,
    gpu_tflops: float = GPU_TFLOPS,
) -> dict[str, Any]:
    """Run the smoke of `preset` into `out` (see the module docstring; `methods`: a subset of
    the preset's); returns the report."""
    from e2urec.data.synthetic import generate, write_ml1m

    config = smoke_config(presets.resolve(preset, config_file, sets), preset)
    if methods:
        config.methods = methods
    out = Path(out)
    bench = _TimedBench(config, out / "bench", str(out / "raw"))
    bench.check()
    began = time.perf_counter()
    write_ml1m(generate(**SMOKE_RATINGS), out / "raw" / "ml-1m")
    bench.out.mkdir(parents=True, exist_ok=True)
    bench.say(f"smoke {preset}: {len(bench.plan())} steps into {bench.out}")
    bench.execute()
    bench.report()
    report = {
        "preset": preset,
        "backbone": config.train.backbone,
        "precision": config.train.precision,
        "steps_per_phase": SMOKE_STEPS,
        "batch_size": SMOKE_BATCH,
        "seeds": config.seeds,
        "total_s": round(time.perf_counter() - began, 1),
        "steps": bench.timings,
        **measure(bench),
    }
    report["projection"] = project(presets.resolve(preset, config_file, sets), report, gpu_tflops)
    atomic_write_json(out / "smoke.json", report)
    atomic_write_text(out / "smoke.md", render(report))
    return report


def _step_seconds(run: Path) -> list[float]:
    """Seconds of every optimizer step in a run's log (elapsed differences per phase)."""
    seconds, last = [], {}
    log = run / "log.jsonl"
    if not log.is_file():
        return []
    for line in log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("event") == "step" and record.get("phase") in TRAINED_PHASES:
            phase = record["phase"]
            seconds.append(record["elapsed_s"] - last.get(phase, 0.0))
            last[phase] = record["elapsed_s"]
    return seconds


def measure(bench: _TimedBench) -> dict[str, Any]:
    """Seconds per optimizer step (median over every trained phase, first steps included),
    seconds per scored row, tokens per row and the model's size, from the smoke's runs."""
    from e2urec.backbones import create_recommender
    from e2urec.backbones.base import keeps_logits
    from e2urec.data.dataset import load_split
    from e2urec.train.recipes import tokenizer_corpus

    runs = sorted(p for p in (bench.out / "runs").glob("**/log.jsonl"))
    steps = [s for log in runs for s in _step_seconds(log.parent)]
    evals = [t for t in bench.timings if t["step"].startswith("evaluate")]
    rows = sum(len(load_split(bench.data_dir, s)) for s in bench.eval_splits)
    scored = sum(rows * _members(bench, t["step"]) for t in evals)
    rec = create_recommender(bench.config.train.backbone, tokenizer_corpus(bench.data_dir), 0)
    train = load_split(bench.data_dir, "train")
    lengths = [len(ids) + 3 for ids in rec.encode_prompts(list(train["prompt"]))]
    return {
        "seconds_per_step": round(statistics.median(steps), 3) if steps else None,
        "optimizer_steps_timed": len(steps),
        "seconds_per_scored_row": round(sum(t["seconds"] for t in evals) / scored, 3)
        if scored
        else None,
        "tokens_per_row": round(statistics.mean(lengths), 1),
        "smoke_params": sum(p.numel() for p in rec.model.parameters()),
        "full_params": full_parameters(bench.config.train.backbone),
        "peak_memory_mb": max(t["peak_memory_mb"] for t in bench.timings),
        "answer_only_head": rec.kind == "causal" and keeps_logits(rec.model),
        "answer_logits_shape": answer_shape(rec, train.head(SMOKE_BATCH).to_dict("records")),
    }


def answer_shape(rec: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Shape of the logits the scorer gets for a smoke batch: [B, answer tokens, vocabulary]."""
    import torch

    with torch.no_grad():
        return list(rec.target_logits(rec.collate(rows), rec.model.eval())[0].shape)


def _members(bench: Bench, step: str) -> int:
    name = step.split()[1]
    ensemble = any(name.startswith(f"{m}-") for m in ENSEMBLE_METHODS)
    return bench.config.data.shards if ensemble else 1


def full_parameters(spec: str) -> int:
    """Parameters of the full pretrained architecture (all layers), counted on the meta device."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, T5Config, T5ForConditionalGeneration

    from e2urec.backbones.families import geometry

    family, _, arg = spec.partition(":")
    kind = "seq2seq" if family == "t5-config" else "causal"
    arch, values = geometry(arg.partition("@")[0], kind)
    config_cls, model_cls = (
        (T5Config, T5ForConditionalGeneration) if arch == "t5" else (Qwen2Config, Qwen2ForCausalLM)
    )
    with torch.device("meta"):
        model = model_cls(config_cls(**values))
    return sum(p.numel() for p in model.parameters())


def full_rows(config: presets.BenchConfig) -> dict[str, float]:
    """Approximate rows of the full preset's splits (60/20/20; forget = forget_ratio of train)."""
    n = config.data.last_n
    train = 0.6 * n
    forget = config.data.forget_ratio * train
    return {"train": train, "valid": 0.2 * n, "test": 0.2 * n, "forget": forget,
            "retain": train - forget}  # fmt: skip


def influence_rows(
    config: presets.BenchConfig,
    rows: dict[str, float],
    seeds: int,
    trained: dict[str, float],
    scored: dict[str, float],
) -> None:
    """Add influence's rows to `trained` (one forward and backward pass each: the forget rows,
    the curvature's two passes over its rows, ḡ's rows) and to `scored` (the step search)."""
    from e2urec.methods import METHODS

    values = dataclasses.asdict(METHODS.get("influence").params())
    values.update(config.method_params.get("influence") or {})
    per_seed = rows["forget"] + 2 * values["curvature_rows"]
    per_seed += min(values["center_rows"], rows["retain"])
    trained[f"influence × {seeds} seeds (forget rows + curvature + ḡ, one pass each)"] = (
        per_seed * seeds
    )
    if values["search"] == "valid":
        scored[f"influence's step search × {seeds} seeds"] = (
            values["search_rows"] * values["search_steps"] * seeds
        )


def project(config: presets.BenchConfig, report: dict[str, Any], tflops: float) -> dict[str, Any]:
    """The full preset's rows per phase, and their time on this machine and on a GPU."""
    from e2urec.methods import METHODS, TrainParams

    rows, seeds, t = full_rows(config), len(config.seeds), config.train
    every = f"per epoch, ≤ {t.epochs} with early stopping"
    trained: dict[str, float] = {  # supervised fits: one epoch each (their epoch count varies)
        f"Original ({every})": rows["train"],
        f"Retrain × {seeds} seeds ({every})": rows["retain"] * seeds,
    }
    scored: dict[str, float] = {f"validation ({every})": rows["valid"] * (1 + seeds)}
    for name in ENSEMBLE_METHODS:  # the original ensemble, then every shard retrained per seed
        trained[f"{name} original + unlearn × {seeds} seeds ({every})"] = rows["train"] * (
            1 + seeds
        )
    for name in METHODS.names():
        spec = METHODS.get(name)
        if name in ENSEMBLE_METHODS or not issubclass(spec.params, TrainParams):
            continue
        values = {**dataclasses.asdict(spec.params()), **(config.method_params.get(name) or {})}
        passes = values.get("epochs", 1) + values.get("aug_epochs", 0) * (name == "e2urec")
        trained[f"{name} × {seeds} seeds ({passes} forget passes)"] = (
            rows["forget"] * passes * seeds
        )
    if "influence" in METHODS.names():
        influence_rows(config, rows, seeds, trained, scored)
    runs = 1 + seeds * (1 + len(METHODS.names()) + (config.data.shards - 1) * 2)
    scored["evaluation (test + forget) × runs"] = (rows["test"] + rows["forget"]) * runs
    n, tokens = report["full_params"], report["tokens_per_row"]
    per_row_train = (report["seconds_per_step"] or 0.0) / report["batch_size"]
    per_row_score = report["seconds_per_scored_row"] or 0.0
    scale = n / report["smoke_params"]  # the smoke's model may have fewer layers than the full one
    phases = []
    for label, count, flops, cpu in [
        *((k, v, 6, per_row_train) for k, v in trained.items()),
        *((k, v, 2, per_row_score) for k, v in scored.items()),
    ]:
        phases.append(
            {
                "phase": label,
                "rows": round(count),
                "cpu_hours": round(count * cpu * scale / 3600, 1),
                "gpu_hours": round(count * flops * n * tokens / (tflops * 1e12) / 3600, 2),
            }
        )
    return {
        "assumptions": (
            f"rows from last_n {config.data.last_n} (60/20/20, forget {config.data.forget_ratio} "
            f"of train); supervised fits count one epoch (multiply by the epochs early stopping "
            f"takes), the methods their whole budget; CPU hours = "
            f"rows × the smoke's seconds per row × (full / smoke parameters); GPU hours = 6·N·T "
            f"(training) or 2·N·T (scoring) FLOPs per row, N = {n:,} parameters, T = {tokens} "
            f"tokens per row (the smoke tokenizer's; a real tokenizer gives more), at an "
            f"assumed {tflops:g} TFLOP/s sustained"
        ),
        "phases": phases,
        "cpu_hours": round(sum(p["cpu_hours"] for p in phases), 1),
        "gpu_hours": round(sum(p["gpu_hours"] for p in phases), 2),
    }


def render(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    lines = [
        f"# Smoke of {report['preset']}: {report['backbone']} ({report['precision']})",
        "",
        f"{len(report['steps'])} steps in {report['total_s']:.0f} s; {report['steps_per_phase']} "
        f"optimizer steps of {report['batch_size']} rows per trained phase; seeds "
        f"{report['seeds']}. Median {report['seconds_per_step']} s per optimizer step "
        f"({report['optimizer_steps_timed']} timed), {report['seconds_per_scored_row']} s per "
        f"scored row, {report['tokens_per_row']} tokens per row; model "
        f"{report['smoke_params']:,} parameters (full architecture {report['full_params']:,}); "
        f"peak memory {report['peak_memory_mb']:,.0f} MB. Answer-only LM head: "
        f"{report['answer_only_head']} (scored logits {report['answer_logits_shape']}).",
        "",
        "| step | seconds | peak memory so far (MB) |",
        "|---|---:|---:|",
        *(
            f"| {t['step']} | {t['seconds']} | {t['peak_memory_mb']:,.0f} |"
            for t in report["steps"]
        ),
        "",
        "## Projection of the full preset",
        "",
        report["projection"]["assumptions"] + ".",
        "",
        "| phase | rows | CPU hours (this machine) | GPU hours |",
        "|---|---:|---:|---:|",
        *(
            f"| {p['phase']} | {p['rows']:,} | {p['cpu_hours']} | {p['gpu_hours']} |"
            for p in report["projection"]["phases"]
        ),
        f"| total | | {report['projection']['cpu_hours']} | {report['projection']['gpu_hours']} |",
    ]
    return "\n".join(lines) + "\n"
