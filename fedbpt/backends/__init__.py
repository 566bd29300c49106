"""The black box: a frozen language model that scores soft prompt + text -> label logits.

Backends know models, not federations. Both backends score the sequences ``layout`` lays out and read
the label logits back with ``Layout.by_candidate``; each keeps only how it feeds token ids and soft prompt
rows to its model, runs a batch and reuses what it has computed. Heavy libraries (torch, transformers,
llama_cpp) are imported only inside the backend modules, so ``import fedbpt`` stays light.
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


@dataclass(frozen=True)
class Layout:
    """The sequences one ``label_logits`` call scores: ``heads[h] + tails[t]`` for each ``(h, t)`` in ``pairs``.

    A head or a tail is a list of pieces, in order and none empty: token ids (n,) as int64, or the rows of
    a candidate's soft prompt (n, hidden) as float32. Each backend feeds ids its own way and prompt rows as
    they are. In "before" placement a head is BOS + a candidate's soft prompt + the words every example
    starts with (the template's opening), and a tail is the rest of an example. In "after" placement a head
    is BOS + an example's text, and a tail is a candidate's prompt + that example's closing words. Backends
    compute each head once and share it among its tails.
    """

    heads: list[list[np.ndarray]]
    tails: list[list[np.ndarray]]
    pairs: list[tuple[int, int]]
    n_candidates: int
    n_examples: int

    def by_candidate(self, label_logits: np.ndarray) -> np.ndarray:
        """The label logits read after each pair's last position, (pairs, labels) in pair order, as
        (candidates, examples, labels)."""
        return label_logits.reshape(self.n_candidates, self.n_examples, label_logits.shape[-1])


def layout(
    prompts: np.ndarray | None,
    examples: list[EncodedExample],
    bos_ids: tuple[int, ...],
    placement: Placement,
    hidden_size: int,
) -> Layout:
    """Where each candidate's soft prompt goes among each example's tokens; pairs run candidate by candidate."""
    candidates = soft_prompts(prompts, hidden_size)
    if placement == "before":
        opening = common_prefix([example.ids for example in examples])
        heads = [_pieces(bos_ids, prompt, opening) for prompt in candidates]
        tails = [_pieces(example.ids[len(opening) :]) for example in examples]
        pairs = [(c, e) for c in range(len(candidates)) for e in range(len(examples))]
    elif placement == "after":
        heads = [_pieces(bos_ids + example.ids[: example.split]) for example in examples]
        tails = [_pieces(prompt, example.ids[example.split :]) for prompt in candidates for example in examples]
        pairs = [(e, c * len(examples) + e) for c in range(len(candidates)) for e in range(len(examples))]
    else:
        raise ValueError(f"placement must be 'before' or 'after', got {placement!r}")
    return Layout(heads, tails, pairs, len(candidates), len(examples))


def soft_prompts(prompts: np.ndarray | None, hidden_size: int) -> list[np.ndarray]:
    """Each candidate's soft prompt as float32 rows (n_tokens, hidden); no prompt is one empty candidate."""
    if prompts is None:
        return [np.zeros((0, hidden_size), dtype=np.float32)]
    return list(np.ascontiguousarray(prompts, dtype=np.float32))


def _pieces(*parts: tuple[int, ...] | np.ndarray) -> list[np.ndarray]:
    """The non-empty parts of a sequence: token id tuples as int64 arrays, prompt rows as they are."""
    arrays = [part if isinstance(part, np.ndarray) else np.asarray(part, dtype=np.int64) for part in parts]
    return [array for array in arrays if len(array)]


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
