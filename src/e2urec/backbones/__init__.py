"""Backbones: create a recommender from a spec ("t5-tiny", "t5:google/flan-t5-base", ...), save and load it."""

from __future__ import annotations

from pathlib import Path

from e2urec.artifacts import atomic_write_json, read_json
from e2urec.backbones.base import ANSWERS, IGNORE, Family, Recommender, batches
from e2urec.backbones.families import BACKBONES
from e2urec.errors import E2URecError

BACKBONE_FILE = "e2urec_backbone.json"

__all__ = [
    "ANSWERS",
    "BACKBONES",
    "IGNORE",
    "Family",
    "Recommender",
    "batches",
    "create_recommender",
    "load_recommender",
    "parse_spec",
    "save_recommender",
]


def parse_spec(spec: str) -> tuple[Family, str | None]:
    """ "name" or "name:PATH_OR_HUB_ID" → (family, argument)."""
    name, _, arg = spec.partition(":")
    return BACKBONES.get(name.strip()), (arg.strip() or None)


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
    """Load what `save_recommender` wrote (safetensors only; pickled weights are refused)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    folder = Path(folder)
    info = read_json(folder / BACKBONE_FILE, "model record")
    auto = AutoModelForSeq2SeqLM if info["kind"] == "seq2seq" else AutoModelForCausalLM
    if not (folder / "model.safetensors").is_file() and not any(folder.glob("*.safetensors")):
        raise E2URecError(f"no safetensors weights in {folder}")
    model = auto.from_pretrained(folder, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    recommender = Recommender(model, tokenizer, info["kind"], info.get("max_length", 512))
    recommender.family = info["family"]
    return recommender
