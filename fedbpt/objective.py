"""From a prompt vector z to a loss: template encoding, starting prompts, calibration, loss functions.

The soft prompt for z is ``p0 + projection(z)`` ("add" mode of BBT/FedBPT), where ``p0`` is one of a few
starting prompts (``STARTS``) that a job chooses among before its first round. Scores are the label words'
log-probabilities, by default calibrated as in "Calibrate before use" (Zhao et al., 2021): each label's
probability is divided by its average over content-free inputs (``CONTENT_FREE``) put through the same
template and the same prompt, then renormalized. A prompt (or template) that pulls every input towards one
label word is then judged by how it separates the inputs, not by the pull: measured with SmolLM2, the bare
template on AG News went 52.0 -> 72.3% and on SST-2 78.4 -> 80.5%.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

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
CONTENT_FREE = ("N/A", "", "[MASK]")
# Starting prompts a job can choose among (by the parties' pooled training loss): the neutral preamble, the
# preamble followed by the task's instruction, the instruction repeated, and BBT-style random vocabulary tokens.
STARTS = ("preamble", "preamble+instruction", "instruction", "vocabulary")
# The default candidates: measured with SmolLM2 (scripts/starts.py), the other two were never the best start on
# held-out rows (SST-2 74.1 and 55.2% against 81.5%, AG News 69.1 and 60.4% against 73.2%), while the training
# loss of 48 sentences once preferred the instruction by 0.0003.
DEFAULT_STARTS = ("preamble", "preamble+instruction")
VOCABULARY_RANGE = (1000, 10000)  # ordinary word pieces in a BPE vocabulary: past the special and byte tokens


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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def calibrated(log_probs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Divide each label's probability by its mean over the content-free inputs and renormalize.

    ``log_probs`` is (candidates, examples, labels), ``reference`` the content-free inputs' (candidates, k, labels).
    """
    prior = np.log(np.exp(reference).mean(axis=1, keepdims=True))
    return log_softmax(log_probs - prior)


