"""The allowlist: the one place that decides whether a model config is safe to deserialize.

Keras's own `safe_mode` is a denylist with a history of bypasses. kmemopt instead walks the whole
config (and compile config) before anything is deserialized and accepts an object only when the
class or function it names resolves, in modules Keras has *already imported*, to an allowed object:
built-in Keras classes (minus those that run code stored in or named by the file), keras-hub's
registered classes when keras-hub is installed, kmemopt's own layers, and what the user passed with
`--custom-objects`. Nothing named by the file is ever imported.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import runpy
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmemopt.errors import UnsafeModelError, UsageError
from kmemopt.keras_compat import registry

RULE_CODE = "TRUST-CODE"  # an object whose purpose is to run code (Lambda, TFSMLayer, ...)
RULE_UNKNOWN = "TRUST-UNKNOWN"  # a class outside the allowlist
RULE_MODULE = "TRUST-MODULE"  # a module outside Keras
RULE_FUNCTION = "TRUST-FUNCTION"  # a function outside the allowlist
RULE_MALFORMED = "TRUST-MALFORMED"  # an object entry of the wrong shape
RULE_FILE = "TRUST-FILE"  # a config value that makes Keras read a file the model names
RULE_MARKER = "CONFIG-MARKER"  # a config value that would make Keras build an array beyond the caps
RULE_SHAPE_BOMB = "HDF5-SHAPE-BOMB"  # weights declared (by the HDF5 file or the config) but not stored

# Built-in Keras classes that execute code carried in (or referenced by) the file.
CODE_RUNNING = frozenset({"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer"})
# Serialization markers that carry plain data and are safe to deserialize.
DATA_MARKERS = frozenset(
    {"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__slice__", "__ellipsis__", "__tuple__"}
)
# Markers that carry code or resolve arbitrary types.
CODE_MARKERS = frozenset({"__lambda__", "__typespec__"})

_PUBLIC_NAMESPACES = (
    "keras",
    "keras.layers",
    "keras.models",
    "keras.initializers",
    "keras.regularizers",
    "keras.constraints",
    "keras.optimizers",
    "keras.optimizers.schedules",
    "keras.losses",
    "keras.metrics",
    "keras.dtype_policies",
    "keras.quantizers",
    "keras.activations",
)
# Operations whose arguments are functions (loops, conditionals, maps): never from a file.
_CALLABLE_OPS = frozenset(
    {"Map", "Scan", "AssociativeScan", "Switch", "WhileLoop", "ForiLoop", "Cond", "VectorizedMap", "CustomGradient"}
)
_FUNCTION_NAMESPACES = ("keras.activations", "keras.losses", "keras.metrics")
# Where every allowed built-in function is defined: a function entry naming any other module is refused
# by the allowlist too, so the pre-check can refuse it without importing Keras.
_FUNCTION_SOURCES = registry.FUNCTION_SOURCES
# Packages whose registered classes may be allowed (by registered name); any other module needs
# --custom-objects. Checked without importing anything.
_TRUSTED_PACKAGES = ("keras", "keras_hub", "kmemopt")
# The registered functions of trusted packages that a model may use (as activations): the others
# (keras_hub>upload_preset, keras_hub>get, ...) are utilities, never part of a model.
_EXTENSION_FUNCTIONS = frozenset({"keras_hub>gelu_approximate", "keras_nlp>gelu_approximate"})
# Config keys whose string value Keras resolves to an object through a table of its own (`activations.get`
# and the like): by suffix in any object's config, and by top-level key in a compile config.
_RESOLVED_SUFFIXES = ("activation", "initializer", "regularizer", "constraint")
_COMPILE_KEYS = frozenset({"loss", "metrics", "weighted_metrics", "optimizer"})
_ENTRY_KEYS = frozenset({"class_name", "module", "registered_name"})
# Config keys whose string value Keras treats as a path to read (lookup vocabularies, tokenizer files).
_PATH_KEYS = frozenset({"vocabulary", "vocabulary_file", "merges", "proto"})
# What a config alone may make Keras build while it rebuilds the architecture (arrays serialized in
# node arguments, lookup tables sized by a number): far above any real model's constants, far below
# what hurts a machine. `kmemopt profile` must never allocate weights-sized memory.
MAX_CONFIG_ARRAY_ELEMENTS = 2**22
MAX_CONFIG_ARRAY_BYTES = 64 * 1024**2
# Markers Keras turns into arrays (serialization_lib.deserialize_keras_object), and the dtypes an
# array of numbers may have, with their item sizes. Anything else (strings, void, structured or
# sub-array dtypes) can declare gigabytes an element: "S2000000000".
_ARRAY_MARKERS = frozenset({"__numpy__", "__tensor__"})
_ARRAY_DTYPES = {
    "bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2, "int32": 4,
    "uint32": 4, "float32": 4, "int64": 8, "uint64": 8, "float64": 8, "complex64": 8, "complex128": 16,
}  # fmt: skip
# Lookup layers whose tables Keras builds from numbers in their config (IndexLookup.set_vocabulary).
_LOOKUP_LAYERS = frozenset({"StringLookup", "IntegerLookup", "TextVectorization"})
# Slack allowed between the bytes the architecture needs and the bytes the file stores.
_SIZE_SLACK_BYTES = 1024**2
# Declared bytes per stored byte above which a filtered (compressed) HDF5 dataset over the slack is a
# bomb: deflate tops out near 1,000x on runs of one value, real weights compress a few times at most, and
# the cap bounds what a file can make kmemopt allocate to 100x its size.
_MAX_INFLATION = 100.0


@dataclass
class Allowlist:
    """Allowed classes and functions, by identity, plus lookups by public name."""

    classes: set[Any] = field(default_factory=set)
    functions: set[Any] = field(default_factory=set)
    by_name: dict[str, Any] = field(default_factory=dict)  # legacy configs name classes only
    custom_objects: dict[str, Any] = field(default_factory=dict)

    def allows(self, obj: Any) -> bool:
        return obj in self.classes or obj in self.functions

    def __repr__(self) -> str:  # short: it shows up in test reports
        return (
            f"Allowlist({len(self.classes)} classes, {len(self.functions)} functions, "
            f"custom={sorted(self.custom_objects)})"
        )


def mentions_keras_hub(config: Any) -> bool:
    """Whether a config names a keras-hub object (then, and only then, keras-hub is worth importing)."""
    for node, _ in _walk(config):
        if isinstance(node, dict):
            module, registered = node.get("module"), node.get("registered_name")
            if (isinstance(module, str) and module.startswith("keras_hub")) or (
                isinstance(registered, str) and registered.startswith("keras_hub>")
            ):
                return True
            if node.get("class_name") == "function" and node.get("config") in _EXTENSION_FUNCTIONS:
                return True  # registered by keras-hub's import
    return False


def build_allowlist(custom_objects: dict[str, Any] | None = None, *, keras_hub: bool = True) -> Allowlist:
    """Collect the allowed objects from Keras's public API (and keras-hub, kmemopt's own layers).

    `keras_hub=False` skips importing keras-hub (most of a second) when the model names none of its
    classes; its classes stay allowed if it was imported already.
    """
    from kmemopt._keras import import_keras

    keras = import_keras()
    allow = Allowlist()
    import importlib

    for ns in _PUBLIC_NAMESPACES:
        mod = importlib.import_module(ns)  # our own fixed list of Keras namespaces, never the file's
        for name in dir(mod):
            if name.startswith("_"):
                continue
            obj = getattr(mod, name)
            if inspect.isclass(obj):
                if name in CODE_RUNNING or obj.__name__ in CODE_RUNNING:
                    continue
                allow.classes.add(obj)
                allow.by_name.setdefault(name, obj)
            elif inspect.isfunction(obj) and ns in _FUNCTION_NAMESPACES:
                allow.functions.add(obj)
    # Tensor operations called directly in a functional graph (`keras.ops.add(x, y)`) are serialized
    # as nodes of their Operation class (MobileNetV3 does this). They compute on tensors only; the
    # control-flow operations that take functions are left out.
    allow.classes.update(registry.operation_classes(_CALLABLE_OPS))
    # Layers that keras.applications models define for themselves (ConvNeXt's LayerScale) are saved
    # under their internal module and class name, which Keras resolves; they are Keras's own code.
    allow.classes.update(registry.application_layers(keras.layers.Layer))
    # The functional and sequential model classes are serialized under their internal modules.
    Functional, Sequential = registry.model_classes()  # noqa: N806
    allow.classes.update({Functional, Sequential})
    allow.by_name.setdefault("Functional", Functional)
    allow.by_name.setdefault("Model", keras.Model)

    for obj in _extension_objects(keras_hub):
        (allow.classes if inspect.isclass(obj) else allow.functions).add(obj)
    for name, obj in (custom_objects or {}).items():
        (allow.classes if inspect.isclass(obj) else allow.functions).add(obj)
        allow.by_name.setdefault(name, obj)
        allow.custom_objects[name] = obj
    return allow


def _extension_objects(import_keras_hub: bool = True) -> Iterator[Any]:
    """Registered objects of trusted packages: keras-hub when installed, and kmemopt's own layers."""
    if import_keras_hub:
        try:
            import keras_hub  # noqa: F401  (registers its classes with Keras on import)
        except Exception:  # not installed, or broken: its classes simply are not allowed
            pass
    try:
        import kmemopt.layers  # noqa: F401
    except ImportError:
        pass
    for key, obj in registry.registered_objects().items():
        if key.startswith(("keras_hub>", "kmemopt>")) and (inspect.isclass(obj) or key in _EXTENSION_FUNCTIONS):
            yield obj


