"""Architecture without weights: the stateless-scope trick lives here and nowhere else.

Inside Keras's private `StatelessScope(initialize_variables=False)`, variables are created with their
shapes and dtypes but no values, so a model of billions of parameters "builds" in seconds with
almost no memory. Everything kmemopt counts statically comes from a model built this way.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import numpy as np

from kmemopt.archive import ModelFile
from kmemopt.errors import MalformedModelError
from kmemopt.model_size import ModelSize, check_model_size
from kmemopt.trust import Allowlist, build_allowlist, check_config


@contextlib.contextmanager
def unallocated(allow_constants: bool = False) -> Iterator[list[Any]]:
    """Variables created inside get shapes and dtypes but no memory, now and later.

    Keras keeps every variable created in a stateless scope on a global "uninitialized" list and
    initializes (allocates) the whole list when any top-level stateless scope exits, which
    TensorFlow's shape inference opens for every layer without its own `compute_output_spec`. So
    everything that touches unallocated models (building, tracing, optimizer building) runs inside
    this scope, whose nesting keeps those inner scopes from initializing anything, and the variables
    created here are taken off that list on exit: nothing ever allocates them behind our back.

    With `allow_constants`, a variable created from a concrete value (a scalar some optimizers make
    in `build`, e.g. Nadam's running product) is created normally instead of being refused: such
    values are already in memory and tiny. Slots created from initializers stay unallocated.

    Yields a list that holds, on exit, the variables created inside and left unallocated.
    """
    from keras.src.backend.common import global_state
    from keras.src.backend.common.stateless_scope import StatelessScope, in_stateless_scope
    from keras.src.backend.common.variables import Variable as KerasVariable

    outermost = not in_stateless_scope()
    before = list(global_state.get_global_attribute("uninitialized_variables") or [])
    original = KerasVariable.__init__

    def init(self, initializer, *args, **kwargs):
        if in_stateless_scope() and not callable(initializer) and not isinstance(initializer, str):
            scope = global_state.get_global_attribute("stateless_scope")
            global_state.set_global_attribute("stateless_scope", None)
            try:
                return original(self, initializer, *args, **kwargs)
            finally:
                global_state.set_global_attribute("stateless_scope", scope)
        return original(self, initializer, *args, **kwargs)

    created: list[Any] = []
    if allow_constants:
        KerasVariable.__init__ = init
    try:
        with StatelessScope(initialize_variables=False):
            yield created
    finally:
        KerasVariable.__init__ = original
        keep = {id(v) for v in before}
        current = global_state.get_global_attribute("uninitialized_variables") or []
        created.extend(v for v in current if id(v) not in keep)
        if outermost:
            global_state.set_global_attribute("uninitialized_variables", [v for v in current if id(v) in keep])


@contextlib.contextmanager
def assign_initializes() -> Iterator[None]:
    """Inside, `variable.assign(value)` on an unallocated variable allocates it from `value`.

    With `unallocated()` this builds a model whose variables come straight from their final values
    (a file's weights, a transformed copy): no initializer runs, so no random values are computed
    and thrown away, and the model never holds its weights twice.

    On TensorFlow a NumPy value (or a `read_into` dataset, read straight from the file) is written
    once into an aligned array that the variable then uses as its own buffer (DLPack, no copy):
    TensorFlow's own conversion of a NumPy array allocates twice its size on the way.
    """
    from keras.src import backend
    from keras.src.backend import Variable
    from keras.src.backend.common.variables import Variable as KerasVariable

    original_direct = Variable._direct_assign
    original_assign = KerasVariable.assign
    tensorflow = backend.backend() == "tensorflow"

    def direct_assign(self, value):
        if self._value is None:
            self._initialize(value)
            self._initializer = None
        else:
            original_direct(self, value)

    def assign(self, value):
        if tensorflow and self._value is None and (isinstance(value, np.ndarray) or hasattr(value, "read_into")):
            adopted = _adopt_buffer(value, self)
            if adopted is not None:
                self._initialize(adopted)
                self._initializer = None
                return adopted
        if hasattr(value, "read_into"):
            value = np.asarray(value)
        return original_assign(self, value)

    Variable._direct_assign = direct_assign
    KerasVariable.assign = assign
    try:
        yield
    finally:
        Variable._direct_assign = original_direct
        KerasVariable.assign = original_assign


ADOPTABLE_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"})
ALIGNMENT = 64  # TensorFlow's tensor alignment (EIGEN_MAX_ALIGN_BYTES)


def aligned_empty(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """An uninitialized array whose data starts on a 64-byte boundary."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    return raw[offset : offset + nbytes].view(dt).reshape(shape)


def _adopt_buffer(value, variable):
    """A TensorFlow tensor over a new aligned array holding `value` in the variable's dtype, or None when
    that cannot be done here (the caller then takes Keras's own path, which also reports bad shapes)."""
    dtype = str(variable._dtype)
    shape = tuple(int(d) for d in variable.shape)
    if dtype not in ADOPTABLE_DTYPES or tuple(value.shape) != shape or not shape:
        return None
    import tensorflow as tf

    if hasattr(value, "read_into") and np.dtype(value.dtype) != np.dtype(dtype):
        return None
    out = aligned_empty(shape, dtype)
    if hasattr(value, "read_into"):
        value.read_into(out)
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf, as TensorFlow's cast
            np.copyto(out, value, casting="unsafe")  # equals Keras's cast to the variable's dtype (tested)
    try:
        return tf.experimental.dlpack.from_dlpack(out.__dlpack__())
    except (TypeError, ValueError, RuntimeError, tf.errors.InvalidArgumentError):
        return None


def allocate_rest(variables: list[Any]) -> None:
    """Allocate, from their initializers, the variables nothing assigned (state no file stores)."""
    for v in variables:
        if getattr(v, "_value", None) is None and getattr(v, "_initializer", None) is not None:
            v._deferred_initialize()


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

    The limits (`kmemopt.model_size`, rule MODEL-SIZE) are counted from the config before Keras sees it,
    and Keras then gets the room they promise: see `keras_room`."""
    from kmemopt._keras import import_keras

    size = check_model_size(config)
    keras = import_keras()
    from keras.src.saving import serialization_lib

    try:
        with unallocated(), keras_room(size):
            if legacy:
                from keras.src.legacy.saving import saving_utils

                model = saving_utils.model_from_config(config, custom_objects=custom_objects)
            else:
                with serialization_lib.ObjectSharingScope():
                    model = serialization_lib.deserialize_keras_object(
                        config, custom_objects=custom_objects, safe_mode=True
                    )
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


@contextlib.contextmanager
def keras_room(size: ModelSize) -> Iterator[None]:
    """Inside, Keras rebuilds a model within `kmemopt.model_size`'s limits in linear time, without RecursionError.

    Keras's `Sequential.from_config` rebuilds the whole model after adding each layer (quadratic: a
    400-layer Sequential took minutes); here each Sequential is built once, after its last layer, which
    gives the same model. Keras walks a functional graph (a Sequential's too) recursively, one frame a
    layer call on the path it follows, and deserializes nested models recursively: the recursion limit
    is raised for the graph depth and nesting the config declares (both capped by the limits, so the
    stack stays small; Python 3.11 runs Python-to-Python calls without growing the C stack)."""
    import sys

    from keras.src.models.sequential import Sequential

    original = Sequential.__dict__["from_config"]
    limit = sys.getrecursionlimit()
    needed = _stack_depth() + FRAMES_PER_CALL * size.graph_depth + FRAMES_PER_NESTING * (size.nesting + 1) + 200
    Sequential.from_config = classmethod(_sequential_from_config)
    sys.setrecursionlimit(max(limit, needed))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)
        Sequential.from_config = original


FRAMES_PER_CALL = 2  # Keras's graph walk: one frame a layer call (2 leaves room for wrappers)
FRAMES_PER_NESTING = 60  # deserializing and building one nested model (measured: about 30)


def _stack_depth() -> int:
    import sys

    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def _sequential_from_config(cls, config, custom_objects=None):
    """Keras 3.15's `Sequential.from_config`, building the model once instead of after every layer."""
    from keras.src.legacy.saving import saving_utils
    from keras.src.saving import serialization_lib

    if "name" not in config:
        raise ValueError(
            "A Sequential model configuration must be a dictionary containing the 'name' and 'layers' keys. "
            f"Received: config keys={sorted(config)[:10]}"
        )
    build_input_shape = config.get("build_input_shape")
    model = cls(name=config["name"])
    for layer_config in config["layers"]:
        if "module" not in layer_config:  # legacy (h5) layer configs
            layer = saving_utils.model_from_config(layer_config, custom_objects=custom_objects)
        else:
            layer = serialization_lib.deserialize_keras_object(layer_config, custom_objects=custom_objects)
        model.add(layer, rebuild=False)
    if model._layers:
        model._maybe_rebuild()  # what Keras's last `add` does, the earlier rebuilds being overwritten
    if not model._functional and build_input_shape and isinstance(build_input_shape, (tuple, list)):
        model.build(build_input_shape)
    return model


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
