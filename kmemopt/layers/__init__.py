"""kmemopt's own serializable layers. Importing this package imports Keras and registers them.

Files written by `kmemopt shrink --allow-custom-layers` name these layers as `kmemopt>Int8Conv2D`
(and so on); `import kmemopt` before `keras.models.load_model` is enough to load them: kmemopt
registers the layers as soon as Keras is imported (see `kmemopt._layers_hook`).
"""

from __future__ import annotations

from kmemopt.layers.int8_conv import (
    INT8_CONV_CLASSES,
    Int8Conv1D,
    Int8Conv2D,
    Int8Conv2DTranspose,
    Int8Conv3D,
    Int8DepthwiseConv2D,
    Int8SeparableConv2D,
    int8_class_for,
    quantize_per_channel,
)

__all__ = [
    "INT8_CONV_CLASSES",
    "Int8Conv1D",
    "Int8Conv2D",
    "Int8Conv2DTranspose",
    "Int8Conv3D",
    "Int8DepthwiseConv2D",
    "Int8SeparableConv2D",
    "custom_objects",
    "int8_class_for",
    "quantize_per_channel",
]


def custom_objects() -> dict[str, type]:
    """The registered names of kmemopt's layers, for `keras.models.load_model(custom_objects=...)`."""
    return {f"kmemopt>{cls.__name__}": cls for cls in INT8_CONV_CLASSES.values()}
