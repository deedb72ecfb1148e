"""The recommender contract shared by every backbone family.

A `Recommender` pairs a tokenizer with a model kind ("seq2seq" or "causal") and knows how to
turn prompt/target rows into batches and how to read the logits at every answer position.
Methods that need several models on the same vocabulary (student, teachers, augmented model)
pass the model explicitly; the tokenizer and the answer ids are shared.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from e2urec.errors import E2URecError

ANSWERS = ("Yes.", "No.")  # the targets written by `data prepare` (label 1, label 0)
IGNORE = -100
# One history entry per line, `Title (N stars)` (see `e2urec.data.prompts.history_entries`).
HISTORY_LINE = re.compile(r"^.*\(\d+(?:\.\d+)? stars?\)$", re.MULTILINE)
BLOCK_LISTS = ("block", "layers", "layer", "h")  # names of transformer block lists


def block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """(path, blocks) of every list of transformer blocks in `model`, in module order (T5: the
    encoder's, then the decoder's)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in BLOCK_LISTS
    ]


@dataclass(frozen=True)
class Family:
    """A backbone family: how to build or load its model and tokenizer, and where LoRA goes.

    build(arg, corpus, seed) -> (model, tokenizer): `arg` is the text after "name:" in the
    backbone spec (a local folder or hub id for pretrained families, None for tiny ones);
    `corpus` is the prepared data's text (tiny families train their tokenizer on its word set).
    """

    name: str
    kind: str  # "seq2seq" or "causal"
    build: Callable[[str | None, list[str], int], tuple[nn.Module, Any]]
    lora_targets: tuple[str, ...] | None  # None: PEFT's default for the model type
    description: str = ""
    # weights come from a checkpoint (not built from the data's words): a LoRA run over it is
    # stored as its adapter, naming this base by spec and weight hash
    pretrained: bool = False
    lora_lr: float | None = None  # the family's LoRA learning rate (None: recipes' default)


