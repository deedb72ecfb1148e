"""`e2urec bench --smoke`: every step of a pretrained-backbone preset at its model's geometry
(shrunk here to tiny widths so the test takes seconds), the report, and bad input."""

from __future__ import annotations

import json

import pytest

from e2urec import cli
from e2urec.backbones import create_recommender, families

TINY = {
    "t5-test": ("t5", {"vocab_size": 512, "d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4,
                       "num_layers": 1, "num_decoder_layers": 1}),
    "qwen-test": ("qwen2", {"vocab_size": 151936, "hidden_size": 32, "intermediate_size": 64,
                            "num_hidden_layers": 4, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "tie_word_embeddings": True}),
}  # fmt: skip


@pytest.fixture
def tiny_geometries(monkeypatch):
    """The presets' backbones mapped to tiny architectures of the same families."""
    for name, value in TINY.items():
        monkeypatch.setitem(families.GEOMETRIES, name, value)
    monkeypatch.setitem(families.HUB_GEOMETRIES, "t5:google-t5/t5-base", "t5-config:t5-test")
    monkeypatch.setitem(
        families.HUB_GEOMETRIES, "causal:Qwen/Qwen2.5-0.5B", "causal-config:qwen-test"
    )


def test_geometry_families_build_the_shipped_architectures() -> None:
    corpus = ["The user liked Heat (5 stars).", "Yes.", "No."]
    rec = create_recommender("t5-config:t5-base@1", corpus, seed=0)
    config = rec.model.config
    assert (config.d_model, config.d_ff, config.num_heads, config.vocab_size) == (
        768, 3072, 12, 32128,
    )  # fmt: skip
    assert config.num_layers == config.num_decoder_layers == 1
    from e2urec.smoke import full_parameters

    assert full_parameters("t5-config:t5-base@1") == 222_903_552  # T5-base, all 12+12 layers
    assert full_parameters("causal-config:qwen2.5-0.5b@2") == 494_032_768  # Qwen2.5-0.5B


@pytest.mark.parametrize(
    "preset, precision, causal",
    [("paper-ml1m-t5base", "fp32", False), ("ml1m-qwen2.5-0.5b", "bf16", True)],
)
def test_smoke_runs_every_step_and_reports(
    tiny_geometries, tmp_path, capsys, preset, precision, causal
):
    out = tmp_path / "smoke"
    args = ["bench", "--preset", preset, "--smoke", "--out", str(out)]
    assert cli.main([*args, "--methods", "neggrad,sisa"]) == 0
    report = json.loads((out / "smoke.json").read_text())
    steps = [t["step"] for t in report["steps"]]
    assert steps[:3] == ["prepare data", "train original", "train retrain-seed0"]
    assert "unlearn neggrad (seed 0)" in steps and "unlearn sisa (seed 0)" in steps
    assert sum(s.startswith("evaluate") for s in steps) == 3
    assert report["precision"] == precision and report["seeds"] == [0]
    assert report["optimizer_steps_timed"] >= 2 and report["seconds_per_step"] > 0
    assert report["answer_only_head"] is causal
    if causal:  # the head runs on the answer positions of the 151,936-token vocabulary
        assert report["answer_logits_shape"][0] == 2 and report["answer_logits_shape"][2] == 151936
        run = json.loads((out / "bench" / "runs" / "original" / "manifest.json").read_text())
        assert run["loop"]["precision"] == "bf16"
    phases = report["projection"]["phases"]
    assert phases and all(p["rows"] > 0 and p["gpu_hours"] >= 0 for p in phases)
    assert any(p["phase"].startswith("influence × ") for p in phases)  # no loop, still costed
    assert (out / "smoke.md").is_file() and (out / "bench" / "results.md").is_file()
    assert "Projection of the full preset" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["paper-ml1m-t5base", "ml1m-qwen2.5-0.5b"])
def test_smoke_runs_influence_and_apa_at_the_paper_geometries(tiny_geometries, tmp_path, preset):
    out = tmp_path / "smoke"
    args = ["bench", "--preset", preset, "--smoke", "--out", str(out)]
    assert cli.main([*args, "--methods", "influence,apa"]) == 0
    steps = [t["step"] for t in json.loads((out / "smoke.json").read_text())["steps"]]
    for step in (
        "train apa original ensemble",
        "unlearn influence (seed 0)",
        "unlearn apa (seed 0)",
    ):
        assert step in steps
    results = json.loads((out / "bench" / "results.json").read_text())
    assert {"influence", "apa"} <= {r["method"] for r in results}


@pytest.mark.parametrize("preset", ["demo", "cpu-ml100k-minilm"])
def test_smoke_needs_a_preset_with_a_model_config(tmp_path, capsys, preset):
    out = tmp_path / "smoke"
    assert cli.main(["bench", "--preset", preset, "--smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("e2urec: error: --smoke needs a preset")
    assert not out.exists()


def test_unknown_geometry_is_one_error(tmp_path) -> None:
    from e2urec.errors import E2URecError

    with pytest.raises(E2URecError, match="unknown model config 'gpt-5'"):
        create_recommender("causal-config:gpt-5", ["Yes.", "No."], seed=0)
    with pytest.raises(E2URecError, match="layers after @"):
        create_recommender("t5-config:t5-base@x", ["Yes.", "No."], seed=0)
