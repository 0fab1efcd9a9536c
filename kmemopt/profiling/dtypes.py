"""Bytes per element for every dtype Keras stores or computes in."""

from __future__ import annotations

from functools import cache


@cache
def itemsize(dtype) -> int:
    import ml_dtypes
    import numpy as np

    name = getattr(dtype, "name", None) or str(dtype)
    name = name.replace("tf.", "").replace("torch.", "")
    if name in ("bool", "uint8", "int8"):
        return 1
    special = getattr(ml_dtypes, name, None)
    return int(np.dtype(special if special is not None else name).itemsize)


def nbytes(shape, dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * itemsize(dtype)


def weight_totals(model) -> tuple[int, int]:
    """(parameters, bytes) of a built (possibly unallocated) model's weights: exact, needing no input
    shape, each variable counted once as the profile's per-layer rows count them."""
    params = size = 0
    seen: set[int] = set()
    for v in model.weights:
        if id(v) in seen:
            continue
        seen.add(id(v))
        n = 1
        for d in v.shape:
            n *= int(d)
        params += n
        size += nbytes(v.shape, v.dtype)
    return params, size
