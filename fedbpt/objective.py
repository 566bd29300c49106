"""From a prompt vector z to a loss: template encoding, soft prompt construction, loss functions.

The soft prompt for z is ``p0 + projection(z)`` ("add" mode of BBT/FedBPT). ``p0`` embeds a neutral
English preamble followed by the task's instruction, cut to the prompt length from the left so the
instruction always sits next to the text. Measured on 400 SST-2 dev rows with SmolLM2: this p0 alone
scores 81.5% (bare template 79.3%), while the instruction repeated to 50 tokens scores 67.5%.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedbpt.backends import Backend, EncodedExample, Placement
from fedbpt.data import DataError, Example
from fedbpt.projection import Projection
from fedbpt.tasks import Task, TaskError, verbalizer_token_ids

LOSSES = ("ce", "hinge")
PREAMBLE = (
    "The following text was written by a person who likes to read and write about many different "
    "things in their daily life, and it is shared here for everyone."
)


def encode_examples(task: Task, examples: list[Example], tokenize: Callable[[str], list[int]]) -> list[EncodedExample]:
    """Fill the template piece by piece so the text tokens are known (for perturbation and placement).

    Whitespace that ends a literal piece before a field is moved into the field, so that the field's
    first word is tokenized as it would be inside the whole sentence (" it", not " " + "it").
    """
    parts = task.template_parts()
    last_field = max(index for index, (_, is_field) in enumerate(parts) if is_field)
    encoded = []
    for example in examples:
        values = {"text": example.text, "text_pair": example.text_pair or ""}
        ids: list[int] = []
        mask: list[bool] = []
        carry = ""
        split = 0
        for index, (piece, is_field) in enumerate(parts):
            if is_field:
                tokens = tokenize(carry + values[piece].strip())
                carry = ""
            else:
                next_is_field = index + 1 < len(parts) and parts[index + 1][1]
                if next_is_field:
                    stripped = piece.rstrip()
                    carry = piece[len(stripped) :]
                    piece = stripped
                tokens = tokenize(piece) if piece else []
            ids.extend(tokens)
            mask.extend([is_field] * len(tokens))
            if index == last_field:
                split = len(ids)
        encoded.append(EncodedExample(tuple(ids), tuple(mask), split))
    return encoded


def perturb(examples: list[EncodedExample], rate: float, vocab_size: int, seed: int) -> list[EncodedExample]:
    """FedBPT's perturbed inputs: each text token becomes a random vocabulary id with probability ``rate``."""
    rng = np.random.default_rng(seed)
    out = []
    for example in examples:
        ids = np.array(example.ids, dtype=np.int64)
        hit = np.array(example.text_mask, dtype=bool) & (rng.random(len(ids)) < rate)
        ids[hit] = rng.integers(0, vocab_size, size=int(hit.sum()))
        out.append(EncodedExample(tuple(int(i) for i in ids), example.text_mask, example.split))
    return out


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean cross-entropy over the label words: (candidates, examples, labels) -> (candidates,)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[None, :, None], axis=-1)[..., 0].mean(axis=1)


def hinge(logits: np.ndarray, labels: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """Multi-class hinge: mean over examples of max(0, margin - (correct logit - best other logit))."""
    correct = np.take_along_axis(logits, labels[None, :, None], axis=-1)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, labels[None, :, None], -np.inf, axis=-1)
    return np.maximum(0.0, margin - (correct - others.max(axis=-1))).mean(axis=1)


@dataclass
class PromptedModel:
    """A backend with a task, a projection and a starting prompt: everything needed to score z."""

    backend: Backend
    task: Task
    projection: Projection
    p0: np.ndarray
    label_ids: list[int]
    placement: Placement = "before"

    @classmethod
    def build(cls, backend: Backend, task: Task, projection: Projection, placement: Placement = "before"):
        label_ids = verbalizer_token_ids(task, backend.tokenize)
        preamble = backend.tokenize(" " + PREAMBLE)
        instruction = backend.tokenize(" " + task.instruction.strip() + "\n")
        repeats = -(-projection.n_tokens // len(preamble))
        p0 = backend.token_embeddings((preamble * repeats + instruction)[-projection.n_tokens :])
        return cls(backend, task, projection, p0.astype(np.float32), label_ids, placement)

    def encode(self, examples: list[Example]) -> list[EncodedExample]:
        """Encode for this model; the label is read right after the last token, so it must exist."""
        encoded = encode_examples(self.task, examples, self.backend.tokenize)
        for example, original in zip(encoded, examples, strict=True):
            if self.placement == "after" and example.split == len(example.ids):
                raise TaskError(
                    f"task {self.task.name!r}: placement 'after' puts the soft prompt between the text and the "
                    "template's closing words, but the template has none after its last field; add some (for "
                    "example '\\nSentiment:') or use placement 'before'"
                )
            if not example.ids:
                raise DataError(f"an example of task {self.task.name!r} encodes to no tokens: {original!r}")
        return encoded

    def logits(self, z: np.ndarray | None, examples: list[EncodedExample]) -> np.ndarray:
        """(candidates, examples, labels) for z of shape (candidates, dim); z=None scores the bare template."""
        prompts = None if z is None else self.p0[None] + self.projection(np.atleast_2d(z))
        return self.backend.label_logits(prompts, examples, self.label_ids, self.placement)

    def accuracy(self, z: np.ndarray | None, examples: list[EncodedExample], labels: np.ndarray) -> float:
        predictions = self.logits(z, examples)[0].argmax(axis=-1)
        return float((predictions == labels).mean())


@dataclass
class Objective:
    """The black-box loss of a population of prompt vectors on one party's examples.

    With perturbed examples, the fitness is FedBPT's ``loss(clean) / loss(perturbed)``: a prompt that
    only works because it memorised these sentences scores about as well on scrambled ones, so the
    ratio stays high; prompts that read the text are rewarded.
    """

    model: PromptedModel
    examples: list[EncodedExample]
    labels: np.ndarray
    loss: str = "ce"
    perturbed: list[EncodedExample] | None = None

    @classmethod
    def for_round(
        cls,
        model: PromptedModel,
        examples: list[EncodedExample],
        labels: np.ndarray,
        loss: str,
        perturb_rate: float,
        seed: int,
    ) -> Objective:
        """A party's objective in one round: the loss ratio on this round's seeded perturbation of its
        examples, or the plain loss when ``perturb_rate`` is 0."""
        perturbed = perturb(examples, perturb_rate, model.backend.vocab_size, seed) if perturb_rate > 0 else None
        return cls(model, examples, labels, loss, perturbed)

    def _loss(self, logits: np.ndarray) -> np.ndarray:
        return cross_entropy(logits, self.labels) if self.loss == "ce" else hinge(logits, self.labels)

    def __call__(self, population: np.ndarray) -> np.ndarray:
        if self.perturbed is None:
            return self._loss(self.model.logits(population, self.examples))
        # One backend call for both sets: each candidate's prompt is computed once and batches are fuller.
        logits = self.model.logits(population, self.examples + self.perturbed)
        clean, perturbed = logits[:, : len(self.examples)], logits[:, len(self.examples) :]
        return self._loss(clean) / np.maximum(self._loss(perturbed), 1e-8)
