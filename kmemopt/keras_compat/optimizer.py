"""Optimizer slots on unallocated variables.

Keras internals (contract "optimizer_slots"): `keras.src.optimizers.base_optimizer.BaseOptimizer`'s
`_var_key` and `add_variable_from_reference`, bound onto a backend optimizer instance.
"""

from __future__ import annotations

from typing import Any


def use_backend_neutral_methods(optimizer: Any) -> bool:
    """Make `optimizer` key and create slots as the backend-neutral base class does, so building it
    never reads a variable's value. False (with a one-line warning) when this Keras does not allow it:
    the backend's own build then runs, which allocates every unallocated weight it touches.

    TensorFlow's optimizer reads `variable.value` to key and colocate slots, and an unallocated
    variable answers that by running its initializer: a full allocation of every weight. The base
    class keys variables by identity and creates slots from shapes alone."""
    import types

    from kmemopt.keras_compat.contracts import usable

    if not usable("optimizer_slots"):
        return False
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    optimizer._var_key = types.MethodType(BaseOptimizer._var_key, optimizer)
    optimizer.add_variable_from_reference = types.MethodType(BaseOptimizer.add_variable_from_reference, optimizer)
    return True
