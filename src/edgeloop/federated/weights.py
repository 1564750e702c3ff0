"""The flat layout of a softmax-regression model on the wire: theta = [W (d x C) row-major, b (C)], float32.

Standardisation (mean, inv_std) travels beside theta and is fixed for a round (the global model's),
so every edge's update lives in the same coordinates and can be averaged.
"""
from __future__ import annotations

import numpy as np

#: Bounds on what a peer may send (features, classes): a weight vector of at most ~4 MiB.
MAX_FEATURES = 4096
MAX_CLASSES = 256


class WeightsError(ValueError):
    """Bytes or shapes that are not a weight vector; the message names the field, value and expectation."""


def _cut(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def theta_size(n_features: int, n_classes: int) -> int:
    return (n_features + 1) * n_classes


def pack(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(W (d, C), b (C)) -> flat float64 theta."""
    return np.concatenate([np.asarray(w, np.float64).ravel(), np.asarray(b, np.float64).ravel()])


def unpack(theta: np.ndarray, n_features: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat theta -> (W (d, C), b (C)) as float64 views."""
    theta = np.asarray(theta, np.float64)
    cut = n_features * n_classes
    return theta[:cut].reshape(n_features, n_classes), theta[cut:]


def to_bytes(vector: np.ndarray) -> bytes:
    """A float vector as little-endian float32 bytes (the wire form)."""
    return np.asarray(vector, "<f4").tobytes()


def from_bytes(field: str, data: bytes, expected_len: int) -> np.ndarray:
    """Wire bytes -> float64 vector of ``expected_len`` finite values, or WeightsError naming ``field``."""
    if len(data) != 4 * expected_len:
        raise WeightsError(f"{field}: {len(data)} bytes; expected {4 * expected_len} (float32 x {expected_len})")
    vec = np.frombuffer(data, "<f4").astype(np.float64)
    if not np.all(np.isfinite(vec)):
        raise WeightsError(f"{field}: {int((~np.isfinite(vec)).sum())} non-finite values; expected finite floats")
    return vec


def check_shape(n_features: int, n_classes: int) -> None:
    if not 1 <= n_features <= MAX_FEATURES:
        raise WeightsError(f"n_features: {_cut(n_features)}; expected 1..{MAX_FEATURES}")
    if not 2 <= n_classes <= MAX_CLASSES:
        raise WeightsError(f"n_classes: {_cut(n_classes)}; expected 2..{MAX_CLASSES}")


__all__ = ["MAX_CLASSES", "MAX_FEATURES", "WeightsError", "check_shape", "from_bytes", "pack", "theta_size",
           "to_bytes", "unpack"]
