"""`e2urec bench`: the whole plan on a tiny synthetic setting, reuse on rerun, and bad input."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from e2urec import api, cli
from e2urec.report.tables import NOISE_FLOOR, ORIGINAL, RETRAIN

METHODS = ["e2urec", "neggrad", "sisa"]
TINY = [
    "data.last_n=600",
    "data.history_len=3",
    "data.shards=2",
    "train.epochs=1",
    "train.max_steps=2",
    "train.max_length=96",
    "method_params={e2urec: {epochs: 1, aug_epochs: 1, max_steps: 2}, neggrad: {max_steps: 2}}",
    "variants={e2urec-label: {method: e2urec, params: {teacher: label}}}",
]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, str]:
    """One tiny bench: demo preset, no ml-100k anywhere → the synthetic fallback, 2 seeds."""
    root = tmp_path_factory.mktemp("bench")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("E2UREC_CACHE", str(root / "cache"))
    capture = root / "stderr.txt"
    with capture.open("w") as handle, contextlib.redirect_stderr(handle):
        result = api.bench(
            "demo", root / "out", data_root=str(root), seeds=2, methods=METHODS, sets=TINY
        )
    monkeypatch.undo()
    return root / "out", result, capture.read_text()


def test_bench_writes_results_for_every_method_and_seed(bench_run) -> None:
    out, result, log = bench_run
    assert "using the synthetic dataset instead" in log
    rows = json.loads((out / "results.json").read_text())
    seen = {(row["method"], row["seed"]) for row in rows}
    for seed in (0, 1):
        for method in (ORIGINAL, RETRAIN, *METHODS, "e2urec-label"):
            assert (method, seed) in seen
    variant = json.loads((out / "runs" / "e2urec-label-seed0" / "manifest.json").read_text())
    assert variant["method"] == "e2urec" and variant["params"]["teacher"] == "label"
    for row in rows:  # the demo holds out users: every model gets membership evidence
        if row["method"] in (ORIGINAL, *METHODS):
            assert 0 <= row["forget_quality"] <= 1 and 0 <= row["mia_auc"] <= 1
            assert row["forget_residual_jsd"] >= 0 and "forget_privleak" in row
    assert next(r for r in rows if r["method"] == ORIGINAL)["forget_residual_jsd"] == 1.0
    signal = json.loads((out / "signal.json").read_text())
    assert signal["clear"] in (True, False) and len(signal["seeds"]) == 2
    assert "Signal check" in (out / "results.md").read_text()
    for row in rows:
        if row["method"] in (ORIGINAL, *METHODS):
            assert 0 <= row["test_auc"] <= 1 and row["forget_paper_jsd"] >= 0
            assert row["time_ratio"] > 0 and row["trainable_params"] > 0
    floor = [row for row in rows if row["method"] == NOISE_FLOOR]
    assert len(floor) == 1  # two seeds make one pair; the distances are symmetric
    assert all(row["forget_paper_jsd"] > 0 for row in floor)  # seeds differ in data order
    table = (out / "results.md").read_text()
    assert "noise floor" in table and "e2urec" in table and "time ÷ Retrain" in table
    for name in ("tradeoff.png", "cost.png", "e2urec_training.png"):
        assert result.files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_reuses_every_step_and_a_changed_method_reruns_alone(bench_run, capsys) -> None:
    out, _, _ = bench_run
    before = (out / "results.json").read_text()
    api.bench("demo", out, data_root=str(out.parent), seeds=2, methods=METHODS, sets=TINY)
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("[")]
    assert steps and all(line.endswith(": reused") for line in steps)
    assert json.loads((out / "results.json").read_text()) == json.loads(before)

    changed = [t.replace("neggrad: {max_steps: 2}", "neggrad: {max_steps: 1}") for t in TINY]
    api.bench("demo", out, data_root=str(out.parent), seeds=2, methods=METHODS, sets=changed)
    err = capsys.readouterr().err
    redone = {line.split("] ")[1][:-4] for line in err.splitlines() if line.endswith(" ...")}
    assert redone == {
        "unlearn neggrad (seed 0)",
        "unlearn neggrad (seed 1)",
        "evaluate neggrad-seed0 against retrain-seed0",
        "evaluate neggrad-seed1 against retrain-seed1",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--preset", "demo", "--methods", "e2urec,nope"], "unknown method 'nope'"),
        (["--preset", "demo", "--seeds", "0"], "--seeds must be at least 1"),
        (["--preset", "demo", "--set", "train.epochz=2"], "unknown bench train parameter"),
        (["--preset", "demo", "--set", "variants={x: {method: nope}}"], "variant 'x' needs"),
        (["--preset", "demo", "--set", "variants={sisa: {method: e2urec}}"], "clashes"),
        (
            ["--preset", "demo", "--set", "variants={x: {method: e2urec, params: {teacher: z}}}"],
            "unknown e2urec teacher 'z'",
        ),
        (["--preset", "demo", "--set", "data.pollute=poison"], "data.pollute must be one of none"),
    ],
)
def test_bad_bench_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert cli.main(["bench", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("methods", "expected"),
    [
        ("all", None),  # every method and every variant
        (["neggrad"], ["neggrad"]),
        (
            ["e2urec"],
            ["e2urec", "e2urec-contrastive", "e2urec-label", "e2urec-label-a4", "e2urec-holdout"],
        ),
        (["neggrad", "e2urec-label"], ["neggrad", "e2urec-label"]),
    ],
)
def test_methods_select_variants_by_name_or_by_their_method(tmp_path, methods, expected) -> None:
    from e2urec import presets
    from e2urec.bench import Bench
    from e2urec.methods import METHODS

    config = presets.resolve("cpu-ml100k-flip")
    config.methods = methods
    chosen = Bench(config, tmp_path / "out", None).methods
    if expected is None:
        # a tiny backbone: methods that need a pretrained base (APA) are left out of "all"
        scratch = {m for m in METHODS.names() if not METHODS.get(m).needs_pretrained}
        assert set(chosen) == scratch - {RETRAIN} | set(config.variants)
    else:
        assert chosen == expected


def test_floor_seeds_add_a_second_retrain_for_the_noise_floor_only(tmp_path, monkeypatch) -> None:
    """One seed of every method plus a floor-only Retrain: one Original row, two Retrain rows,
    one noise-floor row against the methods' Retrain (so it has a residual), full evidence."""
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path / "cache"))
    sets = [*TINY[:6], "method_params={neggrad: {max_steps: 2}}", "seeds=[0]", "floor_seeds=[1]"]
    result = api.bench(
        "demo", tmp_path / "out", data_root=str(tmp_path), methods=["neggrad"], sets=sets
    )
    rows = result.rows
    assert [(r["method"], r["seed"]) for r in rows if r["method"] != RETRAIN] == [
        (ORIGINAL, 0),
        ("neggrad", 0),
        (NOISE_FLOOR, 1),
    ]
    assert sorted(r["seed"] for r in rows if r["method"] == RETRAIN) == [0, 1]
    assert not (tmp_path / "out" / "runs" / "neggrad-seed1").exists()
    floor = next(r for r in rows if r["method"] == NOISE_FLOOR)
    assert floor["reference"].endswith("retrain-seed0") and floor["forget_residual_jsd"] >= 0
    neggrad = next(r for r in rows if r["method"] == "neggrad")
    assert 0 <= neggrad["forget_quality"] <= 1 and "forget_privleak" in neggrad
    signal = json.loads((tmp_path / "out" / "signal.json").read_text())
    assert signal["floor"] == floor["forget_paper_jsd"] and len(signal["seeds"]) == 1


def test_floor_seeds_must_be_a_list_of_integers(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["bench", "--preset", "demo", "--out", str(out), "--set", "floor_seeds=[a]"]
    assert cli.main(args) == 2
    assert "bench floor_seeds must be a list of integers" in capsys.readouterr().err
    assert not out.exists()


def test_an_ensemble_methods_recipe_fields_reach_its_original_ensemble(tmp_path) -> None:
    """Preset settings of an ensemble method that are recipe fields (APA's neighbours, tau)
    train its original ensemble; the smoke uses this to fit APA to its dozen valid rows."""
    from e2urec import presets
    from e2urec.bench import Bench

    config = presets.resolve("cpu-ml100k-minilm")
    config.methods = ["apa", "sisa"]
    config.method_params["apa"] = {"neighbours": 3, "tau": 10.0}
    steps = {s.name: s for s in Bench(config, tmp_path / "out", None).plan()}
    apa = steps["train apa original ensemble"].key
    assert apa["neighbours"] == 3 and apa["tau"] == 10.0
    assert "neighbours" not in steps["train sisa original ensemble"].key
