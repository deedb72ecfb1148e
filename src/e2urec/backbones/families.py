"""The registered backbone families: pretrained T5 / decoder-only models and tiny ones built from configs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from e2urec.backbones.base import ANSWERS, Family
from e2urec.backbones.tokenizer import BOS, EOS, PAD, train_tokenizer
from e2urec.errors import E2URecError
from e2urec.registry import Registry

BACKBONES: Registry[Family] = Registry("backbone")
TINY_VOCAB = 4000


def _require(arg: str | None, family: str) -> str:
    if not arg:
        raise E2URecError(
            f"backbone {family!r} needs a model: use '{family}:PATH_OR_HUB_ID' "
            f"(e.g. {family}:google/flan-t5-base or {family}:/models/my-model)"
        )
    return arg


def _pretrained(auto: Any, arg: str) -> tuple[nn.Module, Any]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(arg)
        model = auto.from_pretrained(arg, use_safetensors=True)
    except OSError as exc:
        raise E2URecError(f"cannot load model {arg!r}: {str(exc).splitlines()[0]}") from None
    return model, tokenizer


def _build_t5(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    return _pretrained(AutoModelForSeq2SeqLM, _require(arg, "t5"))


def _build_causal(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    model, tokenizer = _pretrained(AutoModelForCausalLM, _require(arg, "causal"))
    if tokenizer.pad_token_id is None:  # GPT-2 / LLaMA style tokenizers ship without padding
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _build_t5_tiny(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    tokenizer = train_tokenizer(corpus, ANSWERS, TINY_VOCAB, template=f"$A {EOS}")
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_ff=128,
        d_kv=16,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=2,
        dropout_rate=0.1,
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        decoder_start_token_id=tokenizer.convert_tokens_to_ids(PAD),
    )
    return T5ForConditionalGeneration(config), tokenizer


def _build_causal_tiny(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    tokenizer = train_tokenizer(corpus, ANSWERS, TINY_VOCAB, template=f"{BOS} $A")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config), tokenizer


for _family in (
    Family(
        "t5", "seq2seq", _build_t5, ("q", "v"), "any transformers seq2seq model (t5:PATH_OR_ID)"
    ),
    Family("causal", "causal", _build_causal, None, "any decoder-only model (causal:PATH_OR_ID)"),
    Family(
        "t5-tiny", "seq2seq", _build_t5_tiny, ("q", "v"), "2+2-layer T5, d 64, built from a config"
    ),
    Family(
        "causal-tiny", "causal", _build_causal_tiny, ("q_proj", "v_proj"), "2-layer LLaMA, d 64"
    ),
):
    BACKBONES.register(_family.name, description=_family.description)(_family)
