"""Configs on their own: what a config alone could make kmemopt allocate or resolve, and what it must not refuse.

Issue 11, items "configs that allocate", the linear walk and JSON depth check, strings Keras resolves
to objects (legacy `.h5` above all), and the `--custom-objects` contract.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from kmemopt.errors import MalformedModelError, UnsafeModelError
from kmemopt.load.archive import load_json, read_model_file
from kmemopt.load.trust import MAX_CONFIG_ARRAY_BYTES, MAX_CONFIG_ARRAY_ELEMENTS, precheck_config

GIB = 1024**3


def _config_of(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("config.json"))


def _rewrite(src: Path, dst: Path, config: dict | bytes) -> Path:
    data = config if isinstance(config, bytes) else json.dumps(config, separators=(",", ":")).encode()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, data if info.filename == "config.json" else zin.read(info))
    return dst


def _markers(config, class_name: str):
    """Every dict of `config` with this class_name (test helper: configs here are small)."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == class_name:
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _run_measured(code: str, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, int]:
    """Run Python code in a fresh process; its peak RSS (bytes) from wait4, not the test runner's."""
    launcher = textwrap.dedent(
        """
        import os, subprocess, sys
        proc = subprocess.Popen(sys.argv[1:])
        _, status, usage = os.wait4(proc.pid, 0)
        print("PEAK", usage.ru_maxrss * 1024, file=sys.stderr)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", launcher, sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    peak = int(next(line.split()[1] for line in out.stderr.splitlines() if line.startswith("PEAK")))
    return out, peak


PROFILE = textwrap.dedent(
    """
    import sys
    from kmemopt.errors import KmemoptError
    import kmemopt.api as api
    try:
        api.profile(sys.argv[1], batch_size=1)
        print("OK")
    except KmemoptError as e:
        print(e.exit_code, e.rule, e.where)
    print("keras" in sys.modules)
    """
)


@pytest.fixture(scope="module")
def constant_path(keras, tmp_path_factory) -> Path:
    """A functional model with a NumPy constant in a node's arguments (a real `__numpy__` marker)."""
    import numpy as np

    inp = keras.Input((4,), name="x")
    out = keras.ops.add(keras.layers.Dense(4, name="d")(inp), np.ones((4,), "float32"))
    path = tmp_path_factory.mktemp("const") / "const.keras"
    keras.Model(inp, out).save(path)
    return path


# ---------------------------------------------------------------- arrays a config would build


@pytest.mark.parametrize(
    "dtype", ["S2000000000", "U100000000", "V1000000000", "(100000000,)f8", "object", "string", None, [["a", "<f8"]]]
)
@pytest.mark.parametrize("marker", ["__numpy__", "__tensor__"])
def test_array_marker_of_a_non_numeric_dtype_is_refused(constant_path, marker, dtype):
    cfg = _config_of(constant_path)
    (node,) = _markers(cfg, "__numpy__")
    node["class_name"] = marker
    node["config"]["dtype"] = dtype
    with pytest.raises(UnsafeModelError) as info:
        precheck_config(cfg)
    assert info.value.rule == "CONFIG-MARKER"
    assert info.value.where == "$.config.layers[2].inbound_nodes[0].args[1]"


def test_real_constant_passes_and_profiles(constant_path):
    import kmemopt

    assert precheck_config(_config_of(constant_path)) > 0
    assert kmemopt.profile(constant_path, batch_size=1).totals.params == 20


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        ([0] * (MAX_CONFIG_ARRAY_ELEMENTS + 1), "uint8"),  # too many elements, whatever their size
        (["1.5", "2"], "float32"),  # NumPy would parse strings
        ([[1.0], [None]], "float32"),
        ([{"class_name": "__numpy__", "config": {}}], "float32"),
    ],
    ids=["elements", "strings", "none", "dict"],
)
def test_array_marker_values_must_be_few_numbers(constant_path, value, dtype):
    cfg = _config_of(constant_path)
    (node,) = _markers(cfg, "__numpy__")
    node["config"].update(value=value, dtype=dtype)
    with pytest.raises(UnsafeModelError) as info:
        precheck_config(cfg)
    assert info.value.rule == "CONFIG-MARKER"


