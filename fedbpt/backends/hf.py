"""Transformers + torch backend: full-precision (or bf16) scoring on CPU or GPU.

Scoring follows the shared ``layout`` (fedbpt.backends). Heads are run once and their keys/values are
shared by every (head, tail) pair, so each candidate's prompt (or each example's text) is computed once
per call. A head's tails are packed into rows with a block-diagonal mask, so short texts cost no padding,
and only the label tokens' logits at each tail's last position are computed.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from fedbpt.backends import EncodedExample, Placement, layout, model_identity

# Batch limits measured with SmolLM2 on this CPU (docs/results.md). Short rows keep the block-diagonal mask's
# wasted attention small; big forwards mean fewer, larger operations, which suffer less on a busy machine.
TOKENS_PER_FORWARD = 4096
SEQUENCES_PER_FORWARD = 160
TOKENS_PER_ROW = 96


class TransformersBackend:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        tokens_per_forward: int = TOKENS_PER_FORWARD,
        sequences_per_forward: int = SEQUENCES_PER_FORWARD,
        tokens_per_row: int = TOKENS_PER_ROW,
    ):
        # Plain matmul-softmax attention: on CPU it beat torch's fused kernel with an explicit mask (every
        # scorer here passes one) for the naive, shared and text-only forwards alike (docs/results.md).
        model.set_attn_implementation("eager")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokens_per_forward = tokens_per_forward
        self.sequences_per_forward = sequences_per_forward
        self.tokens_per_row = tokens_per_row
        config = model.config.get_text_config()
        self.hidden_size = int(config.hidden_size)
        self.vocab_size = int(config.vocab_size)
        self.softcap = getattr(config, "final_logit_softcapping", None)
        family = config.model_type.removesuffix("_text")  # gemma3_text in transformers is gemma3 in GGUF
        self.identity = model_identity(family, self.hidden_size, tokenizer.convert_ids_to_tokens(range(len(tokenizer))))
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
        plan = layout(prompts, examples, self.bos_ids, placement, self.hidden_size)
        heads = [self._embed_pieces(pieces) for pieces in plan.heads]
        tails = [self._embed_pieces(pieces) for pieces in plan.tails]
        last_hidden = self._last_hidden_shared if shared else self._last_hidden_naive
        hidden = last_hidden(heads, tails, plan.pairs)
        weights = self.model.get_output_embeddings().weight[list(label_ids)].float()
        logits = hidden.float() @ weights.T
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return plan.by_candidate(logits.numpy())

    def _embed_pieces(self, pieces: list[np.ndarray]) -> torch.Tensor:
        """A sequence's input embeddings: token ids through the embedding layer, prompt rows as they are."""
        rows = [self._embed(torch.from_numpy(p)) if p.ndim == 1 else torch.from_numpy(p).to(self.dtype) for p in pieces]
        return torch.cat(rows) if rows else torch.zeros(0, self.hidden_size, dtype=self.dtype)

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
        cache_layers, head_mask, head_lengths = self._run_heads(heads)
        rows = self._pack(pairs, [len(t) for t in tails])
        hidden = torch.empty(len(pairs), self.hidden_size, dtype=self.dtype)
        for chunk in self._chunks([sum(len(tails[pairs[i][1]]) for i in row) for _, row in rows]):
            head_index = torch.tensor([rows[r][0] for r in chunk])
            members = [rows[r][1] for r in chunk]
            inputs, segments, offsets, last = self._packed_batch(members, tails, pairs)
            cache = None
            if cache_layers is not None:
                cache = DynamicCache(
                    ddp_cache_data=[(k[head_index], v[head_index]) for k, v in cache_layers], config=self.model.config
                )
            out = self.model.base_model(
                inputs_embeds=inputs,
                attention_mask=self._packed_mask(head_mask[head_index], segments),
                position_ids=head_lengths[head_index][:, None] + offsets,
                cache=cache,
                use_cache=cache is not None,
            )
            hidden[[i for row in members for i in row]] = out.last_hidden_state[last[:, 0], last[:, 1]]
        return hidden

    def _run_heads(self, heads) -> tuple[list | None, torch.Tensor, torch.Tensor]:
        """Runs every head once and returns its keys/values per layer, its padding mask and its length."""
        head_lengths = torch.tensor([len(h) for h in heads])
        width = int(head_lengths.max())
        head_mask = torch.zeros(len(heads), width, dtype=torch.bool)
        if not width:
            return None, head_mask, head_lengths
        # Left padding keeps each head's last token next to its tails; the mask hides the pads.
        batch = torch.zeros(len(heads), width, self.hidden_size, dtype=self.dtype)
        for row, head in enumerate(heads):
            batch[row, width - len(head) :] = head
            head_mask[row, width - len(head) :] = True
        positions = (head_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model.base_model(
            inputs_embeds=batch, attention_mask=head_mask.long(), position_ids=positions, use_cache=True
        )
        return [(layer.keys, layer.values) for layer in out.cache.layers], head_mask, head_lengths

    def _pack(self, pairs, tail_lengths: list[int]) -> list[tuple[int, list[int]]]:
        """Places each head's tails into rows of about ``tokens_per_row`` tokens (first fit, longest first).

        A row holds several tails one after another and a block-diagonal mask keeps them apart, so short
        texts cost no padding, and a head's keys/values are copied once per row instead of once per tail.
        """
        by_head: dict[int, list[int]] = {}
        for index, (head, _) in enumerate(pairs):
            by_head.setdefault(head, []).append(index)
        rows = []
        for head, members in by_head.items():
            head_rows: list[list[int]] = []
            used: list[int] = []
            for index in sorted(members, key=lambda i: -tail_lengths[pairs[i][1]]):
                length = tail_lengths[pairs[index][1]]
                fits = [r for r, tokens in enumerate(used) if tokens + length <= self.tokens_per_row]
                if fits:
                    head_rows[fits[0]].append(index)
                    used[fits[0]] += length
                else:
                    head_rows.append([index])
                    used.append(length)
            rows.extend((head, row) for row in head_rows)
        return rows

    def _packed_batch(self, members: list[list[int]], tails, pairs):
        """Right-padded rows of concatenated tails, each token's tail number (-1 on padding) and offset in
        its tail, and the (row, position) of every tail's last token, in the order of ``members``."""
        widths = [sum(len(tails[pairs[i][1]]) for i in row) for row in members]
        shape = (len(members), max(widths))
        inputs = torch.zeros(*shape, self.hidden_size, dtype=self.dtype)
        segments = torch.full(shape, -1, dtype=torch.long)
        offsets = torch.zeros(shape, dtype=torch.long)
        last = []
        for r, row in enumerate(members):
            start = 0
            for segment, index in enumerate(row):
                tail = tails[pairs[index][1]]
                end = start + len(tail)
                inputs[r, start:end] = tail
                segments[r, start:end] = segment
                offsets[r, start:end] = torch.arange(len(tail))
                last.append((r, end - 1))
                start = end
        return inputs, segments, offsets, torch.tensor(last)

    def _packed_mask(self, head_mask: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """(rows, 1, width, head + width) additive mask (0 or the dtype's minimum, as eager attention adds it): a
        token sees its row's head and the earlier tokens of its own tail (padding sees earlier padding, so no
        query row is empty)."""
        width = segments.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        same_tail = (segments[:, :, None] == segments[:, None, :]) & causal
        visible = torch.cat([head_mask[:, None, :].expand(-1, width, -1), same_tail], -1)[:, None]
        return torch.zeros(visible.shape, dtype=self.dtype).masked_fill_(~visible, torch.finfo(self.dtype).min)

    def _last_hidden_naive(self, heads, tails, pairs) -> torch.Tensor:
        sequences = [torch.cat([heads[h], tails[t]]) for h, t in pairs]
        hidden = torch.empty(len(pairs), self.hidden_size, dtype=self.dtype)
        for chunk in self._chunks([len(s) for s in sequences]):
            batch, mask, lengths = self._pad_right([sequences[i] for i in chunk])
            out = self.model.base_model(inputs_embeds=batch, attention_mask=mask, use_cache=False)
            hidden[chunk] = out.last_hidden_state[torch.arange(len(chunk)), lengths - 1]
        return hidden
