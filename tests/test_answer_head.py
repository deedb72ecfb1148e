"""The answer-only LM head: the same logits and gradients as the full head, for every causal
model family, bare, LoRA-wrapped, and at half precision."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertLMHeadModel, Qwen2Config, Qwen2ForCausalLM

from e2urec.backbones import create_recommender
from e2urec.backbones.base import keeps_logits
from e2urec.train.recipes import add_lora

ROWS = [
    {"prompt": "The user is a man. He liked Toy Story (5 stars) and Heat (2 stars).", "target": t}
    for t in ("Yes.", "No.")
] + [{"prompt": "The user is a woman. Deduce if she will like Heat.", "target": "No."}]


def _recommender(family: str):
    corpus = [r["prompt"] for r in ROWS] + ["Yes.", "No."]
    rec = create_recommender("causal-tiny", corpus, seed=0)
    vocab = len(rec.tokenizer)
    torch.manual_seed(0)
    if family == "bert":
        config = BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, is_decoder=True, pad_token_id=rec.tokenizer.pad_token_id,
        )  # fmt: skip
        rec.model = BertLMHeadModel(config)
    elif family == "qwen2":
        config = Qwen2Config(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        )  # fmt: skip
        rec.model = Qwen2ForCausalLM(config)
    return rec


def _both(rec, model):
    batch = rec.collate(ROWS)
    rec.answer_only = True
    answer, labels = rec.target_logits(batch, model)
    rec.answer_only = False
    full, full_labels = rec.target_logits(batch, model)
    rec.answer_only = True
    return answer, full, labels, full_labels


@pytest.mark.parametrize("family", ["llama", "bert", "qwen2"])
@pytest.mark.parametrize("lora", [False, True])
def test_answer_only_head_equals_the_full_head(family: str, lora: bool) -> None:
    rec = _recommender(family)
    model = rec.model
    if lora:
        targets = ("query", "value") if family == "bert" else ("q_proj", "v_proj")
        model = add_lora(model, targets, "causal")
    assert keeps_logits(model)
    model.eval()
    answer, full, labels, full_labels = _both(rec, model)
    assert answer.shape == full.shape and answer.shape[:2] == labels.shape
    assert torch.equal(labels, full_labels)
    torch.testing.assert_close(answer, full, rtol=1e-5, atol=1e-5)
    # gradients of a loss on the answer positions agree as well
    model.train()
    torch.manual_seed(1)
    from e2urec.train.losses import answer_ce

    grads = []
    for answer_only in (True, False):
        model.zero_grad()
        rec.answer_only = answer_only
        torch.manual_seed(1)
        answer_ce(*rec.target_logits(rec.collate(ROWS), model)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    rec.answer_only = True
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_answer_only_head_under_bf16_autocast() -> None:
    rec = _recommender("qwen2")
    rec.model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        answer, full, _, _ = _both(rec, rec.model)
    assert answer.dtype == torch.bfloat16
    torch.testing.assert_close(answer.float(), full.float(), rtol=0, atol=0.05)


def test_a_model_without_logits_to_keep_falls_back_to_the_full_head() -> None:
    rec = _recommender("llama")
    inner = rec.model

    class Plain(torch.nn.Module):  # a forward without `logits_to_keep`
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return inner(input_ids=input_ids, attention_mask=attention_mask)

    plain = Plain().eval()
    assert not keeps_logits(plain)
    batch = rec.collate(ROWS)
    got, _ = rec.target_logits(batch, plain)
    want, _ = rec.target_logits(batch, inner.eval())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
