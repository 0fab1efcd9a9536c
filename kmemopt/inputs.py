"""Synthetic model inputs: one recipe for the fidelity check and the measuring child.

Integer inputs are token ids below the smallest vocabulary the model embeds (so every Embedding
lookup is valid), booleans are fair coins, floats are standard normal. Deterministic for a seed.
"""

from __future__ import annotations

from typing import Any


def vocabulary_size(model: Any) -> int:
    """The smallest `input_dim` among the model's layers (Embedding and kin), at least 2; 2 if none."""
    from kmemopt.keras_compat.layers import flatten_layers

    sizes = [int(layer.input_dim) for layer in flatten_layers(model) if hasattr(layer, "input_dim")]
    return max(2, min(sizes)) if sizes else 2


def synthetic_array(rng: Any, shape: tuple[int, ...], dtype: str, vocabulary: int) -> Any:
    """One array of `shape` (batch first) and `dtype` drawn from `rng` (a NumPy Generator)."""
    import numpy as np

    if np.issubdtype(np.dtype(dtype), np.integer):
        return rng.integers(0, vocabulary, size=shape).astype(dtype)
    if np.dtype(dtype) == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(shape).astype(dtype)
