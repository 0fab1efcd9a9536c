"""kmemopt: where a Keras model's memory goes, and how to make it smaller.

The package imports nothing heavy at import time (`kmemopt --help` stays instant); Keras is imported
by the functions below when they are called.

Example:
    >>> import kmemopt
    >>> result = kmemopt.profile("model.keras", batch_size=64)
    >>> result.totals.training_peak_bytes
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from kmemopt.profiling.static import ProfileResult

__all__ = ["__version__", "load_model", "profile"]


def profile(
    path_or_model: Any,
    *,
    batch_size: int = 32,
    optimizer: Any = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    seq_len: int | None = None,
    budget: int | str | None = None,
    custom_objects: dict[str, Any] | str | None = None,
) -> ProfileResult:
    """Profile a saved model file (`.keras` or legacy `.h5`) or an in-memory `keras.Model`.

    Weights are never read from a file: the architecture is rebuilt without allocating variables
    after the config passed kmemopt's allowlist. Returns a `ProfileResult` (see `to_dict()`).

    Example:
        >>> r = kmemopt.profile("sample_models/digits_cnn.keras", batch_size=64, budget="2 GiB")
        >>> r.totals.params, r.budget.max_training_batch
    """
    from kmemopt.api import profile as _profile

    return _profile(
        path_or_model, batch_size=batch_size, optimizer=optimizer, input_shapes=input_shapes,
        seq_len=seq_len, budget=budget, custom_objects=custom_objects,
    )


def load_model(path: Any, *, custom_objects: dict[str, Any] | str | None = None, compile: bool = False):
    """Load a model with its weights, after the same safety checks `profile` applies.

    Example:
        >>> model = kmemopt.load_model("sample_models/digits_mlp.keras")
    """
    from kmemopt.api import load_model as _load

    return _load(path, custom_objects=custom_objects, compile=compile)
