"""The "Add your own method" tutorial's file runs end to end on tiny data: unlearn and evaluate.

The example runs in its own process, as a reader would run it, so the method it registers never
enters this process's registry (the suite's tests iterate over every registered method).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import e2urec
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.synthetic import generate, write_ml1m
from e2urec.train.recipes import train

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "my_method.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Prepared synthetic data, a tiny Original and a tiny Retrain (2 steps each)."""
    root = tmp_path_factory.mktemp("example")
    write_ml1m(generate(n_users=40, n_items=60, n_ratings=1500, seed=0), root / "raw")
    prepare(
        PrepareConfig(
            dataset="synthetic",
            out=str(root / "data"),
            raw=str(root / "raw"),
            last_n=200,
            history_len=3,
            shards=2,
        )
    )
    for name, split in (("original", "train"), ("retrain", "retain")):
        train(root / "data", split, "t5-tiny", root / name, epochs=1, max_steps=2)
    return {"root": root, "data": root / "data"}


def run_example(*args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(e2urec.__file__).parents[1]),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, str(EXAMPLE), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_the_tutorial_method_unlearns_and_evaluates(tiny) -> None:
    root, data = tiny["root"], tiny["data"]
    out = root / "random-labels"
    done = run_example(
        "--from",
        str(root / "original"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--reference",
        str(root / "retrain"),
        "--set",
        "max_steps=2",
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "random-labels" and manifest["complete"]
    assert manifest["params"]["forget_weight"] == 1.0
    assert manifest["cost"]["optimizer_steps"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["splits"]["forget"]["distance"]["vocab"]["paper_jsd"] > 0
    assert "test: AUC" in done.stdout and "forget: AUC" in done.stdout


def test_the_tutorial_method_refuses_bad_settings_in_one_line(tiny) -> None:
    root = tiny["root"]
    out = root / "refused"
    done = run_example(
        "--from",
        str(root / "original"),
        "--data",
        str(tiny["data"]),
        "--out",
        str(out),
        "--set",
        "forget_weight=-1",
    )
    assert done.returncode == 2
    assert done.stderr.startswith("e2urec: error:") and len(done.stderr.splitlines()) == 1
    assert "forget_weight" in done.stderr and not out.exists()


def test_the_tutorial_page_includes_the_file() -> None:
    page = (REPO / "docs" / "add-a-method.md").read_text(encoding="utf-8")
    assert '--8<-- "examples/my_method.py:method"' in page


QUICKSTART = REPO / "examples" / "quickstart.py"


def test_the_quickstart_runs_the_experiment_and_a_deletion(tmp_path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(e2urec.__file__).parents[1]),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, str(QUICKSTART), "--out", str(tmp_path / "q"), "--steps", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "test: AUC" in done.stdout and "forget: AUC" in done.stdout
    assert ": done" in done.stdout and "audit: 0 traces" in done.stdout
    assert " forget " in done.stdout  # the ledger's entry of the deletion


def test_getting_started_includes_the_quickstart() -> None:
    page = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    assert '--8<-- "examples/quickstart.py"' in page
