"""Gradient baselines: one party's local round of FedPrompt and of FedP-tuning (P-tuning v2).

Both backpropagate through the frozen model of a ``PromptedModel`` (the transformers backend's model)
and train prompt parameters only, with Adam on the cross-entropy over the task's verbalizer logits:

- **FedPrompt** trains a soft prompt (n_tokens x hidden) placed exactly where FedBPT puts its prompt
  (``placement``, after the BOS token), starting from FedBPT's ``p0``.
- **FedP-tuning** trains a key and a value prefix in every attention layer (layers x 2 x kv_heads x
  prefix_len x head_dim), injected through a ``DynamicCache`` as if they were past tokens. It starts
  from the keys and values that BOS + ``p0`` produce, so at round 0 it scores exactly like FedPrompt's
  starting prompt in "before" placement.

A round takes the global parameters as a float32 array and returns the party's trained copy; the
model's weights are never changed (their ``requires_grad`` is switched off while training).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from fedbpt.backends import EncodedExample
from fedbpt.objective import PromptedModel

EVAL_BATCH = 32


@dataclass(frozen=True)
class LocalTraining:
    """A party's local optimisation in one round: ``epochs`` passes of Adam over its examples."""

    epochs: int = 1
    learning_rate: float = 3e-3
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be at least 1, got {self.epochs} and {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


@dataclass(frozen=True)
class RoundStats:
    loss: float  # mean training loss over the round's steps
    steps: int
    n_examples: int
    seconds: float


Forward = Callable[[PromptedModel, torch.Tensor, list[EncodedExample]], torch.Tensor]


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """No gradient for the model's own weights while inside; their previous flags are restored after."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _label_logits(model: PromptedModel, hidden: torch.Tensor) -> torch.Tensor:
    """(batch, labels) logits of the verbalizer tokens from the last hidden states, as the backend scores them."""
    backend = model.backend
    weights = backend.model.get_output_embeddings().weight[model.label_ids].float()
    logits = hidden.float() @ weights.T
    if backend.softcap:
        logits = backend.softcap * torch.tanh(logits / backend.softcap)
    return logits


def _pad_right(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(sequence) for sequence in sequences])
    batch = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)
    mask = (torch.arange(batch.shape[1])[None, :] < lengths[:, None]).long()
    return batch, mask, lengths


def _embed(model: PromptedModel, ids) -> torch.Tensor:
    return model.backend.model.get_input_embeddings()(torch.tensor(list(ids), dtype=torch.long))


def soft_prompt_logits(model: PromptedModel, prompt: torch.Tensor, batch: list[EncodedExample]) -> torch.Tensor:
    """Label logits with ``prompt`` (n_tokens, hidden) in FedBPT's place: BOS, prompt, text (or text, prompt, rest)."""
    backend = model.backend
    prompt = prompt.to(backend.dtype)
    bos = _embed(model, backend.bos_ids)
    sequences = []
    for example in batch:
        if model.placement == "before":
            parts = [bos, prompt, _embed(model, example.ids)]
        else:
            text, rest = example.ids[: example.split], example.ids[example.split :]
            parts = [bos, _embed(model, text), prompt, _embed(model, rest)]
        sequences.append(torch.cat(parts))
    inputs, mask, lengths = _pad_right(sequences)
    out = backend.model.base_model(inputs_embeds=inputs, attention_mask=mask, use_cache=False)
    return _label_logits(model, out.last_hidden_state[torch.arange(len(batch)), lengths - 1])


def deep_prompt_logits(model: PromptedModel, prefix: torch.Tensor, batch: list[EncodedExample]) -> torch.Tensor:
    """Label logits with per-layer key/value prefixes (layers, 2, kv_heads, prefix_len, head_dim) before the text."""
    backend = model.backend
    prefix = prefix.to(backend.dtype)
    inputs, mask, lengths = _pad_right([_embed(model, example.ids) for example in batch])
    size, width, prefix_len = len(batch), inputs.shape[1], prefix.shape[3]
    cache = DynamicCache(
        ddp_cache_data=[(layer[0].expand(size, -1, -1, -1), layer[1].expand(size, -1, -1, -1)) for layer in prefix],
        config=backend.model.config,
    )
    out = backend.model.base_model(
        inputs_embeds=inputs,
        attention_mask=torch.cat([torch.ones(size, prefix_len, dtype=torch.long), mask], dim=1),
        position_ids=(prefix_len + torch.arange(width))[None].expand(size, -1),
        cache=cache,
        use_cache=True,
    )
    return _label_logits(model, out.last_hidden_state[torch.arange(size), lengths - 1])


def initial_soft_prompt(model: PromptedModel) -> np.ndarray:
    """FedBPT's starting prompt ``p0`` (n_tokens, hidden)."""
    return model.p0.copy()


@torch.inference_mode()
def initial_deep_prompt(model: PromptedModel) -> np.ndarray:
    """The keys and values of BOS + ``p0`` in every layer: (layers, 2, kv_heads, prefix_len, head_dim) float32."""
    backend = model.backend
    head = torch.cat([_embed(model, backend.bos_ids), torch.from_numpy(model.p0).to(backend.dtype)])
    out = backend.model.base_model(inputs_embeds=head[None], use_cache=True)
    layers = [torch.stack([layer.keys[0], layer.values[0]]) for layer in out.cache.layers]
    return torch.stack(layers).float().numpy()


def _local_round(
    forward: Forward,
    model: PromptedModel,
    parameters: np.ndarray,
    examples: list[EncodedExample],
    labels: np.ndarray,
    training: LocalTraining,
    seed: int,
) -> tuple[np.ndarray, RoundStats]:
    if len(examples) != len(labels) or not examples:
        raise ValueError(f"a party needs examples with one label each, got {len(examples)} and {len(labels)}")
    started = time.perf_counter()
    trained = torch.nn.Parameter(torch.tensor(np.asarray(parameters, dtype=np.float32)))
    optimizer = torch.optim.Adam([trained], lr=training.learning_rate)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    order_rng = np.random.default_rng(seed)
    losses = []
    with frozen(model.backend.model):
        for _ in range(training.epochs):
            order = order_rng.permutation(len(examples))
            for start in range(0, len(order), training.batch_size):
                chosen = order[start : start + training.batch_size]
                logits = forward(model, trained, [examples[i] for i in chosen])
                loss = torch.nn.functional.cross_entropy(logits, targets[chosen])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    stats = RoundStats(float(np.mean(losses)), len(losses), len(examples), time.perf_counter() - started)
    return trained.detach().numpy().copy(), stats


def fedprompt_round(
    model: PromptedModel,
    prompt: np.ndarray,
    examples: list[EncodedExample],
    labels: np.ndarray,
    training: LocalTraining = LocalTraining(),
    seed: int = 0,
) -> tuple[np.ndarray, RoundStats]:
    """One FedPrompt party round: the global soft prompt (n_tokens, hidden) in, the party's trained prompt out."""
    if prompt.shape != model.p0.shape:
        raise ValueError(f"prompt has shape {prompt.shape}, the model's soft prompt is {model.p0.shape}")
    return _local_round(soft_prompt_logits, model, prompt, examples, labels, training, seed)


def fedptuning_round(
    model: PromptedModel,
    prefix: np.ndarray,
    examples: list[EncodedExample],
    labels: np.ndarray,
    training: LocalTraining = LocalTraining(),
    seed: int = 0,
) -> tuple[np.ndarray, RoundStats]:
    """One FedP-tuning party round: the global deep prompt (see ``initial_deep_prompt``) in, the trained one out."""
    return _local_round(deep_prompt_logits, model, prefix, examples, labels, training, seed)


@torch.inference_mode()
def predict_logits(forward: Forward, model: PromptedModel, parameters: np.ndarray, examples: list[EncodedExample]):
    """(examples, labels) logits, in length-sorted batches of ``EVAL_BATCH``."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    tensor = torch.from_numpy(np.asarray(parameters, dtype=np.float32))
    logits = np.empty((len(examples), len(model.label_ids)), dtype=np.float32)
    for start in range(0, len(order), EVAL_BATCH):
        chosen = order[start : start + EVAL_BATCH]
        logits[chosen] = forward(model, tensor, [examples[i] for i in chosen]).numpy()
    return logits
