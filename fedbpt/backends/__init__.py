"""The black box: a frozen language model that scores soft prompt + text -> label logits.

Backends know models, not federations. Heavy libraries (torch, transformers, llama_cpp) are imported
only inside the backend modules, so ``import fedbpt`` stays light.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Placement = Literal["before", "after"]
PLACEMENTS: tuple[str, ...] = ("before", "after")


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one filled template (special tokens excluded).

    ``text_mask`` marks the tokens that came from the example's own text (the ones perturbation may
    replace). ``split`` is where the soft prompt goes in "after" placement: right after the last text
    field, before the template's closing words.
    """

    ids: tuple[int, ...]
    text_mask: tuple[bool, ...]
    split: int


Part = tuple[int, ...] | int
"""A piece of a scored sequence: token ids, or the index of a soft prompt (candidate)."""


@dataclass(frozen=True)
class Layout:
    """Every scored sequence is ``heads[h] + tails[t]`` for each ``(h, t)`` in ``pairs`` (in output order).

    In "before" placement a head is BOS + a candidate's soft prompt + the words every example starts with
    (the template's opening), and a tail is the rest of an example. In "after" placement a head is BOS +
    an example's text, and a tail is a candidate's prompt + that example's closing words. Backends compute
    each head once and share it among its tails.
    """

    heads: list[list[Part]]
    tails: list[list[Part]]
    pairs: list[tuple[int, int]]


def layout(n_prompts: int, examples: list[EncodedExample], bos_ids: tuple[int, ...], placement: Placement) -> Layout:
    if placement == "before":
        opening = common_prefix([example.ids for example in examples])
        heads = [[bos_ids, p, opening] for p in range(n_prompts)]
        tails = [[example.ids[len(opening) :]] for example in examples]
        pairs = [(p, e) for p in range(n_prompts) for e in range(len(examples))]
    elif placement == "after":
        heads = [[bos_ids + example.ids[: example.split]] for example in examples]
        tails = [[p, example.ids[example.split :]] for p in range(n_prompts) for example in examples]
        pairs = [(e, p * len(examples) + e) for p in range(n_prompts) for e in range(len(examples))]
    else:
        raise ValueError(f"placement must be 'before' or 'after', got {placement!r}")
    return Layout(heads, tails, pairs)


def common_prefix(sequences: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The tokens every sequence starts with, leaving at least one token in each."""
    shortest = min((len(ids) for ids in sequences), default=1) - 1
    length = 0
    while length < shortest and all(ids[length] == sequences[0][length] for ids in sequences):
        length += 1
    return tuple(sequences[0][:length]) if length else ()


def model_identity(family: str, hidden_size: int, vocabulary: list[str]) -> str:
    """What a job pins about its model: the family, the hidden size and a hash of the tokenizer's vocabulary.

    Every precision of one base model (full weights in transformers, f16/Q8_0/Q4_0 GGUF files in llama.cpp)
    shares it, so they can train together; a different model (another tokenizer, width or family) does not.
    """
    # SentencePiece's "▁" marks a space; tokenizers and GGUF files disagree on whether a token made only of
    # spaces is written with it (Gemma's whitespace tokens are), so it is hashed as a space.
    text = "\n".join(vocabulary).replace("\u2581", " ")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{family}-h{hidden_size}-v{len(vocabulary)}-{digest}"


class Backend(Protocol):
    identity: str
    hidden_size: int
    vocab_size: int
    bos_ids: tuple[int, ...]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""

    def token_embeddings(self, ids: list[int]) -> np.ndarray:
        """Input embeddings (len(ids), hidden) as the model consumes them (float32)."""

    def embedding_std(self) -> float:
        """Standard deviation of the input embedding matrix, as the model consumes it."""

    def label_logits(
        self,
        prompts: np.ndarray | None,
        examples: list[EncodedExample],
        label_ids: list[int],
        placement: Placement = "before",
    ) -> np.ndarray:
        """Logits of the label tokens at the next position: (candidates, examples, labels).

        ``prompts`` is (candidates, n_tokens, hidden) soft prompts, or None for no prompt (one row).
        """
