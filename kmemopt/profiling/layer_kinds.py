"""Keras layer classes grouped by what they do to their channels and arithmetic, for the modules that
reason about layers by class name: FLOPs (`profiling.flops`) and channel pruning (`passes.channels`).

One list each, so a layer class added to Keras (or to kmemopt's rules) is added once.
"""

from __future__ import annotations

# Layers that move, pool, pad or repeat along the spatial (or time) axes and pass every channel through
# unchanged: no multiply-adds, and a channel at their input is the same channel at their output.
SPATIAL = frozenset(
    {
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "RepeatVector",
    }
)
# Elementwise merges of same-shaped tensors: channel i of every input meets channel i of the others.
MERGE = frozenset({"Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average"})
# Recurrent layers and their gate count (a kernel holds `gates` blocks of `units` columns).
RNN_GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}