class Recommender:
    """Tokenizer + model kind + resolved answer ids; batches rows and reads answer logits.

    `max_length` (prompt + answer tokens) is capped at the model's position limit
    (`max_position_embeddings`, e.g. 512 for BERT) when it has one.

    `chat` (causal models whose tokenizer has a chat template, e.g. SmolLM2-Instruct): the
    prompt is the user turn of the model's own chat template and the answer is read at the
    assistant turn's first token (TALLRec-style); otherwise the answer follows the prompt
    after a space.
    """

    family: str = ""  # the backbone family's name
    base: dict[str, Any] | None = None  # a pretrained base's spec, init seed and digest

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        kind: str,
        max_length: int = 512,
        chat: bool = False,
    ) -> None:
        if kind not in ("seq2seq", "causal"):
            raise ValueError(kind)
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.chat = chat
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_length = min(max_length, limit) if isinstance(limit, int) else max_length
        self.yes_id, self.no_id = resolve_answer_ids(tokenizer, self.answer_text)
        self._answer_ids = {a: self._encode_answer(a) for a in ANSWERS}

    # ---------------------------------------------------------------- batching
    def answer_text(self, target: str) -> str:
        """The text the answer's tokens are read from: a causal model's plain prompt is
        followed by a space; a seq2seq decoder or an assistant turn starts with the word."""
        return target if self.kind == "seq2seq" or self.chat else " " + target

    def render(self, prompt: str) -> str:
        """The prompt as the model reads it: as it is, or the user turn of the chat template
        followed by the assistant turn's opening."""
        if not self.chat:
            return prompt
        turn = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of the rendered prompts (a chat template carries its own special tokens)."""
        texts = [self.render(p) for p in prompts]
        return [
            list(ids)
            for ids in self.tokenizer(texts, add_special_tokens=not self.chat)["input_ids"]
        ]

    def _encode_answer(self, target: str) -> list[int]:
        text = self.answer_text(target)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Rows with `prompt` and `target` → padded tensors; a prompt longer than `max_length`
        loses its oldest history lines (see `fit_prompts`).

        seq2seq: input_ids/attention_mask for the encoder, labels = answer tokens.
        causal: one right-padded sequence prompt+answer, labels masked on the prompt, and
        `answer_start` = index of the first answer token in each row.
        """
        answers = [
            self._answer_ids.get(r["target"]) or self._encode_answer(r["target"]) for r in rows
        ]
        pad = self.tokenizer.pad_token_id
        if self.kind == "seq2seq":
            prompts = self.fit_prompts([r["prompt"] for r in rows], [self.max_length] * len(rows))
            input_ids, mask = _pad(prompts, pad)
            labels, _ = _pad(answers, IGNORE)
            return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        budgets = [self.max_length - len(a) for a in answers]
        prompts = self.fit_prompts([r["prompt"] for r in rows], budgets)
        sequences, starts, label_rows = [], [], []
        for prompt, answer in zip(prompts, answers, strict=True):
            sequences.append(prompt + answer)
            starts.append(len(prompt))
            label_rows.append([IGNORE] * len(prompt) + answer)
        input_ids, mask = _pad(sequences, pad)
        labels, _ = _pad(label_rows, IGNORE)
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": labels,
            "answer_start": torch.tensor(starts),
        }

    def fit_prompts(self, prompts: Sequence[str], budgets: Sequence[int]) -> list[list[int]]:
        """Token ids of each prompt within its budget of tokens.

        A prompt that is too long loses whole history lines (`Title (N stars)`), oldest first,
        until it fits; the profile and the question are always kept. A prompt that does not
        fit even without its history is refused with a clear error.
        """
        ids = self.encode_prompts(prompts)
        for i, (text, budget) in enumerate(zip(prompts, budgets, strict=True)):
            if len(ids[i]) > budget:
                ids[i] = self._drop_history(text, budget, len(ids[i]))
        return ids

    def _drop_history(self, text: str, budget: int, length: int) -> list[int]:
        lines = list(HISTORY_LINE.finditer(text))
        if lines:
            head = text[: lines[0].start()]
            shorter = [head + text[line.start() :] for line in lines[1:]]
            shorter.append(head + text[lines[-1].end() + 1 :])  # no history at all
            for ids in self.encode_prompts(shorter):
                if len(ids) <= budget:
                    return list(ids)
            length = len(ids)
        raise E2URecError(
            f"a prompt needs {length} tokens even without its history, more than the {budget} "
            f"that max length {self.max_length} leaves for it; raise the max length "
            "or shorten the prompt template"
        )

    # ---------------------------------------------------------------- scoring
    answer_only = True  # causal: apply the LM head at the answer positions only (see below)

    def target_logits(
        self, batch: dict[str, torch.Tensor], model: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, T, V] at every answer position and the answer labels [B, T] (IGNORE = pad).

        Causal models: the head runs on the hidden states at the answer positions only
        (transformers' `logits_to_keep` with per-row positions), not on every prompt token, so
        a 151k vocabulary costs [B, T, V] instead of [B, L, V]; a model whose forward lacks
        `logits_to_keep`, or `answer_only = False`, computes every position and gathers.
        """
        model = self.model if model is None else model
        if self.kind == "seq2seq":
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            )
            return out.logits, batch["labels"]
        labels = batch["labels"]
        answer_len = int((labels != IGNORE).sum(dim=1).max())
        offsets = torch.arange(answer_len, device=labels.device)
        positions = batch["answer_start"].unsqueeze(1) + offsets  # token positions of the answer
        target = labels.gather(1, positions.clamp(max=labels.shape[1] - 1))
        target = torch.where(positions < labels.shape[1], target, IGNORE)
        # the logit predicting token t sits at position t - 1
        index = (positions - 1).clamp(max=labels.shape[1] - 1)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.answer_only and keeps_logits(model):
            return model(**inputs, logits_to_keep=index).logits, target
        logits = model(**inputs).logits
        return logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1])), target

    def answer_logits(
        self, batch: dict[str, torch.Tensor], model: nn.Module | None = None
    ) -> torch.Tensor:
        """Full-vocabulary logits [B, V] at the first answer position (where Yes/No is decided)."""
        return self.target_logits(batch, model)[0][:, 0, :]


def keeps_logits(model: nn.Module) -> bool:
    """Whether `model` (possibly inside DDP or PEFT wrappers) is a transformers model whose
    forward takes `logits_to_keep` (then the head can run on chosen positions only)."""
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    return _forward_takes(type(inner), "logits_to_keep")


@functools.cache
def _forward_takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.forward).parameters


def _pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def resolve_answer_ids(tokenizer: Any, answer_text: Callable[[str], str]) -> tuple[int, int]:
    """Token ids of the first answer token for "Yes." and "No.", read from the tokenizer
    (`answer_text`: the text an answer's tokens are read from, see `Recommender.answer_text`).

    The answer word must be one token (it may carry the full stop), and the two must differ;
    otherwise a clear error names the tokens. Case is ignored, so an uncased tokenizer (BERT's
    WordPiece reads "Yes." as "yes" ".") scores the same targets.
    """
    ids = []
    for answer in ANSWERS:
        pieces = list(tokenizer(answer_text(answer), add_special_tokens=False)["input_ids"])
        word = answer.rstrip(".")
        first = tokenizer.decode(pieces[:1]).strip().rstrip(".") if pieces else ""
        if first.lower() != word.lower():
            tokens = tokenizer.convert_ids_to_tokens(pieces)
            raise E2URecError(
                f"the tokenizer splits the answer {word!r} into several tokens {tokens}; "
                "a single-token answer is needed to score Yes/No"
            )
        ids.append(pieces[0])
    if ids[0] == ids[1]:
        raise E2URecError(f"'Yes' and 'No' map to the same token id {ids[0]}")
    return ids[0], ids[1]


def batches(
    rows: Sequence[dict[str, Any]], batch_size: int, by_length: bool = False
) -> Iterator[list[int]]:
    """Index batches over `rows`; `by_length` sorts by prompt length to waste little padding."""
    order = list(range(len(rows)))
    if by_length:
        order.sort(key=lambda i: len(rows[i]["prompt"]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
