"""Training and evaluation throughput of the tiny backbones on MovieLens-100K prompts.

Prepares a small ml-100k folder in a temp dir (the paper's protocol, last --last-n samples),
then for each backbone prints the prompt token-length distribution, training samples/second
(`fit` with the supervised task, --steps optimizer steps after one warm-up step) and evaluation
samples/second (`evaluate_ce`, no grad). Runs on CUDA when available, else CPU.

    .venv/bin/python benchmarks/bench_train.py [--raw ../shared/data/ml-100k] [--last-n 2000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from e2urec import api
from e2urec.backbones import create_recommender
from e2urec.data.dataset import load_split
from e2urec.data.prepare import PrepareConfig
from e2urec.train.loop import LoopConfig, fit
from e2urec.train.losses import evaluate_ce
from e2urec.train.recipes import SupervisedTask, quiet_transformers

DEFAULT_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench(backbone: str, data: Path, args: argparse.Namespace, device: torch.device) -> None:
    splits = {s: load_split(data, s).to_dict("records") for s in ("train", "valid", "test")}
    corpus = [t for rows in splits.values() for r in rows for t in (r["prompt"], r["target"])]
    rec = create_recommender(backbone, corpus, seed=0, max_length=args.max_length)
    lengths = [
        len(ids) for ids in rec.tokenizer([r["prompt"] for r in splits["train"]])["input_ids"]
    ]
    print(
        f"{backbone}: prompt tokens min {min(lengths)} median {statistics.median(lengths):.0f} "
        f"p95 {percentile(lengths, 0.95)} max {max(lengths)} "
        f"(cut at {args.max_length}); params {sum(p.numel() for p in rec.model.parameters()):,}"
    )
    task = SupervisedTask(rec, splits["train"])
    with tempfile.TemporaryDirectory() as run:
        fit(
            rec, rec.model, task, LoopConfig(epochs=1, max_steps=1, batch_size=args.batch_size), run
        )
    with tempfile.TemporaryDirectory() as run:
        cfg = LoopConfig(epochs=100, max_steps=args.steps, batch_size=args.batch_size)
        begin = time.perf_counter()
        result = fit(rec, rec.model, task, cfg, run)
        seconds = time.perf_counter() - begin
    print(
        f"  train: {result.samples / seconds:8.1f} samples/s "
        f"({result.steps} steps x {args.batch_size}, {seconds:.2f} s)"
    )
    rows = splits["valid"] + splits["test"]
    model = rec.model.eval()
    evaluate_ce(rec, model, rows[: args.eval_batch_size], args.eval_batch_size)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    begin = time.perf_counter()
    evaluate_ce(rec, model, rows, args.eval_batch_size)
    seconds = time.perf_counter() - begin
    print(
        f"  eval:  {len(rows) / seconds:8.1f} samples/s "
        f"({len(rows)} rows, batch {args.eval_batch_size}, {seconds:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default=str(DEFAULT_RAW), help="ml-100k folder")
    parser.add_argument("--last-n", type=int, default=2000, help="samples to prepare")
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--backbones", default="t5-tiny,causal-tiny")
    args = parser.parse_args()
    quiet_transformers()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch threads {torch.get_num_threads()}, ml-100k last {args.last_n}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ml-100k"
        api.prepare(
            PrepareConfig(dataset="ml-100k", raw=args.raw, out=str(data), last_n=args.last_n)
        )
        for backbone in args.backbones.split(","):
            bench(backbone.strip(), data, args, device)


if __name__ == "__main__":
    main()
