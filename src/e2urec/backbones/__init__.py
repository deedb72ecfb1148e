"""Backbones: create a recommender from a spec ("t5-tiny", "t5:google/flan-t5-base", ...), save and load it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from e2urec.artifacts import atomic_write_json, check_safetensors, read_json
from e2urec.backbones.base import ANSWERS, IGNORE, Family, Recommender, batches, block_lists
from e2urec.backbones.families import BACKBONES
from e2urec.errors import E2URecError, first_line

BACKBONE_FILE = "e2urec_backbone.json"

__all__ = [
    "ANSWERS",
    "BACKBONES",
    "IGNORE",
    "Family",
    "Recommender",
    "batches",
    "block_lists",
    "create_recommender",
    "holds_adapter",
    "is_lora",
    "load_recommender",
    "parse_spec",
    "save_recommender",
    "weights_digest",
]


def parse_spec(spec: str) -> tuple[Family, str | None]:
    """ "name" or "name:PATH_OR_HUB_ID" → (family, argument). An argument written as a local
    path (starting with /, ., or ~) that does not exist is one clear error."""
    name, _, arg = spec.partition(":")
    family, arg = BACKBONES.get(name.strip()), (arg.strip() or None)
    if arg and arg.startswith(("/", ".", "~")) and not Path(arg).expanduser().exists():
        raise E2URecError(f"backbone {spec!r}: model folder not found: {arg}")
    return family, arg


def create_recommender(
    spec: str, corpus: list[str], seed: int, max_length: int = 512
) -> Recommender:
    """A fresh recommender for `spec`; tiny families train their tokenizer on `corpus`.

    A causal model whose tokenizer has a chat template reads its prompts through it (see
    `Recommender`). A pretrained family's recommender records its base (`recommender.base`:
    spec, init seed and `weights_digest`), which a LoRA run over it is stored against.
    """
    family, arg = parse_spec(spec)
    model, tokenizer = family.build(arg, corpus, seed)
    chat = family.kind == "causal" and bool(getattr(tokenizer, "chat_template", None))
    recommender = Recommender(model, tokenizer, family.kind, max_length, chat=chat)
    recommender.family = family.name
    if family.pretrained:
        recommender.base = {"spec": spec, "init_seed": seed, "sha256": weights_digest(model)}
    return recommender


def weights_digest(model: Any) -> str:
    """sha256 of a model's weights as loaded: every state-dict tensor (name, dtype, shape,
    bytes, in name order), seeded parts included: the identity of a base that adapters are
    applied to, and of a model version that a cached curvature belongs to."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def is_lora(model: Any) -> bool:
    """Whether `model` is a PEFT model carrying adapters."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def holds_adapter(folder: str | Path) -> bool:
    """Whether model folder `folder` stores a LoRA adapter over a named base (no whole model)."""
    record = Path(folder) / BACKBONE_FILE
    return record.is_file() and bool(read_json(record, "model record").get("base"))


def save_recommender(recommender: Recommender, folder: str | Path) -> None:
    """Weights as safetensors (`save_pretrained`), the tokenizer, and the family/kind record.

    A LoRA model over a recorded pretrained base is saved as its adapter only (peft's
    `adapter_config.json` + `adapter_model.safetensors`) with the base's spec and digest in the
    record; `load_recommender` rebuilds and checks the base. Other LoRA models are merged first.
    """
    folder = Path(folder)
    record = {
        "family": getattr(recommender, "family", recommender.kind),
        "kind": recommender.kind,
        "max_length": recommender.max_length,
        "chat": recommender.chat,
    }
    model = recommender.model
    if is_lora(model) and recommender.base:
        model.save_pretrained(folder, safe_serialization=True)
        record["base"] = recommender.base
    else:
        if is_lora(model):
            model = model.merge_and_unload()
            recommender.model = model
        model.save_pretrained(folder)
        recommender.tokenizer.save_pretrained(folder)
    atomic_write_json(folder / BACKBONE_FILE, record)


def load_recommender(folder: str | Path, editable: bool = False) -> Recommender:
    """Load what `save_recommender` wrote (safetensors only; pickled weights are refused).

    Weights that cannot be read or do not fit the model (missing, unexpected or mis-shaped
    tensors, which transformers would otherwise re-initialize) are one error naming the file.
    An adapter folder gets its base rebuilt from the recorded spec and checked against the
    recorded digest; the adapter is merged into it, or with `editable` kept as a trainable
    PEFT model (its edits are saved as the adapter again).
    """
    folder = Path(folder)
    info = read_json(folder / BACKBONE_FILE, "model record")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise E2URecError(f"no safetensors weights in {folder}")
    for path in files:
        check_safetensors(path)
    if info.get("base"):
        return _load_adapter(folder, info, editable)
    model = _load_model(folder, info["kind"], files[0] if len(files) == 1 else folder)
    recommender = Recommender(
        model, _load_tokenizer(folder), info["kind"], info.get("max_length", 512),
        chat=info.get("chat", False),
    )  # fmt: skip
    recommender.family = info["family"]
    return recommender


def _load_adapter(folder: Path, info: dict[str, Any], editable: bool) -> Recommender:
    """The recorded base with the adapter in `folder` (see `load_recommender`)."""
    from peft import PeftModel

    base = info["base"]
    recommender = create_recommender(base["spec"], [], base["init_seed"], info["max_length"])
    if recommender.base["sha256"] != base["sha256"]:
        raise E2URecError(
            f"the base model {base['spec']!r} has weights sha256 "
            f"{recommender.base['sha256'][:12]}, but the adapter in {folder} was trained on "
            f"{base['sha256'][:12]}; refusing to apply it to another base"
        )
    try:
        model = PeftModel.from_pretrained(recommender.model, folder, is_trainable=editable)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise E2URecError(f"cannot load the adapter in {folder}: {first_line(exc)}") from None
    if not editable:  # a whole model, trainable like one loaded from a checkpoint
        model = model.merge_and_unload().requires_grad_(True)
    recommender.model = model
    return recommender


def _load_model(folder: Path, kind: str, weights: Path) -> Any:
    """A whole model from `folder`, refusing weights that do not fit its config."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    try:
        model, loading = auto.from_pretrained(  # mis-shaped tensors are listed, then refused
            folder, use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise E2URecError(f"cannot load the weights in {weights}: {first_line(exc)}") from None
    wrong = {k: sorted(loading.get(k) or ()) for k in ("missing_keys", "unexpected_keys")}
    wrong["mismatched_keys"] = sorted(  # (name, shape in the file, shape in the model)
        f"{k[0]} (file {list(k[1])}, model {list(k[2])})" if isinstance(k, tuple) else str(k)
        for k in loading.get("mismatched_keys") or ()
    )
    problems = [f"{k.replace('_', ' ')} {', '.join(v[:3])}" for k, v in wrong.items() if v]
    if problems:
        raise E2URecError(
            f"the weights in {weights} do not fit the model it records: {'; '.join(problems)}"
        )
    return model


def _load_tokenizer(folder: Path) -> Any:
    """The saved tokenizer. One trained by e2urec (a plain `tokenizers` backend) is loaded as
    such: AutoTokenizer would pick the model type's own class (e.g. Qwen2's), which rebuilds
    the pre-tokenizer and splits the answer words differently."""
    from transformers import AutoTokenizer, TokenizersBackend

    config = folder / "tokenizer_config.json"
    saved = read_json(config, "tokenizer config") if config.is_file() else {}
    if saved.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return TokenizersBackend.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)
