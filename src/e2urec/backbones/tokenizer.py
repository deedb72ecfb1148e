"""Small tokenizers for the tiny backbones, trained on text that holds no user data.

The corpus is the *set* of distinct words of the prepared prompts and answers (each word once,
sorted): item titles, template words, digits. A set of words carries no user sequence or count,
so a Retrain model's tokenizer never encodes anything specific to a forgotten user, and every
run on the same prepared data gets the same tokenizer (a precondition for comparing
distributions over the vocabulary).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"
ANSWER_REPEATS = 64  # answers recur in every sample; repeating them makes each a single token


def word_corpus(texts: Iterable[str]) -> list[str]:
    """The sorted set of whitespace-separated words in `texts`."""
    words: set[str] = set()
    for text in texts:
        words.update(text.split())
    return sorted(words)


def train_tokenizer(
    texts: Iterable[str], answers: Iterable[str], vocab_size: int, template: str
) -> PreTrainedTokenizerFast:
    """A BPE tokenizer (Metaspace, like SentencePiece) trained on the word set of `texts`.

    `template` places special tokens around a sequence `$A`: "$A </s>" for encoder-decoders
    (T5 convention), "<s> $A" for decoder-only models.
    """
    corpus = word_corpus(texts)
    corpus += [a for a in answers for _ in range(ANSWER_REPEATS)]
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    alphabet = sorted({ch for word in corpus for ch in word})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, UNK, BOS],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template,
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in (EOS, BOS) if t in template],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=BOS
    )