def cross_entropy(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean cross-entropy over the label words: (candidates, examples, labels) -> (candidates,)."""
    return -np.take_along_axis(log_softmax(scores), labels[None, :, None], axis=-1)[..., 0].mean(axis=1)


def hinge(scores: np.ndarray, labels: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """Multi-class hinge: mean over examples of max(0, margin - (correct score - best other score))."""
    correct = np.take_along_axis(scores, labels[None, :, None], axis=-1)[..., 0]
    others = scores.copy()
    np.put_along_axis(others, labels[None, :, None], -np.inf, axis=-1)
    return np.maximum(0.0, margin - (correct - others.max(axis=-1))).mean(axis=1)


def start_tokens(start: str, task: Task, backend: Backend, n_tokens: int, seed: int) -> list[int]:
    """The ``n_tokens`` token ids whose embeddings make the starting prompt ``start``.

    Text starts are cut from the left, so an instruction always sits next to the input text.
    """
    if start == "vocabulary":
        high = min(VOCABULARY_RANGE[1], backend.vocab_size)
        low = min(VOCABULARY_RANGE[0], high // 3)
        return np.random.default_rng([seed, 7]).integers(low, high, size=n_tokens).tolist()
    instruction = backend.tokenize(" " + task.instruction.strip() + "\n")
    preamble = backend.tokenize(" " + PREAMBLE)
    if start == "preamble":
        pieces, tail = preamble, []
    elif start == "preamble+instruction":
        pieces, tail = preamble, instruction
    elif start == "instruction":
        pieces, tail = instruction, []
    else:
        raise ValueError(f"unknown start {start!r}; use one of {STARTS}")
    repeats = -(-n_tokens // len(pieces))
    return (pieces * repeats + tail)[-n_tokens:]


@dataclass
class PromptedModel:
    """A backend with a task, a projection and a starting prompt: everything needed to score z."""

    backend: Backend
    task: Task
    projection: Projection
    p0: np.ndarray
    label_ids: list[int]
    placement: Placement = "before"
    calibrate: bool = True
    start: str = "preamble+instruction"
    seed: int = 0
    content_free: list[EncodedExample] | None = None

    @classmethod
    def build(
        cls,
        backend: Backend,
        task: Task,
        projection: Projection,
        placement: Placement = "before",
        calibrate: bool = True,
        start: str = "preamble+instruction",
        seed: int = 0,
    ) -> PromptedModel:
        label_ids = verbalizer_token_ids(task, backend.tokenize)
        empty = np.zeros((projection.n_tokens, backend.hidden_size), dtype=np.float32)
        model = cls(backend, task, projection, empty, label_ids, placement, calibrate, start, seed)
        pair = "{text_pair}" in task.template
        model.content_free = model.encode([Example(text, 0, text if pair else None) for text in CONTENT_FREE])
        return model.with_start(start)

    def with_start(self, start: str) -> PromptedModel:
        """The same model with another starting prompt (the backend and encodings are shared)."""
        ids = start_tokens(start, self.task, self.backend, self.projection.n_tokens, self.seed)
        return replace(self, start=start, p0=self.backend.token_embeddings(ids).astype(np.float32))

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

    def prompts(self, z: np.ndarray) -> np.ndarray:
        """(candidates, n_tokens, hidden) soft prompts for z of shape (dim,) or (candidates, dim)."""
        return self.p0[None] + self.projection(np.atleast_2d(z))

    def logits(self, z: np.ndarray | None, examples: list[EncodedExample]) -> np.ndarray:
        """Raw label-word logits (candidates, examples, labels); z=None scores the bare template (one row)."""
        prompts = None if z is None else self.prompts(z)
        return self.backend.label_logits(prompts, examples, self.label_ids, self.placement)

    def scores(self, z: np.ndarray | None, examples: list[EncodedExample]) -> np.ndarray:
        """Label log-probabilities (candidates, examples, labels), calibrated when the model calibrates."""
        return self.scores_of(lambda batch: self.logits(z, batch), examples)

    def scores_of(self, logits: Callable[[list[EncodedExample]], np.ndarray], examples: list[EncodedExample]):
        """Log-probabilities from any scorer of raw label logits (examples -> (candidates, examples, labels)),
        calibrated when the model calibrates: the baselines score their own prompts through this.

        The content-free inputs are scored in the same call as the examples, so each candidate's prompt is
        computed once for both.
        """
        if not self.calibrate:
            return log_softmax(logits(examples))
        log_probs = log_softmax(logits(examples + self.content_free))
        return calibrated(log_probs[:, : len(examples)], log_probs[:, len(examples) :])

    def predict(self, z: np.ndarray | None, examples: list[EncodedExample]) -> np.ndarray:
        return self.scores(z, examples)[0].argmax(axis=-1)

    @property
    def scoring(self) -> str:
        """Which accuracy this model reports: "calibrated" or "raw"."""
        return "calibrated" if self.calibrate else "raw"

    def accuracy(self, z: np.ndarray | None, examples: list[EncodedExample], labels: np.ndarray) -> float:
        """Held-out accuracy of z, calibrated when the model calibrates."""
        return self.accuracies(z, examples, labels)[self.scoring]

    def accuracies(self, z: np.ndarray | None, examples: list[EncodedExample], labels: np.ndarray) -> dict:
        """Held-out accuracy of z, raw and calibrated."""
        return self.accuracies_of(lambda batch: self.logits(z, batch), examples, labels)

    def accuracies_of(
        self, logits: Callable[[list[EncodedExample]], np.ndarray], examples: list[EncodedExample], labels: np.ndarray
    ) -> dict:
        """Held-out accuracy, raw and calibrated, of the first candidate of any scorer of raw label logits (the
        baselines' prompts too), from one scoring pass of the examples and the content-free inputs."""
        log_probs = log_softmax(logits(examples + self.content_free))[:1]
        raw, reference = log_probs[:, : len(examples)], log_probs[:, len(examples) :]
        return {
            "raw": float((raw[0].argmax(-1) == labels).mean()),
            "calibrated": float((calibrated(raw, reference)[0].argmax(-1) == labels).mean()),
        }

    def loss(self, z: np.ndarray, examples: list[EncodedExample], labels: np.ndarray, loss: str = "ce") -> np.ndarray:
        """The plain (unperturbed) loss of each candidate on the examples: (candidates,)."""
        return LOSS_FUNCTIONS[loss](self.scores(z, examples), labels)


LOSS_FUNCTIONS = {"ce": cross_entropy, "hinge": hinge}


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

    def __call__(self, population: np.ndarray) -> np.ndarray:
        function = LOSS_FUNCTIONS[self.loss]
        if self.perturbed is None:
            return function(self.model.scores(population, self.examples), self.labels)
        # One backend call for both sets: each candidate's prompt is computed once and batches are fuller.
        scores = self.model.scores(population, self.examples + self.perturbed)
        clean, perturbed = scores[:, : len(self.examples)], scores[:, len(self.examples) :]
        return function(clean, self.labels) / np.maximum(function(perturbed, self.labels), 1e-8)
