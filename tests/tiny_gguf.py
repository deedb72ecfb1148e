"""A tiny LLaMA chat model written as a GGUF file with the `gguf` package, so the GGUF and
SmolLM2 loading paths are tested without downloading anything.

The tokenizer is a byte-level BPE trained on the given texts (GGUF tokenizer model "gpt2", as in
SmolLM2's file) with ChatML special tokens and a ChatML chat template; the weights are random
fp32 tensors under GGUF's LLaMA tensor names.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GEOMETRY = {"hidden": 32, "ffn": 64, "layers": 2, "heads": 4, "kv_heads": 2, "context": 1024}


def _tokenizer(texts: Iterable[str]) -> tuple[list[str], list[str]]:
    """(tokens, merges) of a byte-level BPE trained on `texts` and the answers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    answers = ["Yes.", "No.", " Yes.", " No."] * 200
    tokenizer.train_from_iterator([*texts, *answers], trainer)
    state = tokenizer.to_str()
    import json

    model = json.loads(state)["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def write_tiny_gguf(path: Path, texts: Iterable[str], seed: int = 0) -> Path:
    """Write a tiny LLaMA chat model to `path` (a .gguf file) and return the path."""
    import gguf

    tokens, merges = _tokenizer(texts)
    g = GEOMETRY
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-chat")
    writer.add_context_length(g["context"])
    writer.add_embedding_length(g["hidden"])
    writer.add_block_count(g["layers"])
    writer.add_feed_forward_length(g["ffn"])
    writer.add_head_count(g["heads"])
    writer.add_head_count_kv(g["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(g["hidden"] // g["heads"])
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, shape in _tensor_shapes(len(tokens)):
        rng = np.random.default_rng([seed, len(name)])
        scale = 1.0 if name.endswith("norm.weight") else 0.02
        data = np.ones(shape) if scale == 1.0 else rng.normal(0, scale, shape)
        writer.add_tensor(name, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _tensor_shapes(vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF LLaMA tensor names and their numpy shapes (rows = output features)."""
    g = GEOMETRY
    head = g["hidden"] // g["heads"]
    kv = head * g["kv_heads"]
    shapes = [("token_embd.weight", (vocab, g["hidden"]))]
    for i in range(g["layers"]):
        shapes += [
            (f"blk.{i}.attn_norm.weight", (g["hidden"],)),
            (f"blk.{i}.attn_q.weight", (g["hidden"], g["hidden"])),
            (f"blk.{i}.attn_k.weight", (kv, g["hidden"])),
            (f"blk.{i}.attn_v.weight", (kv, g["hidden"])),
            (f"blk.{i}.attn_output.weight", (g["hidden"], g["hidden"])),
            (f"blk.{i}.ffn_norm.weight", (g["hidden"],)),
            (f"blk.{i}.ffn_gate.weight", (g["ffn"], g["hidden"])),
            (f"blk.{i}.ffn_up.weight", (g["ffn"], g["hidden"])),
            (f"blk.{i}.ffn_down.weight", (g["hidden"], g["ffn"])),
        ]
    return shapes + [("output_norm.weight", (g["hidden"],))]
