"""The black box: a frozen language model that scores soft prompt + text -> label logits.

Backends know models, not federations. Heavy libraries (torch, transformers, llama_cpp) are imported
only inside the backend modules, so ``import fedbpt`` stays light.
"""

from __future__ import annotations

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