def test_array_bytes_are_counted_over_the_whole_config(constant_path):
    cfg = _config_of(constant_path)
    (node,) = _markers(cfg, "__numpy__")
    big = [0.0] * (MAX_CONFIG_ARRAY_ELEMENTS // 2)  # 2**21 complex128: 32 MiB an array
    node["config"].update(value=big, dtype="complex128")
    assert 16 * len(big) <= MAX_CONFIG_ARRAY_BYTES
    precheck_config(cfg)  # one of them is fine
    args = cfg["config"]["layers"][2]["inbound_nodes"][0]["args"]
    args.extend([copy.copy(node), copy.copy(node)])  # three are 96 MiB
    with pytest.raises(UnsafeModelError) as info:
        precheck_config(cfg)
    assert info.value.rule == "CONFIG-MARKER"
    assert info.value.where == "$.config.layers[2].inbound_nodes[0].args[3]"


def test_bytes_marker_must_be_a_string(constant_path):
    cfg = _config_of(constant_path)
    args = cfg["config"]["layers"][2]["inbound_nodes"][0]["args"]
    args.append({"class_name": "__bytes__", "config": {"value": "abc"}})
    precheck_config(cfg)
    args[-1]["config"]["value"] = [1, 2, 3]
    with pytest.raises(UnsafeModelError) as info:
        precheck_config(cfg)
    assert info.value.rule == "CONFIG-MARKER"


def test_huge_string_dtype_is_refused_before_keras_with_little_memory(constant_path, tmp_path):
    """The 14 KB file that took `profile` to 6.3 GB: refused in the pre-check, Keras never imported."""
    cfg = _config_of(constant_path)
    (node,) = _markers(cfg, "__numpy__")
    node["config"]["dtype"] = "S2000000000"
    path = _rewrite(constant_path, tmp_path / "s.keras", cfg)
    out, peak = _run_measured(PROFILE, str(path))
    assert out.stdout.splitlines() == ["3 CONFIG-MARKER $.config.layers[2].inbound_nodes[0].args[1]", "False"], (
        out.stderr
    )
    assert peak < 1 * GIB


def _node_without_tensors(cfg: dict) -> dict:
    node = cfg["config"]["layers"][2]["inbound_nodes"][0]
    node["args"][0] = {"class_name": "__numpy__", "config": {"value": [1.0], "dtype": "float32"}}
    return cfg


def test_node_called_on_constants_only_is_refused(constant_path):
    """Keras would run such a node eagerly while rebuilding the graph (`ops.full((2**20, 2**20))`)."""
    cfg = _node_without_tensors(_config_of(constant_path))
    with pytest.raises(UnsafeModelError) as info:
        precheck_config(cfg)
    assert (info.value.rule, info.value.where) == ("CONFIG-MARKER", "$.config.layers[2].inbound_nodes[0]")


def test_repeat_vector_of_a_constant_is_refused(keras, tmp_path):
    inp = keras.Input((3,), name="x")
    path = tmp_path / "rv.keras"
    keras.Model(inp, keras.layers.RepeatVector(4, name="rv")(inp)).save(path)
    cfg = _config_of(path)
    rv = cfg["config"]["layers"][1]
    assert rv["class_name"] == "RepeatVector"
    precheck_config(cfg)
    rv["config"]["n"] = 2**30
    rv["inbound_nodes"][0]["args"] = [{"class_name": "__numpy__", "config": {"value": [[1.0]], "dtype": "float32"}}]
    with pytest.raises(UnsafeModelError) as info:
        precheck_config(cfg)
    assert info.value.rule == "CONFIG-MARKER"


@pytest.mark.parametrize(
    ("layer", "edit", "key"),
    [
        ("StringLookup", {"num_oov_indices": 100_000_000}, "num_oov_indices"),
        ("IntegerLookup", {"num_oov_indices": 2**40}, "num_oov_indices"),
        ("StringLookup", {"max_tokens": 2**40, "pad_to_max_tokens": True}, "max_tokens"),
    ],
)
def test_lookup_tables_sized_by_a_number_are_refused(keras, tmp_path, layer, edit, key):
    """IndexLookup builds num_oov_indices tokens and a tf-idf table padded to max_tokens (3.4 GB seen)."""
    string = layer == "StringLookup"
    inp = keras.Input((3,), dtype="string" if string else "int64", name="x")
    vocab = ["a", "b"] if string else [7, 9]
    lookup = getattr(keras.layers, layer)(vocabulary=vocab, idf_weights=[1.0, 2.0], output_mode="tf_idf", name="lk")
    path = tmp_path / "lk.keras"
    keras.Model(inp, lookup(inp)).save(path)
    cfg = _config_of(path)
    precheck_config(cfg)
    cfg["config"]["layers"][1]["config"].update(edit)
    with pytest.raises(UnsafeModelError) as info:
        precheck_config(cfg)
    assert (info.value.rule, info.value.where) == ("CONFIG-MARKER", f"$.config.layers[1].config.{key}")


def test_padded_vocabulary_without_tf_idf_is_not_refused(keras, tmp_path):
    inp = keras.Input((3,), dtype="string", name="x")
    layer = keras.layers.StringLookup(
        vocabulary=["a"], max_tokens=2**40, pad_to_max_tokens=True, output_mode="multi_hot"
    )
    path = tmp_path / "mh.keras"
    keras.Model(inp, layer(inp)).save(path)
    assert precheck_config(_config_of(path)) > 0


# ---------------------------------------------------------------- walking and parsing cost


def _with_long_list(src: Path, dst: Path, item: bytes, count: int) -> Path:
    """`src` with a "notes" list of `count` copies of the JSON value `item` in its config: the bytes
    json.dumps would write for that list, without building (and encoding) millions of Python objects."""
    cfg = _config_of(src)
    cfg["notes"] = "@NOTES@"
    text = json.dumps(cfg, separators=(",", ":")).encode()
    return _rewrite(src, dst, text.replace(b'"@NOTES@"', b"[" + b",".join([item] * count) + b"]"))


@pytest.fixture(scope="module")
def long_list_path(mlp_path, tmp_path_factory) -> Path:
    """An 8 MB config holding one list of 3.9 million numbers, just under the JSON value cap (a 24 MB one
    of 12 million took the walkers to 3.4 GB before; it is now refused while reading, see below)."""
    return _with_long_list(mlp_path, tmp_path_factory.mktemp("long") / "long.keras", b"0", 3_900_000)


def test_a_config_of_too_many_values_is_refused_while_reading(mlp_path, tmp_path):
    from kmemopt.load.archive import read_model_file

    for name, item, count in (("ints", b"0", 12 * 1024**2), ("objects", b"{}", 8 * 1024**2)):
        path = _with_long_list(mlp_path, tmp_path / f"{name}.keras", item, count)
        with pytest.raises(UnsafeModelError) as info:
            read_model_file(path)
        assert info.value.rule == "CONFIG-JSON"
        assert "4,000,000" in info.value.message


WALK = textwrap.dedent(
    """
    import sys
    from kmemopt.load.archive import read_model_file
    from kmemopt.load import trust

    def rss(field):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))

    def peak_of(walk):
        base = rss("VmRSS:")
        open("/proc/self/clear_refs", "w").write("5")  # the peak from here on
        walk()
        return rss("VmHWM:") - base

    model_file = read_model_file(sys.argv[1])
    allow = trust.build_allowlist(keras_hub=False)
    precheck = peak_of(lambda: (trust.precheck_file(model_file), trust.mentions_keras_hub(model_file.config)))
    check = peak_of(lambda: trust.check_config(model_file.config, allow))
    print(precheck, check)
    """
)


@pytest.fixture(scope="module")
def walk_peaks(long_list_path) -> dict[str, int]:
    """Each walker's own peak over the long list, in one fresh process (the high-water mark reset before each)."""
    out = subprocess.run([sys.executable, "-c", WALK, str(long_list_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    precheck, check = map(int, out.stdout.split()[-2:])
    return {"precheck": precheck, "check": check}


@pytest.mark.slow  # a child measuring its own peak; the fast tier keeps the refusal while reading: `make test` runs it
@pytest.mark.parametrize("walk", ["precheck", "check"])
def test_walking_a_long_list_costs_no_memory(walk_peaks, walk):
    """Walkers keep one iterator a level of nesting: nothing a list element."""
    assert walk_peaks[walk] < 64 * 1024**2  # was 3 GB


@pytest.mark.slow  # a CLI run in its own process; the fast tier keeps the refusal while reading: `make test` runs it
def test_profile_of_a_long_list_config_stays_small(long_list_path):
    out, peak = _run_measured(PROFILE, str(long_list_path))
    assert out.stdout.splitlines()[0] == "OK", out.stderr
    assert peak < 1.5 * GIB  # TensorFlow alone is ~0.7 GiB; it was 3.7 GiB


def test_invalid_json_is_refused_in_linear_time():
    """An unterminated string made the depth regex backtrack for 122 s on 200 KB."""
    text = '{"a": "' + '\\"[{' * 70_000
    start = time.monotonic()
    with pytest.raises(MalformedModelError):
        load_json(text.encode(), "config.json")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("[" * 200 + "]" * 200, True),
        ("[" * 201 + "]" * 201, False),
        ('{"a":' * 199 + "{}" + "}" * 199, True),
        ('{"a":' * 200 + "[]" + "}" * 200, False),
        ("[" * 100_000, False),
        ('{"a":' * 100_000, False),
    ],
)
def test_json_depth_cap_is_exact(text, ok):
    if ok:
        load_json(text.encode(), "config.json")
    else:
        with pytest.raises(UnsafeModelError) as info:
            load_json(text.encode(), "config.json")
        assert info.value.rule == "CONFIG-JSON"


def test_config_json_with_a_byte_order_mark_loads(mlp_path, tmp_path, keras):
    import kmemopt

    raw = b"\xef\xbb\xbf" + json.dumps(_config_of(mlp_path)).encode()
    path = _rewrite(mlp_path, tmp_path / "bom.keras", raw)
    keras.models.load_model(path)  # Keras loads it: so must kmemopt
    assert read_model_file(path).config == _config_of(mlp_path)
    assert kmemopt.profile(path, batch_size=1).totals.params == kmemopt.profile(mlp_path, batch_size=1).totals.params
    assert load_json("\ufeff[1]", "model_config attribute") == [1]


# ---------------------------------------------------------------- strings Keras resolves to objects


@pytest.fixture(scope="module")
def allow(keras):
    from kmemopt.load.trust import build_allowlist

    return build_allowlist()


def _legacy_h5(keras, path: Path, **compile_args) -> Path:
    inp = keras.Input((4,), name="x")
    h = keras.layers.Dense(3, activation="relu", name="d")(inp)
    out = keras.layers.Dense(2, activation="softmax", name="out")(h)
    model = keras.Model(inp, out)
    model.compile(**(compile_args or {"optimizer": "adam", "loss": "mse"}))
    model.save(path)
    return path


def _edit_h5(path: Path, attr: str, edit) -> None:
    import h5py

    with h5py.File(path, "r+") as h5:
        cfg = json.loads(h5.attrs[attr])
        edit(cfg)
        h5.attrs[attr] = json.dumps(cfg)


def _check(path: Path, allow) -> None:
    from kmemopt.load.build import checked_configs

    checked_configs(read_model_file(path), allow)


@pytest.mark.parametrize(
    ("key", "value", "resolved"),
    [
        ("activation", "deserialize", "deserialize"),
        ("activation", "serialize", "serialize"),
        ("kernel_initializer", "deserialize", "deserialize"),
        ("padding", "concatenate", "concatenate"),  # any string of an object's config, not only functions' keys
        ("activation", "keras_hub>upload_preset", "upload_preset"),
        ("kernel_regularizer", "keras_hub>get", "get"),
    ],
)
def test_legacy_string_resolving_to_a_function_is_refused(keras, tmp_path, allow, key, value, resolved):
    path = _legacy_h5(keras, tmp_path / "m.h5")

    def edit(cfg):
        cfg["config"]["layers"][1]["config"][key] = value

    _edit_h5(path, "model_config", edit)
    with pytest.raises(UnsafeModelError) as info:
        _check(path, allow)
    assert (info.value.rule, info.value.where) == ("TRUST-FUNCTION", f"$.config.layers[1].config.{key}")
    assert f".{resolved}," in str(info.value)


def test_legacy_string_function_is_live_under_plain_keras(keras, tmp_path):
    """Positive control: plain Keras does turn `"activation": "deserialize"` into that function."""
    path = _legacy_h5(keras, tmp_path / "m.h5")
    _edit_h5(path, "model_config", lambda cfg: cfg["config"]["layers"][1]["config"].update(activation="deserialize"))
    from keras.src import layers

    assert keras.models.load_model(path, compile=False).get_layer("d").activation is layers.deserialize


@pytest.mark.parametrize(
    ("key", "value", "where"),
    [
        ("loss", "keras_hub>upload_preset", "$.compile_config.loss"),
        ("loss", {"out": "keras_hub>get"}, "$.compile_config.loss.out"),
        ("metrics", ["mae", ["keras_hub>serialize"]], "$.compile_config.metrics[1][0]"),
        ("weighted_metrics", ["keras_hub>deserialize"], "$.compile_config.weighted_metrics[0]"),
    ],
)
def test_compile_strings_resolving_to_functions_are_refused(keras, tmp_path, allow, key, value, where):
    path = _legacy_h5(keras, tmp_path / "m.h5")
    _edit_h5(path, "training_config", lambda cfg: cfg.update({key: value}))
    with pytest.raises(UnsafeModelError) as info:
        _check(path, allow)
    assert (info.value.rule, info.value.where) == ("TRUST-FUNCTION", where)


def test_keras_format_compile_and_node_strings_are_checked(keras, mlp_path, tmp_path, allow):
    """`.keras` files too: compile_from_config and node kwargs look strings up in Keras's registry."""
    from kmemopt.load.build import checked_configs

    checked_configs(read_model_file(mlp_path), allow)
    cfg = _config_of(mlp_path)
    cfg["compile_config"]["loss"] = "keras_hub>upload_preset"
    with pytest.raises(UnsafeModelError) as info:
        checked_configs(read_model_file(_rewrite(mlp_path, tmp_path / "c.keras", cfg)), allow)
    assert (info.value.rule, info.value.where) == ("TRUST-FUNCTION", "$.compile_config.loss")
    cfg = _config_of(mlp_path)
    cfg["config"]["layers"][1]["inbound_nodes"][0]["kwargs"]["training"] = "keras_hub>upload_preset"
    with pytest.raises(UnsafeModelError) as info:
        checked_configs(read_model_file(_rewrite(mlp_path, tmp_path / "n.keras", cfg)), allow)
    assert info.value.where == "$.config.layers[1].inbound_nodes[0].kwargs.training"


def test_keras_format_keeps_strings_that_only_legacy_resolves(keras, tmp_path, allow):
    """`score_mode="dot"` is a plain string in a .keras file (only the legacy loader looks it up)."""
    from kmemopt.load.build import checked_configs

    q = keras.Input((2, 4), name="q")
    path = tmp_path / "att.keras"
    keras.Model(q, keras.layers.Attention(score_mode="dot", name="att")([q, q])).save(path)
    checked_configs(read_model_file(path), allow)


ACTIVATIONS = ["relu", "gelu", "silu", "swish", "tanh", "sigmoid", "softmax", "linear", "elu", "selu", "hard_silu"]
INITIALIZERS = ["glorot_uniform", "he_normal", "zeros", "ones", "orthogonal", "GlorotUniform", "random_normal"]


@pytest.mark.parametrize(
    "compile_args",
    [
        {"optimizer": "adam", "loss": "mse", "metrics": ["mae", "acc"]},
        {"optimizer": "sgd", "loss": "categorical_crossentropy", "metrics": ["accuracy"]},
        {"optimizer": "rmsprop", "loss": "sparse_categorical_crossentropy", "metrics": ["sparse_categorical_accuracy"]},
        {"optimizer": "adamw", "loss": "binary_crossentropy", "metrics": ["AUC"], "weighted_metrics": ["mse"]},
        {"optimizer": "nadam", "loss": "huber", "metrics": ["mean_absolute_percentage_error"]},
    ],
)
@pytest.mark.parametrize("fmt", ["h5", "keras"])
def test_strings_keras_writes_pass(keras, tmp_path, allow, compile_args, fmt):
    inp = keras.Input((4,), name="x")
    h = inp
    for i, act in enumerate(ACTIVATIONS):
        h = keras.layers.Dense(3, activation=act, kernel_regularizer=["l1", "l2", "L1L2"][i % 3], name=f"d{i}")(h)
    h = keras.layers.LSTM(2, activation="tanh", recurrent_activation="sigmoid", name="lstm")(
        keras.layers.Reshape((3, 1))(h)
    )
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="out")(h))
    model.compile(**compile_args)
    path = tmp_path / f"m.{fmt}"
    model.save(path)
    _check(path, allow)
    if fmt == "h5":
        # Initializers, regularizers and constraints given by name, as hand-written and Keras 2 configs do.
        def by_name(cfg):
            for i, init in enumerate(INITIALIZERS):
                layer = cfg["config"]["layers"][1 + i]["config"]
                layer.update(
                    kernel_initializer=init,
                    kernel_regularizer=["l1", "l2", "L1L2"][i % 3],
                    kernel_constraint=["non_neg", "max_norm", "unit_norm"][i % 3],
                )

        _edit_h5(path, "model_config", by_name)
        assert keras.models.load_model(path, compile=False).get_layer("d0").kernel_constraint is not None
        _check(path, allow)


