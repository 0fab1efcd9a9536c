"""Deep, long, wide and nested models: refused at once over the MODEL-SIZE limits, profiled fast under them.

The files are written by hand (config.json + an HDF5 weights file, Keras's layout), so a 20,000-layer
model costs milliseconds to make and no Keras build.
"""

from __future__ import annotations

import io
import json
import time
import zipfile

import pytest

from kmemopt.errors import UnsafeModelError
from kmemopt.load.model_size import (
    MAX_GRAPH_DEPTH,
    MAX_LAYER_CALLS,
    MAX_LAYERS,
    MAX_NESTING,
    RULE_MODEL_SIZE,
    check_model_size,
    model_size,
)

W = 4  # every tensor is (B, 4)
_DTYPE = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


def _layer(cls: str, name: str, **config) -> dict:
    return {"module": "keras.layers", "class_name": cls, "config": {"name": name, "dtype": _DTYPE, **config}}


def _input(name: str = "x", functional: bool = False) -> dict:
    entry = {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "config": {"batch_shape": [None, W], "dtype": "float32", "name": name},
    }
    if functional:
        entry.update(name=name, inbound_nodes=[])
    return entry


def _dense(name: str, units: int = W) -> dict:
    entry = _layer("Dense", name, units=units)
    entry["build_config"] = {"input_shape": [None, W]}
    return entry


def _tensor(layer: str, index: int = 0) -> dict:
    return {
        "class_name": "__keras_tensor__",
        "config": {"shape": [None, W], "dtype": "float32", "keras_history": [layer, index, 0]},
    }


def _call(entry: dict, *args) -> dict:
    return {**entry, "name": entry["config"]["name"], "inbound_nodes": [{"args": list(args), "kwargs": {}}]}


def _sequential(n: int, name: str = "deep") -> dict:
    """Input, then Dense/ReLU/Identity repeated: n layers after the input."""
    kinds = (lambda i: _dense(f"d{i}"), lambda i: _layer("ReLU", f"r{i}"), lambda i: _layer("Identity", f"i{i}"))
    layers = [_input()] + [kinds[i % 3](i) for i in range(n)]
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": name, "layers": layers, "build_input_shape": [None, W]},
        "build_config": {"input_shape": [None, W]},
    }


def _functional(name: str, layers: list[dict], output: str) -> dict:
    return {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {"name": name, "layers": layers, "input_layers": ["x", 0, 0], "output_layers": [output, 0, 0]},
        "registered_name": "Functional",
    }


def _chain(n: int) -> dict:
    """x -> Add([h, x]) -> Activation -> Add ... : n layer calls one after another."""
    layers, prev = [_input(functional=True)], "x"
    for i in range(n):
        if i % 2 == 0:
            layers.append(_call(_layer("Add", f"add{i}"), [_tensor(prev), _tensor("x")]))
            prev = f"add{i}"
        else:
            layers.append(_call(_layer("Activation", f"act{i}", activation="relu"), _tensor(prev)))
            prev = f"act{i}"
    return _functional("chain", layers, prev)


def _wide(n: int) -> dict:
    """One input feeding n parallel Dense(4) branches, added together."""
    layers = [_input(functional=True)]
    layers += [_call(_dense(f"b{i}"), _tensor("x")) for i in range(n)]
    layers.append(_call(_layer("Add", "sum"), [_tensor(f"b{i}") for i in range(n)]))
    return _functional("wide", layers, "sum")


def _shared(n: int) -> dict:
    """One Dense called n times in a row."""
    dense = _dense("shared")
    dense["name"] = "shared"
    dense["inbound_nodes"] = [
        {"args": [_tensor("x" if i == 0 else "shared", max(i - 1, 0))], "kwargs": {}} for i in range(n)
    ]
    layers = [_input(functional=True), dense]
    config = _functional("shared", layers, "shared")
    config["config"]["output_layers"] = ["shared", n - 1, 0]
    return config


def _nested(depth: int) -> dict:
    """Sequential inside Sequential, `depth` models in all, a Dense in each."""
    inner = None
    for level in range(depth):
        layers = [_input(f"in{level}")] + ([inner] if inner else []) + [_dense(f"d{level}")]
        inner = {
            "module": "keras",
            "class_name": "Sequential",
            "config": {"name": f"s{level}", "layers": layers, "build_input_shape": [None, W]},
            "build_config": {"input_shape": [None, W]},
        }
    return inner


