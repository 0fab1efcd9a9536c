"""Convolutions that store their kernels as int8 with one float32 scale per output channel.

Keras quantizes only Dense, EinsumDense and Embedding; a CNN's weights are almost all convolution
kernels. These subclasses of the Keras convolutions keep every behaviour of their parent (config,
padding, groups, causal Conv1D, ...) and change only how the kernels are stored: `build` creates an
int8 kernel and a `<kernel>_scale` variable instead of the float kernel, and `call` runs the parent's
call with the kernel dequantized to the compute dtype. The int8 kernels are not trainable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kmemopt._keras import import_keras

import_keras()  # Keras's environment (backend, quiet start-up) is set before the first `import keras`
import keras  # noqa: E402
from keras import ops  # noqa: E402

QMAX = 127


def quantize_per_channel(kernel: np.ndarray, keep_axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric abs-max int8 quantization; one scale for each index of `keep_axes` (negative axes).

    Returns `(q, scale)` with `scale` shaped like `kernel` with the reduced axes set to 1, so that
    `q * scale` approximates `kernel`.
    """
    kernel = np.asarray(kernel, dtype=np.float32)
    keep = {a % kernel.ndim for a in keep_axes}
    reduce = tuple(a for a in range(kernel.ndim) if a not in keep)
    amax = np.max(np.abs(kernel), axis=reduce, keepdims=True) if reduce else np.abs(kernel)
    scale = (amax / QMAX).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero channel (e.g. pruned): any scale reproduces it
    q = np.clip(np.rint(kernel / scale), -QMAX, QMAX).astype(np.int8)
    return q, scale


class _Int8KernelMixin:
    """Store the kernels named in `_INT8_KERNELS` ({variable name: kept axes}) as int8 + scale."""

    _INT8_KERNELS: dict[str, tuple[int, ...]] = {}
    # Provided by the Keras convolution this mixin always comes before (annotations only: no attribute).
    weights: list[Any]

    def add_weight(self, shape=None, initializer=None, dtype=None, trainable=True, name=None, **kwargs):
        keep = self._INT8_KERNELS.get(name)
        if keep is None:
            return super().add_weight(
                shape=shape, initializer=initializer, dtype=dtype, trainable=trainable, name=name, **kwargs
            )
        shape = tuple(int(d) for d in shape)
        keep_set = {a % len(shape) for a in keep}
        scale_shape = tuple(d if i in keep_set else 1 for i, d in enumerate(shape))
        q = super().add_weight(shape=shape, initializer="zeros", dtype="int8", trainable=False, name=name)
        scale = super().add_weight(
            shape=scale_shape, initializer="ones", dtype="float32", trainable=False, name=f"{name}_scale"
        )
        if not hasattr(self, "_int8_scales"):
            self._int8_scales = {}
        self._int8_scales[name] = scale
        return q

    def _int8_attribute(self, name: str) -> str:
        # Conv1D/2D/3D keep their kernel in `_kernel` behind a `kernel` property; the others in `kernel`.
        return f"_{name}" if f"_{name}" in vars(self) else name

    def call(self, inputs, *args, **kwargs):
        # The parent's call reads the kernel attributes directly, in each conv class its own way;
        # swapping in the dequantized tensors for the duration of the call reuses every one of them.
        # object.__setattr__ bypasses Keras's variable tracking, so nothing new is tracked.
        saved = {name: (attr, vars(self)[attr]) for name in self._INT8_KERNELS for attr in [self._int8_attribute(name)]}
        try:
            for name, (attr, q) in saved.items():
                scale = self._int8_scales[name]
                object.__setattr__(self, attr, ops.cast(q, self.compute_dtype) * ops.cast(scale, self.compute_dtype))
            return super().call(inputs, *args, **kwargs)
        finally:
            for attr, q in saved.values():
                object.__setattr__(self, attr, q)

    # Keras's convolutions save only [kernel, bias]; every variable here (int8 kernels, scales, bias)
    # is saved and loaded by the generic Layer implementation, by position.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def set_float_kernels(self, arrays: dict[str, np.ndarray]) -> None:
        """Assign float weights by variable name; the int8 kernels are quantized per channel here."""
        by_name = {v.name: v for v in self.weights}
        for name, value in arrays.items():
            if name in self._INT8_KERNELS:
                q, scale = quantize_per_channel(value, self._INT8_KERNELS[name])
                by_name[name].assign(q)
                self._int8_scales[name].assign(scale)
            else:
                by_name[name].assign(value)


def _register(cls):
    return keras.saving.register_keras_serializable(package="kmemopt")(cls)


@_register
class Int8Conv1D(_Int8KernelMixin, keras.layers.Conv1D):
    """`keras.layers.Conv1D` with an int8 kernel and a per-output-channel scale."""

    _INT8_KERNELS = {"kernel": (-1,)}


@_register
class Int8Conv2D(_Int8KernelMixin, keras.layers.Conv2D):
    """`keras.layers.Conv2D` with an int8 kernel and a per-output-channel scale."""

    _INT8_KERNELS = {"kernel": (-1,)}


@_register
class Int8Conv3D(_Int8KernelMixin, keras.layers.Conv3D):
    """`keras.layers.Conv3D` with an int8 kernel and a per-output-channel scale."""

    _INT8_KERNELS = {"kernel": (-1,)}


@_register
class Int8DepthwiseConv2D(_Int8KernelMixin, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` with an int8 kernel; one scale per (input channel, multiplier)."""

    _INT8_KERNELS = {"kernel": (-2, -1)}


@_register
class Int8SeparableConv2D(_Int8KernelMixin, keras.layers.SeparableConv2D):
    """`keras.layers.SeparableConv2D` with int8 depthwise and pointwise kernels, scaled per channel."""

    _INT8_KERNELS = {"depthwise_kernel": (-2, -1), "pointwise_kernel": (-1,)}


@_register
class Int8Conv2DTranspose(_Int8KernelMixin, keras.layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose` with an int8 kernel (kernel is (h, w, out, in): scale per out)."""

    _INT8_KERNELS = {"kernel": (-2,)}


# Keyed by the exact Keras class they replace: a subclass of Conv2D is someone else's layer.
INT8_CONV_CLASSES: dict[type, type] = {
    keras.layers.Conv1D: Int8Conv1D,
    keras.layers.Conv2D: Int8Conv2D,
    keras.layers.Conv3D: Int8Conv3D,
    keras.layers.DepthwiseConv2D: Int8DepthwiseConv2D,
    keras.layers.SeparableConv2D: Int8SeparableConv2D,
    keras.layers.Conv2DTranspose: Int8Conv2DTranspose,
}


def int8_class_for(layer_class: type) -> type | None:
    return INT8_CONV_CLASSES.get(layer_class)
