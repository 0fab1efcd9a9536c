"""Keras's own int8/int4 quantization, computed in slices so a large kernel is not copied four times.

Keras 3.15's `abs_max_quantize(..., to_numpy=True)` (what `Dense.quantize`, `EinsumDense.quantize` and
`Embedding.quantize` use) copies the whole kernel to NumPy and then makes a new full-size float32 array
for each of multiply, round and clip: about 4x the kernel at once (VGG16's 411 MB fc1 kernel took shrink
to 2.2 GB above its baseline). `lean_abs_max_quantize` does the same float32 arithmetic slice by slice
along the first axis, reading each slice from the variable: the result is bit for bit Keras's (tested),
the memory one int8 copy of the kernel plus a slice. During `keras_quantization()` Keras's layers call it
instead of their own; every other quantizer call goes to Keras unchanged (int4, which Keras 3.15
quantizes in groups with zero points by default, included).

Keras internals (contract "lean_quantization"): `keras.src.quantizers.quantizers.abs_max_quantize` and
its re-export in `keras.src.quantizers` (patched for the duration), `keras.src.backend`/`keras.src.ops`.
Without them `keras_quantization()` patches nothing: `model.quantize` then runs as Keras ships it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

SLICE_BYTES = 16 * 2**20  # float32 bytes of one slice
LEAN_FROM_BYTES = 32 * 2**20  # smaller kernels go through Keras's own function


def _reduced_axes(axis, ndim: int) -> tuple[int, ...]:
    axes = axis if isinstance(axis, (list, tuple)) else (axis,)
    return tuple(sorted(a % ndim for a in axes))


def lean_abs_max_quantize(inputs, axis, value_range=(-127, 127), dtype="int8", epsilon=None, to_numpy=False):
    """`keras.quantizers.abs_max_quantize` with `to_numpy=True`, slice by slice (same values).

    Keras internals: `keras.src.backend` (`epsilon`, `standardize_dtype`) and `keras.src.ops`."""
    from keras.src import backend, ops

    if epsilon is None:
        epsilon = backend.epsilon()
    shape = tuple(int(d) for d in inputs.shape)
    original_dtype = backend.standardize_dtype(inputs.dtype)
    ndim = len(shape)
    axes = _reduced_axes(axis, ndim) if ndim else ()
    rows = shape[0] if ndim else 0
    row_bytes = (int(np.prod(shape[1:])) if ndim > 1 else 1) * 4
    step = max(1, SLICE_BYTES // max(row_bytes, 1))

    def piece(start: int, stop: int) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(inputs[start:stop]), dtype=np.float32)

    # Pass 1: the absolute maximum over `axes`. Along axis 0 it is combined over slices (the maximum is
    # exact in any order); otherwise each slice gives its own rows of it.
    reduce_first = 0 in axes
    maxima = None
    parts = []
    for start in range(0, rows, step):
        m = np.max(np.abs(piece(start, start + step)), axis=axes, keepdims=True)
        if reduce_first:
            maxima = m if maxima is None else np.maximum(maxima, m)
        else:
            parts.append(m)
    if not reduce_first:
        maxima = np.concatenate(parts, axis=0)
    scale = np.divide(value_range[1], np.add(maxima, epsilon))

    # Pass 2: multiply, round, clip and cast each slice, as Keras does to the whole array.
    out = np.empty(shape, dtype=dtype)
    for start in range(0, rows, step):
        x = piece(start, start + step)
        s = scale if reduce_first else scale[start : start + step]
        np.multiply(x, s, out=x)
        np.round(x, out=x)
        np.clip(x, value_range[0], value_range[1], out=x)
        out[start : start + step] = x.astype(dtype)
    return ops.convert_to_tensor(out), ops.convert_to_tensor(scale, dtype=original_dtype)


@contextlib.contextmanager
def keras_quantization() -> Iterator[None]:
    """Inside, Keras's layers quantize large kernels through `lean_abs_max_quantize`.

    Keras internals (contract "lean_quantization"): `keras.src.quantizers.quantizers.abs_max_quantize` and
    `keras.src.quantizers.abs_max_quantize`, both replaced inside; without them nothing is patched."""
    from kmemopt.keras_compat.contracts import usable

    if not usable("lean_quantization"):
        yield
        return
    import keras.src.quantizers as package
    from keras.src.quantizers import quantizers as module

    original = module.abs_max_quantize

    def abs_max_quantize(inputs, axis, value_range=(-127, 127), dtype="int8", epsilon=None, to_numpy=False):
        kwargs = {} if epsilon is None else {"epsilon": epsilon}
        shape = tuple(getattr(inputs, "shape", ()))
        big = len(shape) >= 2 and int(np.prod(shape)) * 4 >= LEAN_FROM_BYTES
        dtype_name = str(getattr(inputs, "dtype", ""))
        if to_numpy and big and axis is not None and "float32" in dtype_name:
            return lean_abs_max_quantize(inputs, axis, value_range, dtype, epsilon, to_numpy)
        return original(inputs, axis, value_range=value_range, dtype=dtype, to_numpy=to_numpy, **kwargs)

    module.abs_max_quantize = abs_max_quantize
    package.abs_max_quantize = abs_max_quantize
    try:
        yield
    finally:
        module.abs_max_quantize = original
        package.abs_max_quantize = original
