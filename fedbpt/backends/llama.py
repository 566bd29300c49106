"""llama.cpp backend (llama-cpp-python): GGUF models, quantized or not, scored without torch.

Every ctypes detail of the project lives in this module. Scoring follows the shared ``layout``: each head
(a candidate's soft prompt, or an example's text) is decoded once into its own sequence of a unified
key/value cache, then ``llama_memory_seq_cp`` makes it the prefix of every sequence that continues it
(in a unified cache this only tags the head's cells with the new sequence ids: nothing is copied), and
the tails of many sequences go through ``llama_decode`` together, with logits requested only at each
tail's last token. Token ids enter as ids; soft prompts enter as embeddings through a batch made by
``llama_batch_init(n, n_embd, 1)``. The embedding matrix is read from the GGUF file (found by
``gguf_header``, dequantized row by row with the ``gguf`` package), because llama.cpp has no call that
returns it.

Model quirks: the Gemma family multiplies input embeddings by sqrt(hidden). llama.cpp's Gemma 3 graph
scales token ids only, while Gemma 1 and 2 also scale embeddings given as input; ``token_embeddings``
returns embeddings as the model consumes them (scaled), and prompts are divided back where llama.cpp
would scale them twice.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import gguf
import numpy as np

from fedbpt.errors import UserError

# llama.cpp's OpenMP threads spin while waiting; on a machine whose cores are shared (or oversubscribed)
# that spinning starves the other threads: 200 tokens took 4-6 s with 2 spinning threads, 1.1 s passive.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
import llama_cpp as ll  # noqa: E402  (the wait policy must be set before the OpenMP runtime loads)

from fedbpt.backends import EncodedExample, Placement, layout, model_identity
from fedbpt.backends.gguf_header import token_embedding_matrix

SCALED_EMBEDDINGS = ("gemma", "gemma2", "gemma3", "gemma3n", "gemma-embedding", "gemma4")
SCALES_EMBEDDING_INPUT = ("gemma", "gemma2")
# Small-memory defaults: a 2,048-cell cache holds about 50 MB of f16 keys/values for SmolLM2.
N_CTX = 2048
N_BATCH = 512
N_SEQ_MAX = 64
EMBEDDING_ROWS_PER_READ = 1024


class LlamaError(UserError, RuntimeError):
    """llama.cpp refused a model file or a batch; the message says which and why."""


@ll.llama_log_callback
def _quiet(level, text, user_data):  # llama.cpp logs every tensor it loads; errors surface as return codes
    return None


ll.llama_log_set(_quiet, ctypes.c_void_p(0))
ll.llama_backend_init()


def quantize(source: Path, target: Path, quant: str, threads: int = 0) -> None:
    """Re-quantize a GGUF file with ``llama_model_quantize`` (``quant``: f16, q8_0 or q4_0)."""
    types = {"f16": ll.LLAMA_FTYPE_MOSTLY_F16, "q8_0": ll.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": ll.LLAMA_FTYPE_MOSTLY_Q4_0}
    params = ll.llama_model_quantize_default_params()
    params.ftype = types[quant]
    params.nthread = threads
    # The packaged files are already quantized: allow_requantize re-quantizes them (to f16 it dequantizes).
    params.allow_requantize = True
    if ll.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise LlamaError(f"llama.cpp could not quantize {source} to {quant}")


class LlamaCppBackend:
    def __init__(
        self,
        path: str | Path,
        n_ctx: int = N_CTX,
        n_batch: int = N_BATCH,
        n_seq_max: int = N_SEQ_MAX,
        threads: int | None = None,
    ):
        self.path = Path(path)
        model_params = ll.llama_model_default_params()
        model_params.n_gpu_layers = 0
        # Read the weights into memory instead of mapping the file: llama.cpp repacks most of them for faster
        # CPU kernels anyway, and a mapped file would keep both copies resident (SmolLM2 Q4_0: 223 -> 167 MB).
        model_params.load_mode = ll.LLAMA_LOAD_MODE_NONE
        self._model = ll.llama_model_load_from_file(str(self.path).encode(), model_params)
        if not self._model:
            raise LlamaError(f"llama.cpp cannot load {self.path}: not a GGUF model of a supported architecture")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.architecture = self._meta("general.architecture")
        self.hidden_size = int(ll.llama_model_n_embd(self._model))
        self.vocab_size = int(ll.llama_vocab_n_tokens(self._vocab))
        self.bos_ids = (int(ll.llama_vocab_bos(self._vocab)),) if ll.llama_vocab_get_add_bos(self._vocab) else ()
        self.embedding_scale = np.sqrt(self.hidden_size) if self.architecture in SCALED_EMBEDDINGS else 1.0
        self._input_scale = 1.0 / self.embedding_scale if self.architecture in SCALES_EMBEDDING_INPUT else 1.0
        self.identity = model_identity(self.architecture, self.hidden_size, self.vocabulary())
        self.n_ctx, self.n_batch, self.n_seq_max = n_ctx, n_batch, n_seq_max
        threads = threads or len(os.sched_getaffinity(0))
        params = ll.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_seq_max = n_seq_max
        params.n_outputs_max = n_seq_max  # at most one output per sequence in a batch: keeps the logits buffer small
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = True  # sequences share one cache, so a copied prefix is stored once
        params.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise LlamaError(f"llama.cpp cannot create a context of {n_ctx} tokens for {self.path}")
        self._memory = ll.llama_get_memory(self._ctx)
        self._token_batch = ll.llama_batch_init(n_batch, 0, 1)
        self._embedding_batch = ll.llama_batch_init(n_batch, self.hidden_size, 1)
        self._token_view = _Batch(self._token_batch, n_batch, 0)
        self._embedding_view = _Batch(self._embedding_batch, n_batch, self.hidden_size)
        self._embeddings = token_embedding_matrix(self.path)

    def __del__(self):
        for batch in ("_token_batch", "_embedding_batch"):
            if hasattr(self, batch):
                ll.llama_batch_free(getattr(self, batch))
        if getattr(self, "_ctx", None):
            ll.llama_free(self._ctx)
        if getattr(self, "_model", None):
            ll.llama_model_free(self._model)

    def _meta(self, key: str) -> str:
        buffer = ctypes.create_string_buffer(256)
        length = ll.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return buffer.value.decode() if length >= 0 else ""

    def vocabulary(self) -> list[str]:
        """Every token's text, in id order (what the model identity hashes)."""
        return [ll.llama_vocab_get_text(self._vocab, i).decode("utf-8", "replace") for i in range(self.vocab_size)]

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buffer = (ll.llama_token * (len(data) + 8))()
        # parse_special=True: special tokens written in the text are recognised, as transformers does.
        count = ll.llama_tokenize(self._vocab, data, len(data), buffer, len(buffer), False, True)
        if count < 0:
            raise LlamaError(f"llama.cpp could not tokenize {text[:60]!r}")
        return list(buffer[:count])

    def token_embeddings(self, ids: list[int]) -> np.ndarray:
        data, kind = self._embeddings
        rows = gguf.quants.dequantize(data[np.asarray(ids, dtype=np.int64)], kind)
        return (rows.reshape(len(ids), self.hidden_size) * self.embedding_scale).astype(np.float32)

    def embedding_std(self) -> float:
        """Read in chunks of rows, so a 262k-token vocabulary never sits in memory as float32."""
        data, kind = self._embeddings
        total = squares = 0.0
        for start in range(0, len(data), EMBEDDING_ROWS_PER_READ):
            rows = gguf.quants.dequantize(data[start : start + EMBEDDING_ROWS_PER_READ], kind).astype(np.float64)
            total += rows.sum()
            squares += np.square(rows).sum()
        count = len(data) * self.hidden_size
        return float(np.sqrt(max(squares / count - (total / count) ** 2, 0.0) * count / (count - 1))) * float(
            self.embedding_scale
        )

    def label_logits(
        self,
        prompts: np.ndarray | None,
        examples: list[EncodedExample],
        label_ids: list[int],
        placement: Placement = "before",
        shared: bool = True,
    ) -> np.ndarray:
        """See ``Backend.label_logits``; ``shared=False`` decodes every full sequence alone (the reference)."""
        if prompts is not None:  # undo the scale token_embeddings applied where llama.cpp scales inputs itself
            prompts = np.asarray(prompts, dtype=np.float32) * np.float32(self._input_scale)
        plan = layout(prompts, examples, self.bos_ids, placement, self.hidden_size)
        labels = np.asarray(label_ids, dtype=np.int64)
        if shared:
            logits = self._score_shared(plan.heads, plan.tails, plan.pairs, labels)
        else:
            logits = np.stack([self._score_alone(plan.heads[h] + plan.tails[t], labels) for h, t in plan.pairs])
        return plan.by_candidate(logits)

    def _score_shared(self, heads, tails, pairs, labels: np.ndarray) -> np.ndarray:
        logits = np.empty((len(pairs), len(labels)), dtype=np.float32)
        for load in self._loads(heads, tails, pairs):
            ll.llama_memory_clear(self._memory, True)
            head_seq = {head: seq for seq, head in enumerate(dict.fromkeys(pairs[i][0] for i in load))}
            self._decode([(seq, 0, heads[head]) for head, seq in head_seq.items()], labels)
            items = []
            for offset, index in enumerate(load):
                head, tail = pairs[index]
                seq = len(head_seq) + offset
                ll.llama_memory_seq_cp(self._memory, head_seq[head], seq, -1, -1)
                items.append((seq, _length(heads[head]), tails[tail]))
            logits[load] = self._decode(items, labels)
        return logits

    def _loads(self, heads, tails, pairs) -> list[list[int]]:
        """Pairs grouped so that each group's heads and tails fit the cache and the sequence limit."""
        loads, current, heads_in, cells = [], [], set(), 0
        for index, (head, tail) in enumerate(pairs):
            extra = _length(tails[tail]) + (0 if head in heads_in else _length(heads[head]))
            sequences = len(current) + len(heads_in) + (1 if head in heads_in else 2)
            if current and (cells + extra > self.n_ctx or sequences > self.n_seq_max):
                loads.append(current)
                current, heads_in, cells = [], set(), 0
                extra = _length(tails[tail]) + _length(heads[head])
            if extra > self.n_ctx:
                raise LlamaError(
                    f"a sequence of {extra} tokens does not fit the context of {self.n_ctx} tokens: "
                    "load the model with a larger n_ctx (the edge client's --context)"
                )
            current.append(index)
            heads_in.add(head)
            cells += extra
        if current:
            loads.append(current)
        return loads

    def _score_alone(self, pieces: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
        ll.llama_memory_clear(self._memory, True)
        return self._decode([(0, 0, pieces)], labels)[0]

    def _decode(self, items: list[tuple[int, int, list[np.ndarray]]], labels: np.ndarray) -> np.ndarray:
        """Decode (sequence, first position, pieces) items, piece by piece across items, in full batches.

        Returns the label logits at each item's last token (items in order). A batch holds token ids or
        embeddings, not both, so each round of pieces is sent as ids first, then as embeddings.
        """
        out = np.empty((len(items), len(labels)), dtype=np.float32)
        positions = [start for _, start, _ in items]
        for round_index in range(max(len(pieces) for _, _, pieces in items)):
            for embedded in (False, True):
                batch = self._embedding_view if embedded else self._token_view
                for item, (seq, _, pieces) in enumerate(items):
                    if round_index >= len(pieces) or (pieces[round_index].ndim == 2) != embedded:
                        continue
                    piece, last = pieces[round_index], round_index == len(pieces) - 1
                    for start in range(len(piece)):
                        if batch.full():
                            self._run(batch, out, labels)
                        output = item if last and start == len(piece) - 1 else -1
                        batch.add(piece[start], positions[item] + start, seq, output)
                    positions[item] += len(piece)
                if batch.count:
                    self._run(batch, out, labels)
        return out

    def _run(self, batch: _Batch, out: np.ndarray, labels: np.ndarray) -> None:
        status = ll.llama_decode(self._ctx, batch.finish())
        if status != 0:
            raise LlamaError(f"llama_decode failed with status {status} on a batch of {batch.count} tokens")
        for row, item in batch.outputs:
            logits = ll.llama_get_logits_ith(self._ctx, row)
            out[item] = np.ctypeslib.as_array(logits, shape=(self.vocab_size,))[labels]
        batch.reset()


class _Batch:
    """Fills a ``llama_batch`` through numpy views of its arrays; each token belongs to one sequence.

    ``width`` is 0 for a batch of token ids, else the embedding width of a batch of vectors.
    """

    def __init__(self, batch: ll.llama_batch, capacity: int, width: int):
        self.batch, self.capacity, self.count = batch, capacity, 0
        self.pos = np.ctypeslib.as_array(batch.pos, shape=(capacity,))
        self.n_seq_id = np.ctypeslib.as_array(batch.n_seq_id, shape=(capacity,))
        self.wants_logits = np.ctypeslib.as_array(batch.logits, shape=(capacity,))
        if width:
            self.values = np.ctypeslib.as_array(batch.embd, shape=(capacity, width))
        else:
            self.values = np.ctypeslib.as_array(batch.token, shape=(capacity,))
        self.outputs: list[tuple[int, int]] = []

    def full(self) -> bool:
        return self.count == self.capacity

    def add(self, value: np.ndarray, position: int, seq: int, output: int) -> None:
        self.values[self.count] = value
        self.pos[self.count] = position
        self.n_seq_id[self.count] = 1
        self.batch.seq_id[self.count][0] = seq
        self.wants_logits[self.count] = output >= 0
        if output >= 0:
            self.outputs.append((self.count, output))
        self.count += 1

    def finish(self) -> ll.llama_batch:
        self.batch.n_tokens = self.count
        return self.batch

    def reset(self) -> None:
        self.count = 0
        self.outputs = []


def _length(pieces: list[np.ndarray]) -> int:
    return sum(len(piece) for piece in pieces)