def _write(path, config: dict) -> str:
    """A .keras file; the weights file holds no datasets (profile reads shapes from the architecture)."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5.create_group("vars")
        h5.create_group("layers")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", buf.getvalue())
    return str(path)


# ---------------------------------------------------------------------------------------------
# Counting (pure, no Keras)


def test_counts_of_each_shape():
    assert model_size(_sequential(30)).to_dict() == {"layers": 31, "calls": 31, "graph_depth": 31, "nesting": 0}
    assert model_size(_chain(30)).to_dict() == {"layers": 31, "calls": 31, "graph_depth": 31, "nesting": 0}
    assert model_size(_wide(30)).to_dict() == {"layers": 32, "calls": 32, "graph_depth": 3, "nesting": 0}
    assert model_size(_shared(30)).to_dict() == {"layers": 2, "calls": 31, "graph_depth": 31, "nesting": 0}
    # 5 models: each has its input and its Dense, all but the innermost the model inside it.
    assert model_size(_nested(5)).to_dict() == {"layers": 14, "calls": 14, "graph_depth": 3, "nesting": 4}


def test_counts_match_keras_for_a_real_graph(keras):
    """A residual model saved by Keras: the longest path counts every call on it once."""
    from keras.saving import serialize_keras_object

    x = keras.Input((W,), name="x")
    h = keras.layers.Dense(W, name="a")(x)
    h = keras.layers.Add(name="skip")([h, x])  # x -> a -> skip: 3 calls on the longest path
    sub = keras.Sequential([keras.Input((W,)), keras.layers.Dense(2, name="s")], name="sub")
    model = keras.Model(x, sub(h), name="res")
    size = model_size(json.loads(json.dumps(serialize_keras_object(model))))
    assert size.to_dict() == {"layers": 4 + 2, "calls": 6, "graph_depth": 4, "nesting": 1}


@pytest.mark.slow  # counts four 20,000-layer configs: the CLI refusals below keep the class in the fast tier
def test_counting_a_huge_config_is_fast_and_linear():
    config = _chain(50_000)
    started = time.perf_counter()
    size = model_size(config)
    assert size.graph_depth == 50_001  # no recursion: 50,000 calls deep
    assert time.perf_counter() - started < 60


def test_cycles_in_a_hostile_graph_end():
    config = _chain(4)
    config["config"]["layers"][1]["inbound_nodes"][0]["args"][0][1] = _tensor("act3")  # add0 reads act3
    assert 1 <= model_size(config).graph_depth <= 5  # an edge of the cycle is dropped; the walk ends


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (_sequential(MAX_LAYERS + 1), f"{MAX_LAYERS + 2:,} layers"),
        (_wide(MAX_LAYERS), f"{MAX_LAYERS + 2:,} layers"),
        (_shared(MAX_LAYER_CALLS + 1), "layer calls"),
        (_shared(MAX_GRAPH_DEPTH + 1), "chains"),  # few layers and calls, one long path
        (_nested(MAX_NESTING + 2), "nests sub-models"),
    ],
    ids=["sequential", "wide", "shared", "chain", "nested"],
)
def test_over_a_limit_is_refused(config, words):
    with pytest.raises(UnsafeModelError) as info:
        check_model_size(config)
    assert info.value.rule == RULE_MODEL_SIZE
    assert words in info.value.message
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# The CLI: refused at once (exit 3), before Keras builds anything


@pytest.mark.parametrize(
    "make",
    [
        lambda: _sequential(20_000),
        lambda: _chain(20_000),
        pytest.param(lambda: _wide(20_000), marks=pytest.mark.slow),  # the costliest to build; `make test`
        lambda: _shared(20_000),
    ],
    ids=["sequential", "chain", "wide", "shared"],
)
def test_cli_refuses_20000_layers_quickly(cli, tmp_path, make):
    path = _write(tmp_path / "big.keras", make())
    started = time.perf_counter()
    result = cli("profile", path)
    assert result.exit_code == 3, result.output
    assert "MODEL-SIZE" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert time.perf_counter() - started < 60  # was minutes, then a RecursionError


def test_cli_refuses_deep_nesting(cli, tmp_path):
    path = _write(tmp_path / "nested.keras", _nested(MAX_NESTING + 2))
    result = cli("profile", path)
    assert result.exit_code == 3, result.output
    assert "MODEL-SIZE" in result.output and "nests sub-models" in result.output


def test_api_refuses_with_the_rule(tmp_path):
    import kmemopt

    path = _write(tmp_path / "chain.keras", _chain(MAX_GRAPH_DEPTH + 10))
    with pytest.raises(UnsafeModelError) as info:
        kmemopt.profile(path)
    assert info.value.rule == RULE_MODEL_SIZE


# ---------------------------------------------------------------------------------------------
# Under the limits: profiled, exactly, in seconds (Keras's own Sequential loader is quadratic:
# 400 layers took minutes; a chain of 1,000 calls ended in RecursionError)


def _profile_json(cli, path) -> dict:
    result = cli("profile", path, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_long_sequential_profiles_exactly(cli, tmp_path):
    n = 600  # 200 Dense(4) layers of 4*4+4 = 20 parameters
    path = _write(tmp_path / "seq.keras", _sequential(n))
    started = time.perf_counter()
    report = _profile_json(cli, path)
    assert time.perf_counter() - started < 60
    assert report["totals"]["params"] == 200 * 20
    assert report["totals"]["param_bytes"] == 200 * 20 * 4
    assert len(report["layers"]) == n + 1


def test_chain_deeper_than_pythons_recursion_limit_profiles(cli, tmp_path):
    n = 1_500  # Keras walks this graph with one frame a call: over the default limit of 1,000
    path = _write(tmp_path / "chain.keras", _chain(n))
    report = _profile_json(cli, path)
    assert report["totals"]["params"] == 0
    assert len(report["layers"]) == n + 1
    # The live set is the input and one (B, 4) tensor: 2 tensors in, 1 out at each Add.
    assert report["totals"]["inference_activation_peak_bytes"] == 3 * 32 * W * 4


def test_wide_model_profiles_exactly(cli, tmp_path):
    n = 1_000
    path = _write(tmp_path / "wide.keras", _wide(n))
    report = _profile_json(cli, path)
    assert report["totals"]["params"] == n * 20
    # Every branch stays alive until the Add: with the last branch, the input and n outputs are live.
    assert report["totals"]["inference_activation_peak_bytes"] == (n + 1) * 32 * W * 4


@pytest.mark.slow
def test_sequential_just_under_the_limit_profiles(cli, tmp_path):
    n = MAX_LAYERS - 1  # with its InputLayer: exactly MAX_LAYERS layers
    path = _write(tmp_path / "seq.keras", _sequential(n))
    started = time.perf_counter()
    report = _profile_json(cli, path)
    assert time.perf_counter() - started < 120
    dense = len(range(0, n, 3))
    assert report["totals"]["params"] == dense * 20


def test_keras_sequential_loader_is_replaced_only_inside(keras):
    """Outside kmemopt's build, Keras's own Sequential.from_config is untouched."""
    from keras.src.models.sequential import Sequential

    from kmemopt.load.build import build_from_config

    before = Sequential.__dict__["from_config"]
    model = build_from_config(_sequential(9))
    assert Sequential.__dict__["from_config"] is before
    assert model.count_params() == 3 * 20
    assert [len(layer._inbound_nodes) for layer in model.layers] == [1] * 9  # built once, not after each add


def test_counting_needs_no_keras():
    """The count runs before Keras: it must not import it (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys, kmemopt.load.model_size as m; m.model_size({'class_name': 'Sequential', 'config': {'layers': []}}); "
        "print('keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_constructor_built_models_count_their_blocks():
    """A keras-hub backbone's config lists no layers; its block counts are what Keras would build."""
    from kmemopt.load.model_size import LAYERS_PER_BLOCK, MAX_LAYERS, check_model_size, model_size

    llama = {
        "module": "keras_hub.src.models.llama.llama_backbone",
        "class_name": "LlamaBackbone",
        "config": {"num_layers": 32, "hidden_dim": 4096, "num_query_heads": 32},
    }
    assert model_size(llama).layers == 32 * LAYERS_PER_BLOCK
    check_model_size(llama)  # a real 7B-sized backbone passes
    resnet = {
        "registered_name": "keras_hub>ResNetBackbone",
        "class_name": "ResNetBackbone",
        "config": {"stackwise_num_blocks": [3, 4, 6, 3], "depth_multiplier": 99999},
    }
    assert model_size(resnet).layers == 16 * LAYERS_PER_BLOCK
    hostile = dict(llama, config=dict(llama["config"], num_layers=MAX_LAYERS))
    with pytest.raises(UnsafeModelError) as info:
        check_model_size(hostile)
    assert info.value.rule == "MODEL-SIZE"
    # the same keys outside keras-hub are plain arguments, not blocks
    assert model_size({"module": "keras.layers", "class_name": "Dense", "config": {"num_layers": 10**6}}).layers == 0
