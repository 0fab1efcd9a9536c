"""Architecture without weights, after the allowlist check.

The model is built inside `keras_compat.variables.unallocated` (Keras's stateless scope): variables get
their shapes and dtypes but no values, so a model of billions of parameters "builds" in seconds with
almost no memory. Everything kmemopt counts statically comes from a model built this way.
"""

from __future__ import annotations

import copy
from typing import Any

from kmemopt.errors import MalformedModelError, UsageError
from kmemopt.keras_compat.contracts import KERAS_TESTED
from kmemopt.keras_compat.saving import deserialize_model, keras_room
from kmemopt.keras_compat.variables import lean_build_available, unallocated
from kmemopt.load.archive import ModelFile
from kmemopt.load.model_size import check_model_size
from kmemopt.load.trust import Allowlist, build_allowlist, check_config


def checked_configs(model_file: ModelFile, allow: Allowlist) -> None:
    """Run the allowlist over everything in the file that Keras could deserialize."""
    legacy = model_file.format == "h5"  # the legacy loader resolves more strings to objects
    check_config(model_file.config, allow, root="$", legacy=legacy)
    if model_file.compile_config is not None:
        check_config(model_file.compile_config, allow, root="$.compile_config", legacy=legacy)


def build_from_file(
    model_file: ModelFile,
    custom_objects: dict[str, Any] | None = None,
    allow: Allowlist | None = None,
    *,
    require_built: bool = True,
):
    """The model's architecture, built without allocating its variables, after the allowlist check.

    `require_built=False` accepts a model saved before it was ever built (it has no weights yet):
    loading it is fine, sizing it is not."""
    allow = allow or build_allowlist(custom_objects)
    checked_configs(model_file, allow)
    _check_allocating_build(model_file)
    config = copy.deepcopy(model_file.config)
    config.pop("compile_config", None)  # the optimizer is built separately, also unallocated
    return build_from_config(
        config, legacy=model_file.format == "h5", custom_objects=allow.custom_objects, require_built=require_built
    )


def build_from_config(
    config: dict[str, Any],
    *,
    legacy: bool = False,
    custom_objects: dict[str, Any] | None = None,
    require_built: bool = True,
):
    """The model a config describes, built unallocated; refused first if over kmemopt's size limits.

    The limits (`kmemopt.load.model_size`, rule MODEL-SIZE) are counted from the config before Keras sees it,
    and Keras then gets the room they promise: see `keras_room`."""
    from kmemopt._keras import import_keras

    size = check_model_size(config)
    keras = import_keras()
    try:
        with unallocated(), keras_room(size):
            model = deserialize_model(config, legacy=legacy, custom_objects=custom_objects)
    # RuntimeError and RecursionError too: Keras raises them on malformed functional graphs (an input
    # layer that does not exist, found by fuzzing in tests/test_fuzz_readers.py): exit 3, not 4.
    except (
        TypeError,
        ValueError,
        KeyError,
        AttributeError,
        IndexError,
        NotImplementedError,
        RuntimeError,
        RecursionError,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MalformedModelError(
            f"Keras could not rebuild the architecture from the file's config: {first[:300]}"
        ) from exc
    if not isinstance(model, keras.Model):
        raise MalformedModelError(f"The file's config describes a {type(model).__name__}, not a Keras model.")
    if require_built and not model.built:
        raise MalformedModelError(
            "The saved model was never built (no input shape is known), so its weights cannot be sized; "
            "build it (call it on data or give it an Input) before saving."
        )
    return model


def _check_allocating_build(model_file: ModelFile) -> None:
    """Where the installed Keras cannot build unallocated, a build allocates every weight: only for a
    file whose stored weights fit in kmemopt's default memory limit; refused in one sentence otherwise."""
    if lean_build_available():
        return
    from kmemopt.sandbox import default_max_memory
    from kmemopt.units import format_bytes

    need, limit = model_file.composition.weights_declared_bytes, default_max_memory()
    if need > limit:
        raise UsageError(
            f"This Keras cannot build a model without allocating its weights, and {model_file.path}'s "
            f"{format_bytes(need)} of weights exceed the {format_bytes(limit)} kmemopt allows; install a "
            f"tested Keras (pip install 'keras{KERAS_TESTED}')."
        )


def make_optimizer(identifier: Any) -> Any:
    """A fresh, unbuilt Keras optimizer from a name, a serialized config or an Optimizer instance."""
    from kmemopt._keras import import_keras
    from kmemopt.errors import UsageError

    keras = import_keras()
    try:
        if isinstance(identifier, keras.optimizers.Optimizer):
            return identifier.__class__.from_config(identifier.get_config())
        if isinstance(identifier, str):
            # Keras's own lookup knows lower-case aliases; accept any Optimizer class name too.
            wanted = identifier.strip().lower()
            for name in dir(keras.optimizers):
                cls = getattr(keras.optimizers, name)
                if name.lower() == wanted and isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer):
                    return cls()
            identifier = wanted
        return keras.optimizers.get(identifier)
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(
            f"Unknown optimizer {identifier!r}; use a Keras optimizer name such as adam, adamw, sgd, "
            "rmsprop, adagrad, adadelta, adamax, nadam, ftrl, lion, lamb or adafactor."
        ) from exc
