"""Transformers + torch backend: full-precision (or bf16) scoring on CPU or GPU.

Every scored sequence is ``head + tail``: in "before" placement the head is the soft prompt (one per
candidate) and the tail is an example's text; in "after" placement the head is an example's text (one
per example) and the tail is the soft prompt plus the template's closing words. Heads are run once and
their keys/values are shared by every (head, tail) pair, so each candidate's prompt (or each example's
text) is computed once per call. Tails are sorted by length and batched under a token budget, and only
the label tokens' logits at the last position are computed.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from fedbpt.backends import EncodedExample, Placement

# Batch limits from the feasibility measurements in DESIGN.md (SmolLM2 on 2 cores: buckets of up to ~160
# sequences per forward were fastest; one giant batch of 20 candidates was slower, being memory-bound).
TOKENS_PER_FORWARD = 4096
SEQUENCES_PER_FORWARD = 160


class TransformersBackend:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        identity: str,
        tokens_per_forward: int = TOKENS_PER_FORWARD,
        sequences_per_forward: int = SEQUENCES_PER_FORWARD,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.identity = identity
        self.tokens_per_forward = tokens_per_forward
        self.sequences_per_forward = sequences_per_forward
        config = model.config.get_text_config()
        self.hidden_size = int(config.hidden_size)
        self.vocab_size = int(config.vocab_size)
        self.softcap = getattr(config, "final_logit_softcapping", None)
        leading = tokenizer("", add_special_tokens=True)["input_ids"][:1]
        self.bos_ids = tuple(leading) if leading == [tokenizer.bos_token_id] else ()
        self.dtype = model.dtype
        self._embed = model.get_input_embeddings()

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def token_embeddings(self, ids: list[int]) -> np.ndarray:
        return self._embed(torch.tensor([ids], dtype=torch.long))[0].float().numpy()

    @torch.inference_mode()
    def embedding_std(self) -> float:
        scale = float(getattr(self._embed, "embed_scale", 1.0))
        return float(self._embed.weight.float().std()) * scale

    @torch.inference_mode()
    def label_logits(
        self,
        prompts: np.ndarray | None,
        examples: list[EncodedExample],
        label_ids: list[int],
        placement: Placement = "before",
        shared: bool = True,
    ) -> np.ndarray:
        """See ``Backend.label_logits``; ``shared=False`` runs every full sequence (the naive reference)."""
        if prompts is None:
            prompt_tensors = [torch.zeros(0, self.hidden_size, dtype=self.dtype)]
        else:
            prompt_tensors = list(torch.from_numpy(np.ascontiguousarray(prompts, dtype=np.float32)).to(self.dtype))
        bos = self._embed_ids(self.bos_ids)
        if placement == "before":
            heads = [torch.cat([bos, prompt]) for prompt in prompt_tensors]
            tails = [self._embed_ids(example.ids) for example in examples]
            pairs = [(p, e) for p in range(len(heads)) for e in range(len(tails))]
        elif placement == "after":
            heads = [torch.cat([bos, self._embed_ids(example.ids[: example.split])]) for example in examples]
            tails = [
                torch.cat([prompt, self._embed_ids(example.ids[example.split :])])
                for prompt in prompt_tensors
                for example in examples
            ]
            pairs = [(e, p * len(examples) + e) for p in range(len(prompt_tensors)) for e in range(len(examples))]
        else:
            raise ValueError(f"placement must be 'before' or 'after', got {placement!r}")
        hidden = (
            self._last_hidden_shared(heads, tails, pairs) if shared else self._last_hidden_naive(heads, tails, pairs)
        )
        weights = self.model.get_output_embeddings().weight[list(label_ids)].float()
        logits = hidden.float() @ weights.T
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits.reshape(len(prompt_tensors), len(examples), len(label_ids)).numpy()

    def _embed_ids(self, ids) -> torch.Tensor:
        return self._embed(torch.tensor(list(ids), dtype=torch.long))

    def _chunks(self, lengths: list[int]) -> list[list[int]]:
        """Indices sorted by length, grouped so each forward stays under the token and sequence budgets."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        chunks, current = [], []
        for index in order:
            width = lengths[index]
            if current and (
                (len(current) + 1) * width > self.tokens_per_forward or len(current) >= self.sequences_per_forward
            ):
                chunks.append(current)
                current = []
            current.append(index)
        if current:
            chunks.append(current)
        return chunks

    @staticmethod
    def _pad_right(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(t) for t in tensors])
        width = int(lengths.max())
        batch = torch.zeros(len(tensors), width, tensors[0].shape[-1], dtype=tensors[0].dtype)
        for row, tensor in enumerate(tensors):
            batch[row, : len(tensor)] = tensor
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return batch, mask, lengths

    def _last_hidden_shared(self, heads, tails, pairs) -> torch.Tensor:
        head_lengths = torch.tensor([len(h) for h in heads])
        head_width = int(head_lengths.max())
        cache_layers, head_mask = None, torch.zeros(len(heads), 0, dtype=torch.long)
        if head_width:
            # Left padding keeps each head's last token next to its tail; the mask hides the pads.
            batch = torch.zeros(len(heads), head_width, self.hidden_size, dtype=self.dtype)
            head_mask = torch.zeros(len(heads), head_width, dtype=torch.long)
            for row, head in enumerate(heads):
                batch[row, head_width - len(head) :] = head
                head_mask[row, head_width - len(head) :] = 1
            positions = (head_mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model.base_model(
                inputs_embeds=batch, attention_mask=head_mask, position_ids=positions, use_cache=True
            )
            cache_layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        hidden = torch.empty(len(pairs), self.hidden_size, dtype=self.dtype)
        tail_lengths = [len(tails[t]) for _, t in pairs]
        for chunk in self._chunks([head_width + n for n in tail_lengths]):
            head_index = torch.tensor([pairs[i][0] for i in chunk])
            batch, tail_mask, lengths = self._pad_right([tails[pairs[i][1]] for i in chunk])
            cache = None
            if cache_layers is not None:
                cache = DynamicCache(
                    ddp_cache_data=[(k[head_index], v[head_index]) for k, v in cache_layers], config=self.model.config
                )
            positions = head_lengths[head_index][:, None] + torch.arange(batch.shape[1])[None, :]
            out = self.model.base_model(
                inputs_embeds=batch,
                attention_mask=torch.cat([head_mask[head_index], tail_mask], 1),
                position_ids=positions,
                past_key_values=cache,
                use_cache=cache is not None,
            )
            hidden[chunk] = out.last_hidden_state[torch.arange(len(chunk)), lengths - 1]
        return hidden

    def _last_hidden_naive(self, heads, tails, pairs) -> torch.Tensor:
        sequences = [torch.cat([heads[h], tails[t]]) for h, t in pairs]
        hidden = torch.empty(len(pairs), self.hidden_size, dtype=self.dtype)
        for chunk in self._chunks([len(s) for s in sequences]):
            batch, mask, lengths = self._pad_right([sequences[i] for i in chunk])
            out = self.model.base_model(inputs_embeds=batch, attention_mask=mask, use_cache=False)
            hidden[chunk] = out.last_hidden_state[torch.arange(len(chunk)), lengths - 1]
        return hidden
