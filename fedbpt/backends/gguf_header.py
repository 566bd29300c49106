"""Find a GGUF file's token embedding matrix by reading only the file's header.

llama.cpp has no call that returns a model's input embeddings, so the llama.cpp backend reads them from
the file. ``gguf.GGUFReader`` would also parse the whole vocabulary into arrays, which takes seconds and
about 150 MB for SmolLM2 on a small device; this reader skips every metadata value it does not need.

A GGUF file (little-endian) starts with the magic ``GGUF``, a version, the tensor count and the key/value
count; then come the key/value pairs, one info record per tensor (name, dimensions, type, offset), and
the tensor data from the next multiple of ``general.alignment``.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from fedbpt.errors import UserError

TOKEN_EMBEDDINGS = "token_embd.weight"
DEFAULT_ALIGNMENT = 32
# Value types: the byte size of each scalar type (uint8 ... float64, bool), then the two variable-size ones.
SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
UINT32, STRING, ARRAY = 4, 8, 9


class GGUFError(UserError, ValueError):
    """A file is not a GGUF file, or holds no token embedding matrix."""


def token_embedding_matrix(path: Path) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The token embedding matrix as stored: memory-mapped rows of bytes (quantized or not), and their type."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if bytes(data[:4]) != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file")
    header = _Cursor(data, offset=8)
    tensor_count, kv_count = header.uint64(), header.uint64()
    alignment = DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key, kind = header.string(), header.uint32()
        if key == "general.alignment" and kind == UINT32:
            alignment = header.uint32()
        else:
            header.skip(kind)
    found = None
    for _ in range(tensor_count):
        name, n_dims = header.string(), header.uint32()
        dims = [header.uint64() for _ in range(n_dims)]
        kind, start = header.uint32(), header.uint64()
        if name == TOKEN_EMBEDDINGS:
            found = dims, gguf.GGMLQuantizationType(kind), start
    if found is None:
        raise GGUFError(f"{path} has no {TOKEN_EMBEDDINGS} tensor")
    (width, rows), kind, start = found
    block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    row_bytes = width // block * block_bytes
    begin = -(-header.offset // alignment) * alignment + start
    return data[begin : begin + rows * row_bytes].reshape(rows, row_bytes), kind


class _Cursor:
    """Reads the values of a GGUF header one after another."""

    def __init__(self, data: np.ndarray, offset: int):
        self.data, self.offset = data, offset

    def uint32(self) -> int:
        return self._integer(np.uint32)

    def uint64(self) -> int:
        return self._integer(np.uint64)

    def string(self) -> str:
        length = self.uint64()
        text = bytes(self.data[self.offset : self.offset + length]).decode("utf-8", "replace")
        self.offset += length
        return text

    def skip(self, kind: int) -> None:
        """Moves past one value of type ``kind``."""
        if kind == STRING:
            length = self.uint64()
            self.offset += length
        elif kind == ARRAY:
            item, count = self.uint32(), self.uint64()
            if item in SCALAR_BYTES:
                self.offset += count * SCALAR_BYTES[item]
            else:
                for _ in range(count):
                    self.skip(item)
        else:
            self.offset += SCALAR_BYTES[kind]

    def _integer(self, dtype: type[np.unsignedinteger]) -> int:
        value = np.frombuffer(self.data, dtype, 1, self.offset)[0]
        self.offset += value.nbytes
        return int(value)
