"""Backbones: create a recommender from a spec ("t5-tiny", "t5:google/flan-t5-base", ...), save and load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    "load_recommender",
    "parse_spec",
    "save_recommender",
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
    """A fresh recommender for `spec`; tiny families train their tokenizer on `corpus`."""
    family, arg = parse_spec(spec)
    model, tokenizer = family.build(arg, corpus, seed)
    recommender = Recommender(model, tokenizer, family.kind, max_length)
    recommender.family = family.name
    return recommender


def save_recommender(recommender: Recommender, folder: str | Path) -> None:
    """Weights as safetensors (`save_pretrained`), the tokenizer, and the family/kind record."""
    folder = Path(folder)
    recommender.model.save_pretrained(folder)
    recommender.tokenizer.save_pretrained(folder)
    atomic_write_json(
        folder / BACKBONE_FILE,
        {
            "family": getattr(recommender, "family", recommender.kind),
            "kind": recommender.kind,
            "max_length": recommender.max_length,
        },
    )


def load_recommender(folder: str | Path) -> Recommender:
    """Load what `save_recommender` wrote (safetensors only; pickled weights are refused).

    Weights that cannot be read or do not fit the model (missing, unexpected or mis-shaped
    tensors, which transformers would otherwise re-initialize) are one error naming the file.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    folder = Path(folder)
    info = read_json(folder / BACKBONE_FILE, "model record")
    auto = AutoModelForSeq2SeqLM if info["kind"] == "seq2seq" else AutoModelForCausalLM
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise E2URecError(f"no safetensors weights in {folder}")
    for path in files:
        check_safetensors(path)
    weights = files[0] if len(files) == 1 else folder
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
    tokenizer = _load_tokenizer(folder)
    recommender = Recommender(model, tokenizer, info["kind"], info.get("max_length", 512))
    recommender.family = info["family"]
    return recommender


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
