"""Zero-shot (the task's manual template) and in-context learning with demonstrations from a party's data.

A demonstration is the filled template followed by its label word and a blank line; up to
``count`` of them come before each held-out example. Each party draws its own from its own examples
(nothing is shared), taking the labels it holds in turn so that a party with both classes shows both,
in a seeded random order. Every party's demonstrations are scored on the whole held-out set; the
result is the mean over parties of the per-party accuracy, the accuracy a randomly chosen party would
get on its own (a pooled or majority-vote variant would need parties to share data or predictions).
All demonstrations are the same for every held-out example of a party, so the backend computes them
once as the shared head of every sequence.
"""

from __future__ import annotations

import numpy as np

from fedbpt.backends import EncodedExample
from fedbpt.federation import Federation, party_seed
from fedbpt.objective import PromptedModel

SEPARATOR = "\n\n"


def pick_demonstrations(labels: np.ndarray, count: int, seed: int) -> list[int]:
    """Indices of up to ``count`` examples: the labels present take turns, the order is seeded and random."""
    rng = np.random.default_rng(seed)
    queues: dict[int, list[int]] = {}
    for index in rng.permutation(len(labels)):
        queues.setdefault(int(labels[index]), []).append(int(index))
    picked: list[int] = []
    while len(picked) < min(count, len(labels)):
        for queue in queues.values():
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return [picked[i] for i in rng.permutation(len(picked))]


def demonstration_ids(
    model: PromptedModel, examples: list[EncodedExample], labels: np.ndarray, chosen: list[int]
) -> tuple[int, ...]:
    separator = model.backend.tokenize(SEPARATOR)
    ids: list[int] = []
    for index in chosen:
        ids.extend([*examples[index].ids, model.label_ids[int(labels[index])], *separator])
    return tuple(ids)


def with_demonstrations(demonstrations: tuple[int, ...], examples: list[EncodedExample]) -> list[EncodedExample]:
    width = len(demonstrations)
    return [
        EncodedExample(demonstrations + example.ids, (False,) * width + example.text_mask, width + example.split)
        for example in examples
    ]


def in_context_accuracies(federation: Federation, count: int, seed: int) -> list[float]:
    """Each party's accuracy on the held-out set with ``count`` demonstrations from its own examples (calibrated
    when the model calibrates: the content-free inputs follow the same demonstrations)."""
    model = federation.model
    accuracies = []
    for index, party in enumerate(federation.parties):
        chosen = pick_demonstrations(party.labels, count, party_seed(seed, index, 0))
        demonstrations = demonstration_ids(model, party.examples, party.labels, chosen)

        def logits(examples: list[EncodedExample], demonstrations=demonstrations) -> np.ndarray:
            prompted = with_demonstrations(demonstrations, examples)
            return model.backend.label_logits(None, prompted, model.label_ids, "before")

        accuracies.append(model.accuracies_of(logits, federation.eval_set, federation.eval_labels)[model.scoring])
    return accuracies