def load_custom_objects(path: str | os.PathLike) -> dict[str, Any]:
    """Run the user's own trusted Python file and collect the Keras objects it makes available.

    The contract, in order:

    - `CUSTOM_OBJECTS = {"MyLayer": MyLayer, ...}` in the file: exactly those objects, by those names;
    - otherwise every public class and function the file defines itself, and every public name it
      imports (`from mylayers import MyLayer`) that is a Keras serializable class (a subclass of
      `keras.layers.Layer`, `Loss`, `Metric`, `Optimizer`, `Initializer`, `Regularizer`, `Constraint`,
      `LearningRateSchedule` or `keras.Operation`, defined outside Keras) or an object registered with
      `keras.saving.register_keras_serializable`. Imported plain functions are not taken (a file
      importing `os.system` must not allow it): register them, or list them in `CUSTOM_OBJECTS`;
    - in both cases, everything the file (or what it imports) registers with
      `keras.saving.register_keras_serializable` while it runs.

    Imported objects are also reachable under their class or function name. The file's folder is on
    `sys.path` while it runs, so it can import modules that sit next to it.

    Example: `kmemopt profile model.keras --custom-objects layers.py`, where layers.py holds
    `from my_project.layers import Gated` (or `CUSTOM_OBJECTS = {"Gated": Gated}`).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"The custom-objects file {path} does not exist; give a Python file that defines your layers.")
    from kmemopt._keras import import_keras

    import_keras()
    before = dict(registry.registered_objects())
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        namespace = runpy.run_path(str(path), run_name="kmemopt_custom_objects")
    except Exception as exc:
        raise UsageError(f"The custom-objects file {path} failed to run: {type(exc).__name__}: {exc}.") from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
    if isinstance(namespace.get("CUSTOM_OBJECTS"), dict):
        found = dict(namespace["CUSTOM_OBJECTS"])
    else:
        registered = {id(obj) for obj in registry.registered_objects().values()}
        found = {}
        for name, obj in namespace.items():
            if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if getattr(obj, "__module__", None) == "kmemopt_custom_objects":
                found[name] = obj
            elif id(obj) in registered or _is_serializable_class(obj):
                found[name] = obj
                found.setdefault(obj.__name__, obj)
    for key, obj in registry.registered_objects().items():
        if key not in before:
            found[key] = obj
    return found


def _is_serializable_class(obj: Any) -> bool:
    """A class Keras deserializes from a config (layers, losses, ...), defined outside Keras itself."""
    if not inspect.isclass(obj) or (getattr(obj, "__module__", "") or "").split(".", 1)[0] in _TRUSTED_PACKAGES:
        return False
    import keras

    bases = (
        registry.operation_class(),  # layers and models too
        keras.losses.Loss,
        keras.metrics.Metric,
        keras.optimizers.Optimizer,
        keras.optimizers.schedules.LearningRateSchedule,
        keras.initializers.Initializer,
        keras.regularizers.Regularizer,
        keras.constraints.Constraint,
    )
    return issubclass(obj, bases)


def _resolve(module: str, name: str) -> Any:
    """What Keras would retrieve for module+name, looked up only in modules already imported."""
    obj = registry.symbol_from_name(f"{module}.{name}")
    if obj is not None:
        return obj
    mod = sys.modules.get(module)
    if mod is None:
        return None
    return vars(mod).get(name)


def _describe(name: str, module: str | None) -> str:
    return f"{module}.{name}" if module else name


def _in_trusted_package(module: str | None) -> bool:
    return module is None or module.split(".", 1)[0] in _TRUSTED_PACKAGES


class _Where:
    """The JSON path of the container a walk is at, formatted only when a refusal reports it.

    The keys list is the walk's own and changes as it goes on: read it (str) before the walk resumes.
    """

    __slots__ = ("keys", "root")

    def __init__(self, root: str) -> None:
        self.root = root
        self.keys: list[Any] = []

    def __str__(self) -> str:
        return self.at()

    def at(self, *more: Any) -> str:
        return self.root + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in (*self.keys, *more))


def _children(node: dict | list) -> Iterator[tuple[Any, Any]]:
    return iter(node.items()) if isinstance(node, dict) else enumerate(node)


def _walk(config: Any, root: str = "$") -> Iterator[tuple[dict | list, _Where]]:
    """Every non-empty dict and list of a config, in document order, with its JSON path.

    Iterative, and its memory is one iterator a level of nesting (at most the JSON depth cap): a
    config holding one list of millions of numbers costs nothing more than the list itself. The
    path is kept as a list of keys and only formatted when a refusal reports it.
    """
    if not isinstance(config, (dict, list)):
        return
    where = _Where(root)
    keys = where.keys
    yield config, where
    stack = [_children(config)]
    while stack:
        for key, value in stack[-1]:
            if isinstance(value, (dict, list)) and value:
                keys.append(key)
                yield value, where
                stack.append(_children(value))
                break
        else:
            stack.pop()
            if keys:
                keys.pop()


def _entries(config: Any, root: str) -> Iterator[tuple[dict, _Where]]:
    """Every object entry (a dict with class_name) of a config, with its JSON path. Iterative."""
    for node, where in _walk(config, root):
        if isinstance(node, dict) and "class_name" in node:
            yield node, where


def _check_entry_shape(node: dict, path: _Where) -> None:
    class_name, module, registered = node.get("class_name"), node.get("module"), node.get("registered_name")
    if (
        not isinstance(class_name, str)
        or not isinstance(module, (str, type(None)))
        or not isinstance(registered, (str, type(None)))
    ):
        raise UnsafeModelError(
            "The config holds an object entry whose class_name, module or registered_name is not a string.",
            rule=RULE_MALFORMED,
            where=str(path),
        )
    if class_name in CODE_MARKERS or class_name in CODE_RUNNING:
        raise UnsafeModelError(
            f"The model contains {class_name}, which runs code stored in or named by the file; "
            "kmemopt never executes code from a model file. Re-save the model without it, or profile "
            "the model in memory with kmemopt.profile(model).",
            rule=RULE_CODE,
            where=str(path),
        )
    inner = node.get("config")
    if isinstance(inner, dict):
        for key in _PATH_KEYS & inner.keys():
            if isinstance(inner[key], str):
                raise UnsafeModelError(
                    f"The {class_name} entry gives its {key} as a path, which Keras would read from this "
                    "machine; kmemopt refuses configs that name files. Re-save the model so the "
                    f"{key} is stored in the file.",
                    rule=RULE_FILE,
                    where=path.at("config", key),
                )


def _refuse_array(what: str, where: str) -> UnsafeModelError:
    return UnsafeModelError(
        f"The config holds {what}, which Keras would build in memory while rebuilding the architecture; "
        f"kmemopt refuses configs that build more than {MAX_CONFIG_ARRAY_ELEMENTS:,} elements or "
        f"{MAX_CONFIG_ARRAY_BYTES:,} bytes, or arrays that are not plain numbers.",
        rule=RULE_MARKER,
        where=where,
    )


def _count_numbers(value: Any, cap: int) -> int | None:
    """How many numbers a nested list holds (Keras's `tolist()` of an array), stopping past `cap`;
    None when it holds anything but numbers and lists (NumPy would infer strings or objects)."""
    if not isinstance(value, list):
        return 1 if isinstance(value, (int, float)) else None
    count = 0
    stack = [iter(value)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if not isinstance(item, (int, float)):
                return None
            count += 1
            if count > cap:
                return count
        else:
            stack.pop()
    return count


def _array_bytes(node: dict, where: _Where) -> int:
    """Bytes Keras would allocate for one serialized array (`__numpy__`, `__tensor__`, `__bytes__`)."""
    inner = node.get("config")
    if node["class_name"] == "__bytes__":
        value = inner.get("value") if isinstance(inner, dict) else None
        if not isinstance(value, str):
            raise _refuse_array("a __bytes__ value that is not a string", str(where))
        return len(value) if value.isascii() else 4 * len(value)
    dtype = inner.get("dtype") if isinstance(inner, dict) else None
    if not isinstance(inner, dict) or not isinstance(dtype, str) or dtype not in _ARRAY_DTYPES:
        raise _refuse_array(f"a serialized array of dtype {str(dtype)[:40]!r} (not a plain number type)", str(where))
    count = _count_numbers(inner.get("value"), MAX_CONFIG_ARRAY_ELEMENTS)
    if count is None:
        raise _refuse_array("a serialized array holding values that are not numbers", str(where))
    if count > MAX_CONFIG_ARRAY_ELEMENTS:
        raise _refuse_array(f"a serialized array of more than {MAX_CONFIG_ARRAY_ELEMENTS:,} elements", str(where))
    return count * _ARRAY_DTYPES[dtype]


def _holds_keras_tensor(value: Any) -> bool:
    return any(isinstance(node, dict) and node.get("class_name") == "__keras_tensor__" for node, _ in _walk(value))


def _check_allocations(node: dict, where: _Where) -> int:
    """Refuse what would make Keras allocate, from this entry alone, memory sized by a number in the
    config rather than by the config's own size. Returns the array bytes the entry builds."""
    class_name, inner = node["class_name"], node.get("config")
    if class_name in _ARRAY_MARKERS or class_name == "__bytes__":
        return _array_bytes(node, where) if "config" in node else 0  # without "config" Keras keeps a dict
    if class_name in _LOOKUP_LAYERS and isinstance(inner, dict):
        # set_vocabulary builds a list of num_oov_indices tokens, and a tf-idf table padded to max_tokens.
        sizes = {"num_oov_indices": inner.get("num_oov_indices")}
        if inner.get("pad_to_max_tokens") and inner.get("output_mode") == "tf_idf":
            sizes["max_tokens"] = inner.get("max_tokens")
        for key, size in sizes.items():
            if isinstance(size, (int, float)) and size > MAX_CONFIG_ARRAY_ELEMENTS:
                raise _refuse_array(f"a {class_name} whose {key} is {size:,}", where.at("config", key))
    nodes = node.get("inbound_nodes")
    if isinstance(nodes, list):
        # Keras runs a node whose arguments hold no symbolic tensor on its constants right away while
        # it rebuilds the graph (`ops.full((2**20, 2**20), 1.0)`, a RepeatVector of an array). Keras
        # never writes such a node: every node of a functional graph takes a tensor of the graph.
        for i, call in enumerate(nodes):
            if isinstance(call, dict) and not _holds_keras_tensor([call.get("args"), call.get("kwargs")]):
                raise _refuse_array(
                    f"a call of {class_name[:60]} on constants only (no tensor of the graph)",
                    where.at("inbound_nodes", i),
                )
    return 0


def precheck_config(config: Any, root: str = "$", *, custom_objects: bool = False) -> int:
    """The part of the allowlist check that needs no Keras: run before Keras is even imported.

    Refuses code-running classes and markers, file-reading values, malformed entries and (unless the
    user gave --custom-objects) any module or function outside Keras, keras-hub and kmemopt; and, with
    or without --custom-objects, whatever would make Keras build memory sized by a number in the config
    (serialized arrays over the caps or of non-numeric dtypes, lookup tables, nodes run on constants).
    Apart from those caps it refuses nothing that `check_config` would accept, so a hostile file is turned away in a fraction of a second
    and nothing (not even keras-hub) is imported on its behalf. Returns the number of entries seen.
    """
    seen = 0
    array_bytes = 0
    for node, path in _entries(config, root):
        seen += 1
        _check_entry_shape(node, path)
        array_bytes += _check_allocations(node, path)
        if array_bytes > MAX_CONFIG_ARRAY_BYTES:
            raise _refuse_array(f"serialized arrays of {array_bytes:,} bytes in all", str(path))
        if custom_objects or node["class_name"] in DATA_MARKERS:
            continue
        module, class_name = node.get("module"), node["class_name"]
        if class_name == "function":
            # A registered function of a trusted package is serialized under module "builtins" and found
            # by its registered name ("keras_hub>gelu_approximate"): check_config resolves it so.
            if node.get("config") in _EXTENSION_FUNCTIONS:
                continue
            if not (module in _FUNCTION_NAMESPACES or (module or "").startswith(_FUNCTION_SOURCES)):
                raise UnsafeModelError(
                    f"The model names the function {_describe(str(node.get('config')), module)}, which is not a "
                    "built-in Keras function; pass your own code with --custom-objects if you trust it.",
                    rule=RULE_FUNCTION,
                    where=str(path),
                )
            continue
        registered = node.get("registered_name")
        if registered and registered != class_name:
            continue  # looked up by registered name, which needs Keras's registry: check_config decides
        if not _in_trusted_package(module):
            raise UnsafeModelError(
                f"The model names {_describe(class_name, module)}, from outside Keras; kmemopt does not "
                "import modules named by a file. Pass your own code with --custom-objects if you trust it.",
                rule=RULE_MODULE,
                where=str(path),
            )
    return seen


def precheck_file(model_file, *, custom_objects: bool = False) -> None:
    """`precheck_config` over everything in a model file that Keras could deserialize."""
    precheck_config(model_file.config, "$", custom_objects=custom_objects)
    if model_file.compile_config is not None:
        precheck_config(model_file.compile_config, "$.compile_config", custom_objects=custom_objects)


def check_loadable(model_file, model) -> None:
    """Refuse to load weights the file does not really store, before Keras allocates anything.

    `model` is the architecture built unallocated (kmemopt.load.build): its variables' bytes are what
    loading would allocate. A file whose HDF5 datasets declare more than they store (a "shape bomb"),
    or whose config asks for more weight bytes than the file holds (Dense(units=2**40) over a small
    weights file), is refused with exit 3.
    """
    from kmemopt.profiling.dtypes import weight_totals

    check_stored(model_file, weight_totals(model)[1])


def check_stored(model_file, needed: int) -> None:
    """`check_loadable` given the weight bytes the architecture needs (e.g. a profile's param bytes)."""
    from kmemopt.load.archive import RULE_HDF5_RATIO

    comp = model_file.composition
    for array in (*model_file.weights, *model_file.optimizer_weights):
        if array.chunks_stored < array.chunks_needed:
            raise UnsafeModelError(
                f"{model_file.path}: the weights dataset {array.path!r} declares {array.declared_bytes:,} bytes "
                f"in {array.chunks_needed:,} chunks but only {array.chunks_stored:,} were ever written; kmemopt "
                "will not load it (loading would allocate what the file does not hold). `kmemopt profile` "
                "still reports it statically.",
                rule=RULE_SHAPE_BOMB,
                where=array.path,
            )
        if array.filtered and array.declared_bytes > _SIZE_SLACK_BYTES and array.inflation > _MAX_INFLATION:
            raise UnsafeModelError(
                f"{model_file.path}: the weights dataset {array.path!r} would inflate {array.inflation:,.0f}x "
                f"({array.stored_bytes:,} stored bytes to {array.declared_bytes:,}); kmemopt refuses it as a "
                "compression bomb. `kmemopt profile` still reports it statically.",
                rule=RULE_HDF5_RATIO,
                where=array.path,
            )
    if not comp.weights_fully_stored:
        raise UnsafeModelError(
            f"{model_file.path} declares {comp.weights_declared_bytes:,} bytes of weights but stores only "
            f"{comp.weights_bytes:,}; kmemopt will not load it (a truncated file or a 'shape bomb'). "
            "`kmemopt profile` still reports it statically.",
            rule=RULE_SHAPE_BOMB,
        )
    available = comp.weights_declared_bytes
    if needed > available + max(_SIZE_SLACK_BYTES, available // 100):
        raise UnsafeModelError(
            f"The architecture in {model_file.path} needs {needed:,} bytes of weights but the file holds only "
            f"{available:,}; kmemopt will not load it (loading would allocate the difference). "
            "`kmemopt profile` still reports it statically.",
            rule=RULE_SHAPE_BOMB,
        )


class _StringLookups:
    """Where Keras looks up a string it turns into an object, to check those strings as it would.

    Every deserializer first looks a string up among the custom objects and Keras's registry (a
    compile config's `"loss": "keras_hub>upload_preset"` is that function); `activations.get` and
    its kin look it up in a fixed table of their own; and the legacy (`.h5`) loader turns any string
    of an object's config (but its name) that names a function of Keras's layers module globals
    or the registry into that function (`"activation": "deserialize"` becomes `layers.deserialize`).
    """

    def __init__(self, allow: Allowlist, legacy: bool) -> None:
        self.allow = allow
        self.registry = registry.registered_objects()
        self.tables: dict[str, dict[str, Any]] = registry.lookup_tables()
        self.module_objects: dict[str, Any] = {}
        if legacy:
            self.module_objects = registry.layers_module_globals()

    def kind(self, key: Any, where: _Where, compile_root: bool) -> str | None:
        """Which table Keras looks a string under `key` up in, if any."""
        if isinstance(key, str):
            for suffix in _RESOLVED_SUFFIXES:
                if key.endswith(suffix):
                    return suffix
        # A compile config's loss/metrics/optimizer: a name, or names in lists and dicts (per output).
        if compile_root and where.keys[:1] and where.keys[0] in _COMPILE_KEYS and "config" not in where.keys:
            return where.keys[0]
        if compile_root and not where.keys and key in _COMPILE_KEYS:
            return key
        return None

    def resolved(self, value: str, key: Any, kind: str | None) -> list[Any]:
        """Every object Keras could turn `value` into at this place."""
        found = [self.allow.custom_objects.get(value), self.registry.get(value)]
        if key != "name":
            obj = self.module_objects.get(value)
            if inspect.isfunction(obj):
                found.append(obj)
        if kind is not None:
            found.append(self.tables[kind].get(value.lower() if kind == "optimizer" else value))
        return [obj for obj in found if obj is not None]

    def allowed(self, obj: Any) -> bool:
        return obj in self.allow.classes or obj in self.allow.functions


def _check_strings(node: dict | list, where: _Where, lookups: _StringLookups, compile_root: bool) -> None:
    """Refuse a string of this container that Keras would resolve to an object outside the allowlist."""
    entry = isinstance(node, dict) and "class_name" in node
    for key, value in _children(node):
        if not isinstance(value, str) or (entry and key in _ENTRY_KEYS):
            continue  # an entry's own names are the entry checks' business
        for obj in lookups.resolved(value, key, lookups.kind(key, where, compile_root)):
            if not lookups.allowed(obj):
                raise UnsafeModelError(
                    f"The model names {value[:80]!r}, which Keras would resolve to "
                    f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__name__', type(obj).__name__)}, "
                    "not a Keras class or built-in function on kmemopt's allowlist; pass your own code with "
                    "--custom-objects if you trust it.",
                    rule=RULE_FUNCTION,
                    where=where.at(key),
                )


def check_config(config: Any, allow: Allowlist, root: str = "$", *, legacy: bool = False) -> int:
    """Walk a config and raise UnsafeModelError at the first entry outside the allowlist.

    Object entries (dicts with a class_name) must resolve to allowed classes and functions, and so
    must the plain strings Keras resolves to objects (`"activation": "relu"`, a compile config's
    `"loss": "mse"`), looked up the way Keras would: `legacy=True` for a legacy `.h5` config, whose
    loader resolves more strings. Iterative (no recursion, so hostile nesting cannot overflow the
    stack). Returns the number of objects checked.
    """
    lookups = _StringLookups(allow, legacy)
    compile_root = root.endswith("compile_config")
    checked = 0
    for node, path in _walk(config, root):
        _check_strings(node, path, lookups, compile_root)
        if not (isinstance(node, dict) and "class_name" in node):
            continue
        checked += 1
        _check_entry_shape(node, path)
        class_name = node["class_name"]
        module = node.get("module")
        registered = node.get("registered_name")
        if class_name in DATA_MARKERS:
            continue
        if class_name == "function":
            fn_name = node.get("config")
            obj = None
            if isinstance(fn_name, str):
                if registered and registered != "function" and registered in allow.custom_objects:
                    obj = allow.custom_objects[registered]
                elif fn_name in allow.custom_objects:
                    obj = allow.custom_objects[fn_name]
                elif fn_name in _EXTENSION_FUNCTIONS:
                    # Keras looks a function's name up in its registry first; only the known ones pass.
                    obj = registry.registered_objects().get(fn_name)
                elif isinstance(module, str) and (
                    module in _FUNCTION_NAMESPACES or module.startswith(registry.PRIVATE_PREFIX)
                ):
                    obj = _resolve(module, fn_name)
            if obj is None or not allow.allows(obj):
                raise UnsafeModelError(
                    f"The model names the function {_describe(str(fn_name), module)}, which is not a "
                    "built-in Keras function; pass your own code with --custom-objects if you trust it.",
                    rule=RULE_FUNCTION,
                    where=str(path),
                )
            continue
        obj = None
        if registered and registered != class_name:
            obj = allow.custom_objects.get(registered) or registry.registered_objects().get(registered)
        elif class_name in allow.custom_objects:
            obj = allow.custom_objects[class_name]
        elif module is None:
            obj = allow.by_name.get(class_name)  # legacy (Keras 2) configs carry no module
        elif module == "keras" or module.startswith("keras."):
            obj = _resolve(module, class_name)
        else:
            raise UnsafeModelError(
                f"The model names {_describe(class_name, module)}, from outside Keras; kmemopt does not "
                "import modules named by a file. Pass your own code with --custom-objects if you trust it.",
                rule=RULE_MODULE,
                where=str(path),
            )
        # A class entry must resolve to an allowed *class*: Keras returns a function found this way as
        # is (it would then run, e.g. as an activation), so registered functions such as
        # keras_hub>upload_preset must not pass here.
        if obj is None or obj not in allow.classes:
            raise UnsafeModelError(
                f"The model names {_describe(registered or class_name, module)}, which is not on kmemopt's "
                "allowlist of Keras classes; pass your own code with --custom-objects if you trust it.",
                rule=RULE_UNKNOWN,
                where=str(path),
            )
    return checked
