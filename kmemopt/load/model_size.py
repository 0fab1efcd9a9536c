"""How big a model's structure is, counted from its parsed config before Keras builds anything.

Keras's cost to rebuild a model grows with its structure, and not always linearly: it walks a
functional graph recursively (one Python frame a layer call on the longest path, so a chain of a
thousand calls ends in RecursionError), it deserializes nested models recursively, and each layer
costs it milliseconds. So a hostile (or accidental) 60 KB config of 20,000 layers would keep kmemopt
busy for minutes and then fail. `check_model_size` refuses such a model at once, with the limit it
broke, before Keras sees it. The walk is iterative and linear in the config's size.

The limits (docs/security.md, rule MODEL-SIZE) are about twice the largest real models, measured on
Keras 3.15 configs (layers / longest path / nesting): NASNetLarge 1,041 / 280 / 0, EfficientNetV2L
1,031 / 1,031 / 0, EfficientNetB7 816 / 816 / 0, InceptionResNetV2 782 / 572 / 0, DenseNet201
709 / 709 / 0, ResNet152V2 566 / 559 / 0, ConvNeXtXLarge 309 / 297 / 1. Keras needs several
milliseconds a layer (2,000 layers: about 15 s to rebuild on a busy 2-core machine), which sets
MAX_LAYERS. A keras-hub backbone's config lists no layers (its blocks are made by its constructor).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from kmemopt.errors import UnsafeModelError

RULE_MODEL_SIZE = "MODEL-SIZE"

# Layers in the whole model, nested models' layers included.
MAX_LAYERS = 2000
# Layer calls (a shared layer called many times is rebuilt once a call).
MAX_LAYER_CALLS = 4000
# Layer calls on the longest path through one graph (a Sequential's graph is its list of layers).
MAX_GRAPH_DEPTH = 2000
# Models inside models inside models.
MAX_NESTING = 32


@dataclass(frozen=True)
class ModelSize:
    layers: int  # entries of every `layers` list, nested models' included
    calls: int  # serialized layer calls (at least one a layer)
    graph_depth: int  # layer calls on the longest path of the deepest graph
    nesting: int  # 0 for a model without sub-models

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _is_container(node: Any) -> bool:
    return (
        isinstance(node, dict)
        and isinstance(node.get("config"), dict)
        and isinstance(node["config"].get("layers"), list)
    )


def model_size(config: Any) -> ModelSize:
    """Count layers, the longest path and the nesting of every model in `config`; linear, no recursion."""
    layers = calls = depth = nesting = 0
    # Every dict/list of the config once, with the number of models around it.
    stack: list[tuple[Any, int]] = [(config, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, list):
            stack.extend((v, level) for v in node if isinstance(v, (dict, list)))
            continue
        if not isinstance(node, dict):
            continue
        blocks = _constructor_blocks(node)
        if blocks:
            # A keras-hub backbone's config lists no layers: its constructor makes `num_layers` blocks
            # of a dozen or so layers each. Count them so `num_layers=100000` is refused like 100,000 layers.
            layers += blocks * LAYERS_PER_BLOCK
            calls += blocks * LAYERS_PER_BLOCK
        if _is_container(node):
            entries = [e for e in node["config"]["layers"] if isinstance(e, dict)]
            layers += len(entries)
            calls += sum(
                max(1, len(e["inbound_nodes"]) if isinstance(e.get("inbound_nodes"), list) else 1) for e in entries
            )
            nesting = max(nesting, level)
            depth = max(depth, _graph_depth(entries))
            level += 1
        stack.extend((v, level) for v in node.values() if isinstance(v, (dict, list)))
    return ModelSize(layers=layers, calls=calls, graph_depth=depth, nesting=nesting)


# How many layers one block of a constructor-built (keras-hub) model is counted as: a transformer block
# holds about ten (attention, its projections, norms, feed-forward, dropouts). The largest real backbones
# have about 126 blocks (Llama 3 405B), 1,260 "layers": well inside the limits.
LAYERS_PER_BLOCK = 10
_BLOCK_KEYS = re.compile(r"^(num_(\w+_)?(layers|blocks)|\w+_num_layers|stackwise_num_(blocks|layers)|stackwise_depth)$")


def _constructor_blocks(node: dict) -> int:
    """Blocks a keras-hub object's constructor arguments ask for (`num_layers`, `stackwise_num_blocks`, ...)."""
    module, registered = node.get("module"), node.get("registered_name")
    if not (
        (isinstance(module, str) and module.startswith("keras_hub"))
        or (isinstance(registered, str) and registered.startswith("keras_hub>"))
    ):
        return 0
    inner = node.get("config")
    if not isinstance(inner, dict):
        return 0
    total = 0
    for key, value in inner.items():
        if not (isinstance(key, str) and _BLOCK_KEYS.match(key)):
            continue
        values = value if isinstance(value, list) else [value]
        total += sum(v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0)
    return total


