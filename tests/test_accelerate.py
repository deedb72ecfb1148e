"""`e2urec train` as a 2-process CPU job under `accelerate launch` (gloo process group).

accelerate's `--cpu --num_processes 2` starts several processes only through mpirun; the
launcher used here is `--multi_gpu` (torchrun) with ACCELERATE_USE_CPU set and no GPU visible,
which `e2urec.train.runner.use_cpu` turns into a multi-CPU process group.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from e2urec import api
from e2urec.data.dataset import load_split
from e2urec.data.prepare import PrepareConfig
from e2urec.runs import load_run_model, read_run_manifest

ACCELERATE = Path(sys.executable).parent / "accelerate"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not ACCELERATE.is_file(), reason="accelerate launcher not installed")
def test_two_process_cpu_training(tmp_path: Path) -> None:
    data = tmp_path / "data"
    api.prepare(PrepareConfig(dataset="synthetic", out=str(data), last_n=160))
    run = tmp_path / "run"
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        str(ACCELERATE),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "e2urec",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--max-length",
        "96",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained ") == 1  # only the main process reports
    manifest = read_run_manifest(run)
    assert manifest["processes"] == 2
    batches = -(-len(load_split(data, "train")) // 16)
    assert manifest["fit"]["steps"] == 2 * -(-batches // 2)  # per process: half the batches
    model = load_run_model(run)
    batch = model.recommender.collate([{"prompt": "a b c", "target": "Yes."}])
    assert model.answer_logits(batch).shape[0] == 1
