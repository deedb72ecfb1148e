"""Time one E2URec training step with cached teachers vs recomputing both teachers every step.

Same student, same forget and retain batches (synthetic MovieLens-style prompts). Both kinds of
step are timed: a full step (epoch ≥ 1: forget distillation + retain CE + retain distillation)
and a first-epoch step (forget distillation only). Cached: teacher outputs were computed
beforehand (as `TeacherCache` does once per row); recomputed: the original and augmented models
run at every step, as the paper's code does. Prints ms/step and the ratios (target ≤ 0.6).
Steady state only: filling the cache costs one teacher pass per row, so a run gains only from
rows seen more than once (in the default two-epoch schedule, the forget rows).

    python benchmarks/bench_e2urec_step.py [--d-model 256 --layers 4 --steps 8 --batch 16]
    python benchmarks/bench_e2urec_step.py --d-model 768 --layers 12   # T5-base geometry
    python benchmarks/bench_e2urec_step.py --without-dropout   # isolates CPU dropout's cost
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from e2urec.backbones import create_recommender
from e2urec.data.dataset import load_split
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.synthetic import generate, write_ml1m
from e2urec.eval.scoring import to_device
from e2urec.methods.e2urec import E2URecParams, E2URecTask, Teachers, add_lora


def data_rows(folder: Path) -> tuple[list[dict], list[dict], list[str]]:
    write_ml1m(generate(n_users=200, n_items=300, n_ratings=8000, seed=0), folder / "raw")
    config = PrepareConfig(dataset="synthetic", out=str(folder / "data"), raw=str(folder / "raw"))
    prepare(config)
    forget = load_split(folder / "data", "forget").to_dict("records")
    retain = load_split(folder / "data", "retain").to_dict("records")
    corpus = [t for r in forget + retain for t in (r["prompt"], r["target"])]
    return forget, retain, corpus


def time_steps(tasks: dict, student, batches, steps: int, epoch: int) -> dict:
    """Seconds per step of each task, measured interleaved (one step of each in turn) so that
    load from other processes affects both alike; one untimed pass over the batches first.
    On a GPU each step is timed to completion (synchronized)."""
    device = batches[0]["forget"]["input_ids"].device

    def finished() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-3)
    student.train()
    seconds = dict.fromkeys(tasks, 0.0)
    for i in range(steps + len(batches)):
        for name, task in tasks.items():
            began = finished()
            loss, _ = task.loss(student, batches[i % len(batches)], epoch=epoch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= len(batches):  # after the warm-up pass the cache holds every row
                seconds[name] += finished() - began
    return {name: total / steps for name, total in seconds.items()}


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)"
    )
    parser.add_argument(
        "--without-dropout",
        action="store_true",
        help="zero the T5 and LoRA dropout (isolates PyTorch's slow CPU dropout kernel, which "
        "only the student pays, from the teachers' share of the step)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the models run (default: cuda when available)",
    )
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        forget, retain, corpus = data_rows(Path(tmp))
    recommender = create_recommender("t5-tiny", corpus, seed=0)
    tiny = recommender.model.config
    config = T5Config(
        **{
            **tiny.to_dict(),
            "d_model": args.d_model,
            "d_ff": 4 * args.d_model,
            "d_kv": 64,
            "num_heads": args.d_model // 64,
            "num_layers": args.layers,
            "num_decoder_layers": args.layers,
            **({"dropout_rate": 0.0} if args.without_dropout else {}),
        }
    )
    recommender.model = T5ForConditionalGeneration(config)
    recommender.model.to(device)
    augmented = copy.deepcopy(recommender.model).eval()
    params = E2URecParams(lora_dropout=0.0) if args.without_dropout else E2URecParams()
    student = add_lora(recommender, params)
    teachers = Teachers(recommender, student, augmented, alpha=2.0)
    batches = []
    for i in range(4):
        part = slice(i * args.batch, (i + 1) * args.batch)
        step = {}
        for name, rows in (("forget", forget), ("retain", retain)):
            batch = recommender.collate(rows[part])
            batch["index"] = torch.arange(part.start, part.start + len(rows[part]))
            step[name] = to_device(batch, device)
        batches.append(step)
    tasks = {
        cache: E2URecTask(recommender, forget, retain, teachers, E2URecParams(cache_teachers=cache))
        for cache in (True, False)
    }
    full = time_steps(tasks, student, batches, args.steps, epoch=1)
    forget_only = time_steps(tasks, student, batches, args.steps, epoch=0)
    total = sum(p.numel() for p in student.parameters())
    print(
        f"model: T5 d_model {args.d_model}, {args.layers}+{args.layers} layers, "
        f"{total / 1e6:.1f}M params, vocab {config.vocab_size}; batch {args.batch}+{args.batch}; "
        + (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"{torch.get_num_threads()} CPU threads"
        )
    )
    for name, results in (("full step", full), ("forget-only step", forget_only)):
        print(
            f"{name:17s} cached {1000 * results[True]:7.1f} ms, recomputed "
            f"{1000 * results[False]:7.1f} ms: ratio {results[True] / results[False]:.3f} "
            "(target <= 0.6)"
        )
    if args.json:
        record = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "d_model": args.d_model,
            "layers": args.layers,
            "params": total,
            "batch": args.batch,
            **{
                name: {"cached_ms": 1000 * r[True], "recomputed_ms": 1000 * r[False],
                       "ratio": r[True] / r[False]}
                for name, r in (("full_step", full), ("forget_only_step", forget_only))
            },
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
