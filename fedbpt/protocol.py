"""Wire encoding shared by the server and the clients: JSON, vectors as base64 little-endian float32."""

from __future__ import annotations

import base64
import binascii

import numpy as np


def encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(data: str | list[float]) -> np.ndarray:
    """A float64 array from base64 little-endian float32, or from a plain list of numbers."""
    if isinstance(data, list):
        return np.asarray(data, dtype=np.float64)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("vector is neither a list of numbers nor valid base64") from None
    if len(raw) % 4:
        raise ValueError(f"vector has {len(raw)} bytes, not a whole number of float32 values")
    return np.frombuffer(raw, dtype="<f4").astype(np.float64)
