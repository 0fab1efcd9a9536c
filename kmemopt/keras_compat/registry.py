"""Keras's registry and its own classes, as the allowlist (`kmemopt.load.trust`) needs them.

Keras internals (contract "model_classes", required: the allowlist has no public equivalent, so a Keras
without them is refused with one sentence, never allowed by default): `keras.src.saving.object_registration.
GLOBAL_CUSTOM_OBJECTS`, `keras.src.api_export.get_symbol_from_name`, `keras.src.ops.operation.Operation`,
the `keras.src.ops.*` modules' Operation classes, the `keras.src.applications` modules' own layers,
`keras.src.models.functional.Functional`, and the `ALL_OBJECTS_DICT` lookup tables of
`keras.src.{activations,initializers,regularizers,constraints,losses,metrics,optimizers}`.

The module names below are data: what a serialized config's `module` may say (Keras writes its own
objects under their internal modules).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from typing import Any

from kmemopt.keras_compat.contracts import require

PRIVATE_PREFIX = "keras.src."  # where Keras's own objects live (and what their configs name)
OPS_NAMESPACES = (
    "keras.src.ops.numpy",
    "keras.src.ops.nn",
    "keras.src.ops.math",
    "keras.src.ops.image",
    "keras.src.ops.linalg",
    "keras.src.ops.core",
)
# Where every allowed built-in function is defined.
FUNCTION_SOURCES = ("keras.src.activations", "keras.src.losses", "keras.src.metrics")


def registered_objects() -> dict[str, Any]:
    """Keras's global registry of serializable objects (the dict itself: it grows as packages register)."""
    require("model_classes")
    from keras.src.saving import object_registration

    return object_registration.GLOBAL_CUSTOM_OBJECTS


def operation_class() -> type:
    """`keras.src.ops.operation.Operation`: the base of layers, models and tensor operations."""
    require("model_classes")
    from keras.src.ops.operation import Operation

    return Operation


def operation_classes(excluded: frozenset[str]) -> Iterator[type]:
    """The Operation classes defined in Keras's ops modules (what `keras.ops.add(x, y)` in a functional
    graph serializes as), but those named in `excluded`."""
    operation = operation_class()
    for ns in OPS_NAMESPACES:
        mod = importlib.import_module(ns)
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, operation) and obj.__module__ == ns and name not in excluded:
                yield obj


def application_layers(layer_class: type) -> Iterator[type]:
    """Layers that keras.applications models define for themselves (ConvNeXt's LayerScale), saved under
    their internal module: each `keras.src.applications` module's own `layer_class` subclasses."""
    require("model_classes")
    import keras.src.applications as applications

    for info in pkgutil.iter_modules(applications.__path__, "keras.src.applications."):
        if info.name.endswith("_test"):
            continue
        mod = importlib.import_module(info.name)  # a fixed package of Keras's, never the file's
        for obj in vars(mod).values():
            if inspect.isclass(obj) and issubclass(obj, layer_class) and obj.__module__ == info.name:
                yield obj


def model_classes() -> tuple[type, type]:
    """(Functional, Sequential): the classes functional and sequential models are serialized as."""
    import keras

    from kmemopt.keras_compat.layers import functional_class

    return functional_class(), keras.Sequential


def symbol_from_name(name: str) -> Any:
    """What Keras's public-API table maps a dotted name to ("keras.layers.Dense"), or None."""
    require("model_classes")
    from keras.src.api_export import get_symbol_from_name

    return get_symbol_from_name(name)


def lookup_tables() -> dict[str, dict[str, Any]]:
    """The fixed tables `activations.get` and its kin resolve a string in, keyed by the config key."""
    require("model_classes")
    from keras.src import activations, constraints, initializers, losses, metrics, optimizers, regularizers

    return {
        "activation": activations.ALL_OBJECTS_DICT,
        "initializer": initializers.ALL_OBJECTS_DICT,
        "regularizer": regularizers.ALL_OBJECTS_DICT,
        "constraint": constraints.ALL_OBJECTS_DICT,
        "loss": losses.ALL_OBJECTS_DICT,
        "metrics": metrics.ALL_OBJECTS_DICT,
        "weighted_metrics": metrics.ALL_OBJECTS_DICT,
        "optimizer": optimizers.ALL_OBJECTS_DICT,  # keyed by lower-case name
    }


def layers_module_globals() -> dict[str, Any]:
    """`keras.src.layers`'s module globals: what the legacy (.h5) loader resolves a string among."""
    from keras.src import layers

    return vars(layers)
