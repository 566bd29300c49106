"""Wire encoding shared by the server and the clients: JSON, vectors as base64 little-endian floats.

A job's ``wire`` setting picks float16 (the default: 1,000 bytes for a 500-number vector) or float32. Every
vector that travels is first rounded to that precision where it is made (``on_wire``), so what a party
searched from, what the server aggregated and what the simulator computed are the same numbers.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

DTYPES = {"float16": "<f2", "float32": "<f4"}


def on_wire(vector: np.ndarray, wire: str) -> np.ndarray:
    """``vector`` rounded to the wire's precision (float64 again, so arithmetic stays exact after it)."""
    return np.asarray(vector, dtype=DTYPES[wire]).astype(np.float64)


def encode_vector(vector: np.ndarray, wire: str = "float32") -> str:
    return base64.b64encode(np.asarray(vector, dtype=DTYPES[wire]).tobytes()).decode("ascii")


def decode_vector(data: str | list[float], wire: str = "float32") -> np.ndarray:
    """A float64 array from base64 little-endian floats of the wire's precision, or from a plain list."""
    if isinstance(data, list):
        return np.asarray(data, dtype=np.float64)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("vector is neither a list of numbers nor valid base64") from None
    width = np.dtype(DTYPES[wire]).itemsize
    if len(raw) % width:
        raise ValueError(f"vector has {len(raw)} bytes, not a whole number of {wire} values")
    return np.frombuffer(raw, dtype=DTYPES[wire]).astype(np.float64)
