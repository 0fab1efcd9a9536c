"""What kmemopt assumes of Keras's internals, checked before each use.

Every private Keras symbol that `kmemopt.keras_compat` uses is listed here, in a `Contract` with the
parameters kmemopt calls it with. `holds(name)` checks a contract against the installed Keras (the
symbols are there, their signatures start as expected); `usable(name)` does the same and, when the
contract does not hold (a Keras newer than `KERAS_TESTED`), warns once, in one line, what gets slower
and answers False, so the operation takes Keras's public path instead. tests/test_keras_contracts.py
checks every contract on the installed Keras.

A contract whose `fallback` is None has no public path: `require(name)` then refuses with a
`UsageError` telling the user to install a tested Keras (exit 2: it is not the file's fault, and not a
kmemopt bug either).
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from dataclasses import dataclass
from typing import Any

from kmemopt.errors import UsageError

# The Keras versions whose internals these contracts were written and tested against; pyproject.toml
# declares the same range (tests/test_keras_contracts.py checks that they agree).
KERAS_TESTED = ">=3.15.1,<3.16"


class KerasCompatWarning(UserWarning):
    """A Keras internal kmemopt relies on is not as expected: kmemopt took the public (slower) path."""


@dataclass(frozen=True)
class Symbol:
    """One private Keras symbol: `module` (imported) then `attr` (dotted, e.g. "Variable.assign").

    `params`, when given, are parameter names its signature must have, in that order (kmemopt passes
    them by position or by name; other parameters may sit between them)."""

    module: str
    attr: str = ""
    params: tuple[str, ...] | None = None

    def __str__(self) -> str:
        return f"{self.module}.{self.attr}" if self.attr else self.module

    def problem(self) -> str | None:
        """What is wrong with this symbol in the installed Keras, or None."""
        obj: Any
        try:
            obj = importlib.import_module(self.module)
        except ImportError:
            return f"{self.module} cannot be imported"
        for part in self.attr.split(".") if self.attr else ():
            if not hasattr(obj, part):
                return f"{self} is missing"
            obj = getattr(obj, part)
        if self.params is not None:
            func = obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj
            try:
                names = tuple(inspect.signature(func).parameters)
            except (TypeError, ValueError):
                return f"{self} has no signature"
            rest = iter(names)
            if not all(p in rest for p in self.params):  # a subsequence, in order
                return f"{self} takes ({', '.join(names)}), not ({', '.join(self.params)})"
        return None


@dataclass(frozen=True)
class Contract:
    """A named operation's private dependencies, and what happens without them.

    `slower` says, for the warning, what the public path costs ("loading holds 2x the weights");
    `fallback` names the public path, None when there is none (then the operation is required)."""

    name: str
    symbols: tuple[Symbol, ...]
    slower: str
    fallback: str | None

    def problems(self) -> list[str]:
        return [p for p in (s.problem() for s in self.symbols) if p is not None]


_VARS = "keras.src.backend.common.variables"
_SCOPE = "keras.src.backend.common.stateless_scope"
_STATE = "keras.src.backend.common.global_state"
_SAVING = "keras.src.saving.saving_lib"
_SERIAL = "keras.src.saving.serialization_lib"
_LEGACY_UTILS = "keras.src.legacy.saving.saving_utils"
_LOAD_STATE = ("saveable", "weights_store", "assets_store", "inner_path", "visited_saveables")

CONTRACTS: dict[str, Contract] = {
    c.name: c
    for c in (
        Contract(
            "unallocated_build",
            (
                Symbol(_SCOPE, "StatelessScope", ("state_mapping", "collect_losses", "initialize_variables")),
                Symbol(_SCOPE, "in_stateless_scope", ()),
                Symbol(_STATE, "get_global_attribute", ("name",)),
                Symbol(_STATE, "set_global_attribute", ("name", "value")),
                Symbol(_VARS, "Variable.__init__", ("self", "initializer")),
                Symbol(_VARS, "Variable.assign", ("self", "value")),
                Symbol(_VARS, "Variable._deferred_initialize", ("self",)),
                Symbol("keras.src.backend", "Variable._direct_assign", ("self", "value")),
                Symbol("keras.src.backend", "Variable._initialize", ("self", "value")),
            ),
            "models are built with their weights allocated (memory for every weight, and loading holds "
            "the weights twice)",
            "an allocating build",
        ),
        Contract(
            "linear_rebuild",
            (
                Symbol("keras.src.models.sequential", "Sequential.from_config", ("config", "custom_objects")),
                Symbol("keras.src.models.sequential", "Sequential.add", ("self", "layer", "rebuild")),
                Symbol("keras.src.models.sequential", "Sequential._maybe_rebuild", ("self",)),
                Symbol(_SERIAL, "deserialize_keras_object", ("config", "custom_objects", "safe_mode")),
                Symbol(_LEGACY_UTILS, "model_from_config", ("config", "custom_objects")),
            ),
            "Sequential models are rebuilt after every layer (quadratic in the number of layers)",
            "Keras's own Sequential.from_config",
        ),
        Contract(
            "deserialize",
            (
                Symbol(_SERIAL, "ObjectSharingScope"),
                Symbol(_SERIAL, "deserialize_keras_object", ("config", "custom_objects", "safe_mode")),
                Symbol(_LEGACY_UTILS, "model_from_config", ("config", "custom_objects")),
            ),
            "",
            None,
        ),
        Contract(
            "load_in_place",
            (
                Symbol(_SAVING, "_VARS_FNAME_H5"),
                Symbol(_SAVING, "_CONFIG_FILENAME"),
                Symbol(_SAVING, "_ASSETS_DIRNAME"),
                Symbol(_SAVING, "_safe_zip_read", ("archive", "name")),
                Symbol(_SAVING, "_model_from_config", ("config_json", "custom_objects", "compile", "safe_mode")),
                Symbol(_SAVING, "_reject_zip_bomb", ("archive", "name")),
                Symbol(_SAVING, "_load_state", _LOAD_STATE + ("failed_saveables", "error_msgs")),
                Symbol(_SAVING, "_raise_loading_failure", ("error_msgs",)),
                Symbol(_SAVING, "H5IOStore.__init__", ("self", "path_or_io", "archive", "mode")),
                Symbol(_SAVING, "H5IOStore._get_h5_file", ("self", "path_or_io", "mode")),
                Symbol(_SAVING, "DiskIOStore.__init__", ("self", "root_path", "archive", "mode")),
                Symbol(_SAVING, "safe_get_h5_dataset", ("group", "name")),
            ),
            "loading reads the whole weights file into memory before assigning it (about 2x the weights)",
            "Keras's own .keras loader",
        ),
        Contract(
            "load_file_object",
            (
                Symbol(_SAVING, "load_model", ("filepath", "custom_objects", "compile", "safe_mode")),
                Symbol(
                    "keras.src.legacy.saving.legacy_h5_format",
                    "load_model_from_hdf5",
                    ("filepath", "custom_objects", "compile", "safe_mode"),
                ),
            ),
            "loading takes Keras's public path (the same checked bytes, through a link named for their format)",
            "keras.saving.load_model",
        ),
        Contract(
            "lean_quantization",
            (
                Symbol(
                    "keras.src.quantizers.quantizers",
                    "abs_max_quantize",
                    ("inputs", "axis", "value_range", "dtype", "epsilon", "to_numpy"),
                ),
                Symbol("keras.src.quantizers", "abs_max_quantize"),
                Symbol("keras.src.backend", "epsilon", ()),
                Symbol("keras.src.backend", "standardize_dtype", ("dtype",)),
                Symbol("keras.src.ops", "convert_to_numpy", ("x",)),
                Symbol("keras.src.ops", "convert_to_tensor", ("x", "dtype")),
            ),
            "int8 quantization holds about 4x each large kernel at once",
            "Keras's own model.quantize",
        ),
        Contract(
            "write_through_disk",
            (
                Symbol(_SAVING, "is_memory_sufficient", ("model",)),
                Symbol(_SAVING, "save_model", ("model", "filepath")),
            ),
            "writing the output builds the weights file in memory (two extra copies of the weights)",
            "Keras's default save",
        ),
        Contract(
            "optimizer_slots",
            (
                Symbol("keras.src.optimizers.base_optimizer", "BaseOptimizer._var_key", ("self", "variable")),
                Symbol(
                    "keras.src.optimizers.base_optimizer",
                    "BaseOptimizer.add_variable_from_reference",
                    ("self", "reference_variable", "name", "initializer"),
                ),
            ),
            "sizing optimizer slots allocates the model's weights",
            "the backend's own optimizer build",
        ),
        Contract(
            "model_classes",
            (
                Symbol("keras.src.models.functional", "Functional"),
                Symbol("keras.src.ops.operation", "Operation"),
                Symbol("keras.src.saving.object_registration", "GLOBAL_CUSTOM_OBJECTS"),
                Symbol("keras.src.api_export", "get_symbol_from_name", ("name",)),
                Symbol("keras.src.applications"),
                Symbol("keras.src.layers", "Dense"),  # its module globals: the legacy loader's lookup table
                Symbol("keras.src.activations", "ALL_OBJECTS_DICT"),
                Symbol("keras.src.initializers", "ALL_OBJECTS_DICT"),
                Symbol("keras.src.regularizers", "ALL_OBJECTS_DICT"),
                Symbol("keras.src.constraints", "ALL_OBJECTS_DICT"),
                Symbol("keras.src.losses", "ALL_OBJECTS_DICT"),
                Symbol("keras.src.metrics", "ALL_OBJECTS_DICT"),
                Symbol("keras.src.optimizers", "ALL_OBJECTS_DICT"),
                Symbol("keras.src.layers.layer", "Layer._flatten_layers", ("self", "include_self", "recursive")),
            ),
            "",
            None,
        ),
    )
}


def problems(name: str) -> list[str]:
    """What does not hold of contract `name` in the installed Keras (empty when it holds)."""
    from kmemopt._keras import import_keras

    import_keras()  # Keras's environment set up as everywhere else before its modules are imported
    return CONTRACTS[name].problems()


def _installed_keras() -> str:
    try:
        import keras

        return str(keras.__version__)
    except Exception:  # noqa: BLE001  (only for the message)
        return "unknown"


def usable(name: str) -> bool:
    """True when contract `name` holds; otherwise one warning line (once a message) and False."""
    found = problems(name)
    if not found:
        return True
    contract = CONTRACTS[name]
    warnings.warn(
        f"Keras {_installed_keras()} is outside the range kmemopt was tested with ({KERAS_TESTED}): "
        f"{found[0]}; kmemopt used {contract.fallback} instead, so {contract.slower}.",
        KerasCompatWarning,
        stacklevel=1,  # one place: Python's default filter then shows each message once a process
    )
    return False


def require(name: str) -> None:
    """Refuse with one sentence when contract `name` (which has no public path) does not hold."""
    found = problems(name)
    if found:
        raise UsageError(
            f"kmemopt needs a Keras in the range it was tested with ({KERAS_TESTED}); the installed Keras "
            f"{_installed_keras()} differs ({found[0]}): install one with pip install 'keras{KERAS_TESTED}'."
        )
