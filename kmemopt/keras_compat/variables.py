"""Variables without memory, allocated later straight from their values: Keras's stateless scope.

Inside Keras's private `StatelessScope(initialize_variables=False)`, variables are created with their
shapes and dtypes but no values, so a model of billions of parameters "builds" in seconds with
almost no memory. Everything kmemopt counts statically comes from a model built this way.

Keras internals (contract "unallocated_build"): `keras.src.backend.common.stateless_scope`
(`StatelessScope`, `in_stateless_scope`), `global_state`'s "uninitialized_variables" and
"stateless_scope" attributes, `Variable.__init__` / `Variable.assign` / `Variable._deferred_initialize`
of `keras.src.backend.common.variables`, and the backend `Variable._direct_assign` / `_initialize` /
`_value` / `_initializer`. Without them (`contracts.usable` answers False) `unallocated` builds with
every variable allocated and `assign_initializes` leaves Keras's assignment alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from kmemopt.keras_compat.contracts import usable


def lean_build_available() -> bool:
    """Whether `unallocated` really leaves variables unallocated here (warns once when not)."""
    return usable("unallocated_build")


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

    Keras internals: `StatelessScope(initialize_variables=False)`, `in_stateless_scope`, the global
    "uninitialized_variables" and "stateless_scope" attributes, `Variable.__init__` (patched with
    `allow_constants`). Contract "unallocated_build".

    Yields a list that holds, on exit, the variables created inside and left unallocated (always
    empty when the contract does not hold: then every variable is allocated as Keras creates it).
    """
    if not lean_build_available():
        yield []
        return
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

    Keras internals: the backend `Variable._direct_assign` and `keras.src.backend.common.variables.
    Variable.assign` (both patched inside), `_initialize`, `_value`, `_initializer`. Contract
    "unallocated_build"; without it the variables were allocated when built, and Keras assigns as usual.
    """
    if not lean_build_available():
        yield
        return
    from keras.src import backend
    from keras.src.backend import Variable
    from keras.src.backend.common.variables import Variable as KerasVariable

    original_direct = Variable._direct_assign
    original_assign = KerasVariable.assign
    tensorflow = backend.backend() == "tensorflow"

    initializing: set[int] = set()  # ids of variables inside their own `_initialize`

    def direct_assign(self, value):
        # JAX's `_initialize` ends by calling `_direct_assign` itself (TensorFlow's makes its tf.Variable
        # directly): inside it, the backend's own assignment runs, not a second `_initialize`.
        if self._value is None and id(self) not in initializing:
            initializing.add(id(self))
            try:
                self._initialize(value)
            finally:
                initializing.discard(id(self))
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
    """Allocate, from their initializers, the variables nothing assigned (state no file stores).

    Keras internals: `Variable._deferred_initialize`, `_value`, `_initializer`."""
    for v in variables:
        if getattr(v, "_value", None) is None and getattr(v, "_initializer", None) is not None:
            v._deferred_initialize()


def free_variable(variable: Any) -> None:
    """Drop `variable`'s backend value so its memory can be reused; `allocate_rest` or an assignment
    inside `assign_initializes` allocates it again (Keras internal: the backend `Variable._value`)."""
    variable._value = None


def is_unallocated(variable: Any) -> bool:
    """Whether `variable` has no backend value (built unallocated or freed)."""
    return getattr(variable, "_value", 0) is None


def can_move_value(source: Any, target: Any) -> bool:
    """`target` (unallocated) can take over `source`'s backend variable as it is (TensorFlow only)."""
    import keras

    if keras.backend.backend() != "tensorflow" or not lean_build_available():
        return False
    import tensorflow as tf

    return (
        is_unallocated(target)
        and isinstance(getattr(source, "_value", None), tf.Variable)
        and source._dtype == target._dtype
        and tuple(source.shape) == tuple(target.shape)
        and bool(source.trainable) == bool(target.trainable)
    )


def move_value(source: Any, target: Any) -> None:
    """Give `source`'s backend variable to `target` (nothing is copied) and free `source`
    (Keras internals: the backend `Variable._initialize`, `_initializer`, `_value`)."""
    target._initialize(source._value)
    target._initializer = None
    source._value = None