# ---------------------------------------------------------------- --custom-objects


CUSTOM_LAYER = """
import keras


class Gated(keras.layers.Layer):
    def call(self, x):
        return x * keras.ops.sigmoid(x)


def swishy(x):
    return x * keras.ops.sigmoid(x)
"""


@pytest.fixture()
def gated_model(keras, tmp_path, monkeypatch):
    (tmp_path / "mylayers.py").write_text(CUSTOM_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mylayers = importlib.import_module("mylayers")
    inp = keras.Input((4,), name="x")
    out = mylayers.Gated(name="g")(keras.layers.Dense(4, name="d")(inp))
    path = tmp_path / "gated.keras"
    keras.Model(inp, out).save(path)
    yield path, mylayers
    sys.modules.pop("mylayers", None)


@pytest.mark.parametrize(
    "source",
    [
        "from mylayers import Gated\n",
        "from mylayers import Gated as G\n",
        "import mylayers\n\nCUSTOM_OBJECTS = {'Gated': mylayers.Gated}\n",
    ],
    ids=["import", "import-as", "dict"],
)
def test_custom_objects_file_that_imports_its_class(gated_model, tmp_path, source):
    import kmemopt
    from kmemopt.load.trust import load_custom_objects

    path, mylayers = gated_model
    with pytest.raises(UnsafeModelError):
        kmemopt.profile(path, batch_size=1)
    (tmp_path / "custom.py").write_text(source)
    found = load_custom_objects(tmp_path / "custom.py")
    assert found["Gated"] is mylayers.Gated
    assert kmemopt.profile(path, batch_size=1, custom_objects=str(tmp_path / "custom.py")).totals.params == 20


def test_imported_plain_functions_are_not_taken(gated_model, tmp_path):
    from kmemopt.load.trust import load_custom_objects

    (tmp_path / "custom.py").write_text("from os import system\nfrom mylayers import Gated, swishy\n")
    found = load_custom_objects(tmp_path / "custom.py")
    assert "Gated" in found
    assert "system" not in found and "swishy" not in found


def test_custom_objects_file_next_to_its_module_outside_cwd(keras, tmp_path):
    """The file's folder is on sys.path while it runs, as `python custom.py` would have it."""
    from kmemopt.load.trust import load_custom_objects

    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "sibling_layers.py").write_text(CUSTOM_LAYER.replace("Gated", "Sibling"))
    (folder / "custom.py").write_text("from sibling_layers import Sibling\n")
    try:
        found = load_custom_objects(folder / "custom.py")
        assert found["Sibling"].__name__ == "Sibling"
        assert str(folder) not in sys.path
    finally:
        sys.modules.pop("sibling_layers", None)