def _entry_name(entry: dict) -> Any:
    name = entry.get("name")
    if name is None and isinstance(entry.get("config"), dict):
        name = entry["config"].get("name")
    return name if isinstance(name, str) else None


def _graph_depth(entries: list[dict]) -> int:
    """Layer calls on the longest path of one model's graph, as Keras will walk it."""
    if not any(isinstance(e.get("inbound_nodes"), list) and e["inbound_nodes"] for e in entries):
        # A Sequential: Keras builds one chain of all its layers.
        return sum(1 for e in entries if e.get("class_name") != "InputLayer") + 1
    # A functional graph: one vertex a layer call (layer name, node index), edges from the calls
    # that made its inputs.
    parents: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for entry in entries:
        name = _entry_name(entry)
        nodes = entry.get("inbound_nodes")
        if name is None:
            continue
        if not isinstance(nodes, list) or not nodes:
            parents[(name, 0)] = []
            continue
        for index, call in enumerate(nodes):
            parents[(name, index)] = _history_refs(call)
    return _longest_path(parents)


def _history_refs(call: Any) -> list[tuple[str, int]]:
    """The (layer name, node index) of every tensor a serialized layer call reads."""
    refs: list[tuple[str, int]] = []
    stack = [call]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            history = node.get("keras_history")
            if _is_ref(history):
                refs.append((history[0], history[1]))
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            if _is_ref(node):  # legacy (h5) calls: [layer name, node index, tensor index, kwargs]
                refs.append((node[0], node[1]))
                stack.extend(v for v in node[3:] if isinstance(v, (dict, list)))
            else:
                stack.extend(v for v in node if isinstance(v, (dict, list)))
    return refs


def _is_ref(value: Any) -> TypeGuard[list[Any]]:
    """A serialized tensor reference: [layer name, node index, tensor index, ...]."""
    return (
        isinstance(value, list)
        and len(value) >= 3
        and isinstance(value[0], str)
        and type(value[1]) is int
        and type(value[2]) is int
    )


def _longest_path(parents: dict[tuple[str, int], list[tuple[str, int]]]) -> int:
    """Vertices on the longest path of a DAG given as vertex -> parents; iterative, linear.

    Parents the graph does not define are ignored; an edge that closes a cycle is ignored too
    (Keras refuses such a graph on its own, at no cost)."""
    depth: dict[tuple[str, int], int] = {}
    on_path: set[tuple[str, int]] = set()
    best = 0
    for start in parents:
        if start in depth:
            continue
        stack = [(start, iter(parents[start]))]
        on_path.add(start)
        while stack:
            vertex, pending = stack[-1]
            for parent in pending:
                if parent in parents and parent not in depth and parent not in on_path:
                    on_path.add(parent)
                    stack.append((parent, iter(parents[parent])))
                    break
            else:
                stack.pop()
                on_path.discard(vertex)
                depth[vertex] = 1 + max((depth.get(p, 0) for p in parents[vertex]), default=0)
                best = max(best, depth[vertex])
    return best


def check_model_size(config: Any) -> ModelSize:
    """Refuse a model over kmemopt's structure limits (UnsafeModelError, rule MODEL-SIZE, exit 3).

    Runs before Keras sees the config, so an oversized model costs milliseconds, not minutes.
    """
    size = model_size(config)
    if size.layers > MAX_LAYERS:
        raise UnsafeModelError(
            f"The model has {size.layers:,} layers, over kmemopt's limit of {MAX_LAYERS:,}; Keras would take "
            "minutes to rebuild it, so kmemopt refuses it.",
            rule=RULE_MODEL_SIZE,
        )
    if size.calls > MAX_LAYER_CALLS:
        raise UnsafeModelError(
            f"The model makes {size.calls:,} layer calls, over kmemopt's limit of {MAX_LAYER_CALLS:,}; Keras would "
            "take minutes to rebuild it, so kmemopt refuses it.",
            rule=RULE_MODEL_SIZE,
        )
    if size.graph_depth > MAX_GRAPH_DEPTH:
        raise UnsafeModelError(
            f"The model chains {size.graph_depth:,} layer calls one after another, over kmemopt's limit of "
            f"{MAX_GRAPH_DEPTH:,}; Keras walks such a chain recursively and would fail on it, so kmemopt refuses it.",
            rule=RULE_MODEL_SIZE,
        )
    if size.nesting > MAX_NESTING:
        raise UnsafeModelError(
            f"The model nests sub-models {size.nesting:,} deep, over kmemopt's limit of {MAX_NESTING:,}; "
            "Keras rebuilds nested models recursively, so kmemopt refuses it.",
            rule=RULE_MODEL_SIZE,
        )
    return size
