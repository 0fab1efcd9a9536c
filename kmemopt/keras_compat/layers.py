"""Model structure: leaf layers, model classes, functional-graph history.

Keras internals (contract "model_classes"): `Layer._flatten_layers`, `keras.src.models.functional.Functional`
(the class Keras gives functional models; `keras.Model` is its public base). The tensor attribute
`_keras_history` and a model's `_inputs_struct` are read with `getattr`, so a Keras without them gives
None (callers then treat the model as they do any other without that information).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def flatten_layers(layer: Any, *, include_self: bool = True, recursive: bool = True) -> Iterator[Any]:
    """`layer` (unless not `include_self`) and every layer it tracks, depth first (Keras's own walk,
    `Layer._flatten_layers`, which also sees layers held in attributes, not only `.layers`)."""
    kwargs = {k: v for k, v in (("include_self", include_self), ("recursive", recursive)) if not v}
    return layer._flatten_layers(**kwargs)  # only what differs from Keras's defaults


def functional_class() -> type:
    """Keras's functional model class (`keras.src.models.functional.Functional`)."""
    from kmemopt.keras_compat.contracts import require

    require("model_classes")
    from keras.src.models.functional import Functional

    return Functional


def is_functional(obj: Any) -> bool:
    return isinstance(obj, functional_class())


def is_sequential(obj: Any) -> bool:
    import keras

    return isinstance(obj, keras.Sequential)


def is_container(obj: Any) -> bool:
    """A model whose layers kmemopt expands: functional or Sequential."""
    return is_functional(obj) or is_sequential(obj)


def model_leaves(model: Any) -> Iterator[tuple[str, Any]]:
    """(path, layer) for every layer of `model`'s own graph, nested functional and Sequential models
    expanded (paths like `encoder/dense`), their InputLayers left out, in order. This is how the
    profile and the measuring child name layers.

    Iterative (a stack of layer iterators), so deep nesting costs no Python recursion."""
    InputLayer = input_layer_class()
    stack = [(iter(model.layers), "", model)]
    while stack:
        layers, prefix, owner = stack[-1]
        layer = next(layers, None)
        if layer is None:
            stack.pop()
        elif is_container(layer) and layer is not owner:
            stack.append((iter(layer.layers), prefix + layer.name + "/", layer))
        elif isinstance(layer, InputLayer) and len(stack) > 1:
            continue
        else:
            yield prefix + layer.name, layer


def tracked_leaves(model: Any, *, weighted: bool = False) -> list[tuple[str, Any]]:
    """(path, layer) for every layer Keras tracks under `model` that has no sublayers (with `weighted`,
    only those holding weights). Unlike `model_leaves` this also sees layers a subclassed layer or
    model holds in attributes (a keras-hub backbone's blocks), so it serves models whose config does
    not list their layers; paths are Keras's `layer.path` where it has one."""
    return [
        (getattr(layer, "path", None) or layer.name, layer)
        for layer in flatten_layers(model, include_self=False)
        if (not weighted or layer.weights) and not list(flatten_layers(layer, include_self=False))
    ]


def input_layer_class() -> type:
    import keras

    return keras.layers.InputLayer


def keras_history(tensor: Any) -> Any:
    """The (operation, node_index, tensor_index) record Keras keeps on a symbolic tensor, or None."""
    return getattr(tensor, "_keras_history", None)


def inputs_struct(model: Any) -> Any:
    """The structure (dict, list, single) a functional model's inputs were given in, or None."""
    return getattr(model, "_inputs_struct", None)
