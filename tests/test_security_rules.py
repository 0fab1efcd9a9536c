"""The safety rules in-process: what the allowlist, the pre-check and the archive reader decide, and where.

The CLI-level corpus lives in test_security.py; these tests pin single rules quickly and check that
the rules do not refuse real models.
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import pytest
from conftest import SAMPLES

from kmemopt.errors import MalformedModelError, UnsafeModelError
from kmemopt.load.archive import Limits, read_model_file

POPEN = {"module": "subprocess", "class_name": "Popen", "config": {"args": ["true"]}, "registered_name": None}


@pytest.fixture(scope="module")
def allow(keras):
    from kmemopt.load.trust import build_allowlist

    return build_allowlist()


def _config_of(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("config.json"))


def _rewrite(src: Path, dst: Path, config: dict, **extra: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = json.dumps(config).encode() if info.filename == "config.json" else zin.read(info)
            zout.writestr(info.filename, extra.pop(info.filename, data))
    return dst


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.keras")))
def test_real_models_pass_every_rule(sample, allow):
    from kmemopt.load.build import build_from_file, checked_configs
    from kmemopt.load.trust import check_loadable, precheck_file

    model_file = read_model_file(SAMPLES / sample)
    precheck_file(model_file)
    checked_configs(model_file, allow)
    check_loadable(model_file, build_from_file(model_file, allow=allow))


def test_legacy_h5_without_module_keys_passes(keras, tmp_path, allow):
    """Keras 2 style configs name classes only: looked up by name in the allowlist."""
    import h5py

    from kmemopt.load.build import checked_configs
    from kmemopt.load.trust import precheck_file

    inp = keras.Input((4,))
    h = keras.layers.Dense(3, kernel_regularizer="l2", kernel_constraint="non_neg", name="d")(inp)
    model = keras.Model(inp, keras.layers.Bidirectional(keras.layers.LSTM(2))(keras.layers.Reshape((3, 1))(h)))
    path = tmp_path / "k2.h5"
    model.save(path)
    with h5py.File(path, "r+") as h5:
        cfg = json.loads(h5.attrs["model_config"])
        stack = [cfg]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                node.pop("module", None)
                node.pop("registered_name", None)
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        h5.attrs["model_config"] = json.dumps(cfg)
    model_file = read_model_file(path)
    precheck_file(model_file)
    assert checked_configs(model_file, allow) is None


@pytest.mark.parametrize(
    ("where", "rule"),
    [
        (("config", "kernel_initializer"), "TRUST-MODULE"),
        (("config", "kernel_regularizer"), "TRUST-MODULE"),
        (("config", "bias_constraint"), "TRUST-MODULE"),
        (("config", "dtype"), "TRUST-MODULE"),
    ],
)
def test_refusal_names_rule_and_json_path(nested_path, tmp_path, where, rule, allow):
    from kmemopt.load.build import checked_configs

    cfg = _config_of(nested_path)
    dense = cfg["config"]["layers"][1]
    dense["config"][where[1]] = copy.deepcopy(POPEN)
    path = _rewrite(nested_path, tmp_path / "m.keras", cfg)
    with pytest.raises(UnsafeModelError) as info:
        checked_configs(read_model_file(path), allow)
    assert info.value.rule == rule
    assert info.value.where == f"$.config.layers[1].config.{where[1]}"


def test_precheck_refuses_without_importing_keras(nested_path, tmp_path):
    """A hostile file is refused before Keras (or keras-hub) is imported: checked in a fresh process."""
    import subprocess
    import sys

    cfg = _config_of(nested_path)
    cfg["config"]["layers"][2]["config"]["layers"][1] = copy.deepcopy(POPEN)
    path = _rewrite(nested_path, tmp_path / "m.keras", cfg)
    code = (
        "import sys\nfrom kmemopt.errors import UnsafeModelError\nimport kmemopt.api as api\n"
        "try:\n    api.profile(sys.argv[1])\nexcept UnsafeModelError as e:\n    print(e.rule, e.where)\n"
        "print('keras' in sys.modules, 'tensorflow' in sys.modules, 'keras_hub' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == ["TRUST-MODULE $.config.layers[2].config.layers[1]", "False False False"], (
        out.stderr
    )


def test_precheck_leaves_custom_modules_to_the_allowlist(nested_path, tmp_path):
    """With --custom-objects, a class from the user's own module is decided by the allowlist, not the pre-check."""
    from kmemopt.load.trust import precheck_config

    entry = {"module": "my_layers", "class_name": "MyDense", "config": {}, "registered_name": "MyDense"}
    with pytest.raises(UnsafeModelError):
        precheck_config(entry)
    assert precheck_config(entry, custom_objects=True) == 1
    lam = {"module": "keras.layers", "class_name": "Lambda", "config": {}, "registered_name": None}
    with pytest.raises(UnsafeModelError, match="runs code"):
        precheck_config(lam, custom_objects=True)  # code-running classes: never, whatever the user passes


def test_custom_objects_file_allows_its_class(tmp_path, keras, allow):
    from kmemopt.load.trust import build_allowlist, check_config, load_custom_objects

    source = tmp_path / "mine.py"
    source.write_text(
        "import keras\n\n@keras.saving.register_keras_serializable(package='Mine')\n"
        "class Twice(keras.layers.Layer):\n    def call(self, x):\n        return 2 * x\n"
    )
    entry = {
        "module": "kmemopt_custom_objects",
        "class_name": "Twice",
        "config": {"name": "t"},
        "registered_name": "Mine>Twice",
    }
    with pytest.raises(UnsafeModelError):
        check_config(entry, allow)
    assert check_config(entry, build_allowlist(load_custom_objects(source))) == 1


def test_json_caps(nested_path, tmp_path):
    cfg = _config_of(nested_path)
    path = _rewrite(nested_path, tmp_path / "m.keras", cfg)
    with pytest.raises(UnsafeModelError) as info:
        read_model_file(path, Limits(max_config_bytes=1024))
    assert info.value.rule == "ARCHIVE-SIZE"
    deep = _rewrite(nested_path, tmp_path / "d.keras", cfg, **{"config.json": b'{"a":' * 300 + b"1" + b"}" * 300})
    with pytest.raises(UnsafeModelError) as info:
        read_model_file(deep)
    assert info.value.rule == "CONFIG-JSON"
    # Brackets inside strings are not nesting.
    quoted = dict(cfg, note="[" * 5000)
    assert read_model_file(_rewrite(nested_path, tmp_path / "q.keras", quoted)).config["note"] == "[" * 5000


def test_load_model_refuses_weights_the_file_does_not_store(keras, tmp_path, models_dir):
    from factories import dense_stack, write_declared_model

    from kmemopt.api import load_model

    bomb = write_declared_model(tmp_path / "bomb.keras", dense_stack(keras, [4096, 4096]))
    with pytest.raises(UnsafeModelError) as info:
        load_model(bomb)
    assert info.value.rule == "HDF5-SHAPE-BOMB"

    inp = keras.Input((4,))
    small = keras.Model(inp, keras.layers.Dense(3, name="d")(inp))
    src = tmp_path / "small.keras"
    small.save(src)
    cfg = _config_of(src)
    cfg["config"]["layers"][1]["config"]["units"] = 2**40
    huge = _rewrite(src, tmp_path / "huge.keras", cfg)
    with pytest.raises(UnsafeModelError) as info:
        load_model(huge)
    assert info.value.rule == "HDF5-SHAPE-BOMB"
    assert f"needs {(4 + 1) * 2**40 * 4:,} bytes" in info.value.message  # kernel 4 x 2**40 + bias, float32
    assert load_model(src).count_params() == small.count_params()


def test_damaged_hdf5_is_malformed_not_a_crash(nested_path, tmp_path):
    """Corruption found by the fuzzer: h5py raises RuntimeError/KeyError/OSError; all are exit 3."""
    with zipfile.ZipFile(nested_path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    h5 = bytearray(members["model.weights.h5"])
    pos = h5.find(b"TREE")
    h5[pos : pos + 4] = b"UREE"  # a B-tree node signature, as in the fuzzer's first find
    path = tmp_path / "damaged.keras"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, bytes(h5) if name == "model.weights.h5" else data)
    with pytest.raises(MalformedModelError):
        read_model_file(path)


def test_every_rule_id_is_documented():
    from kmemopt.load import archive, trust

    doc = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    rules = {v for m in (archive, trust) for k, v in vars(m).items() if k.startswith("RULE_")}
    assert len(rules) >= 18
    assert sorted(r for r in rules if f"`{r}`" not in doc) == []


def test_looping_hdf5_is_refused_in_bounded_time(keras, tmp_path):
    """The HDF5 loop the fuzzer found: the metadata is read in a forked child that is killed on time."""
    from hostile import HDF5_LOOP_EDIT, fuzz_model

    path = tmp_path / "loop.h5"
    fuzz_model(keras).save(path)
    data = path.read_bytes()
    at = data.find(HDF5_LOOP_EDIT[0])
    path.write_bytes(data[:at] + HDF5_LOOP_EDIT[1] + data[at + len(HDF5_LOOP_EDIT[0]) :])
    with pytest.raises(UnsafeModelError) as info:
        read_model_file(path, Limits(max_read_seconds=3))
    assert info.value.rule == "ARCHIVE-TIME"


def test_reading_in_a_child_returns_the_same_model_file(nested_path, monkeypatch):
    bounded = read_model_file(nested_path)
    monkeypatch.setenv("KMEMOPT_MAX_READ_SECONDS", "0")  # in-process
    assert read_model_file(nested_path) == bounded


def test_class_entry_resolving_to_a_function_is_refused(allow):
    """Keras hands back a function found through a class entry as is; it could then run as an activation."""
    from kmemopt.load.trust import check_config

    entry = {
        "module": "keras_hub.src.utils.preset_utils",
        "class_name": "upload_preset",
        "config": {},
        "registered_name": "keras_hub>upload_preset",
    }
    with pytest.raises(UnsafeModelError) as info:
        check_config(
            {"class_name": "Dense", "module": "keras.layers", "registered_name": None, "config": {"activation": entry}},
            allow,
        )
    assert (info.value.rule, info.value.where) == ("TRUST-UNKNOWN", "$.config.activation")


def _function_entry(name: str) -> dict:
    """How Keras serializes a registered function (keras-hub's gelu in a flattened backbone's layer)."""
    return {"module": "builtins", "class_name": "function", "config": name, "registered_name": "function"}


def test_registered_keras_hub_gelu_is_allowed_and_other_names_are_not(allow):
    """A functional graph flattened from a keras-hub backbone names `keras_hub>gelu_approximate`; Keras
    finds it in its registry. That one known function passes; any other registered-looking name does not."""
    from kmemopt.load.trust import check_config, mentions_keras_hub, precheck_config

    def dense(activation):
        return {
            "class_name": "Dense",
            "module": "keras.layers",
            "registered_name": None,
            "config": {"activation": activation},
        }

    good = dense(_function_entry("keras_hub>gelu_approximate"))
    assert mentions_keras_hub(good)  # so keras-hub is imported and its gelu registered before the check
    precheck_config(good)
    assert check_config(good, allow) == 2
    for name in ("keras_hub>evil", "keras_hub>upload_preset", "gelu_approximate"):
        bad = dense(_function_entry(name))
        with pytest.raises(UnsafeModelError) as info:
            precheck_config(bad)
        assert (info.value.rule, info.value.where) == ("TRUST-FUNCTION", "$.config.activation")
        with pytest.raises(UnsafeModelError) as info:
            check_config(bad, allow)
        # keras_hub>upload_preset is refused as the string Keras would resolve, one level down
        assert info.value.rule == "TRUST-FUNCTION" and info.value.where.startswith("$.config.activation")


def test_functional_graph_naming_a_missing_layer_is_malformed(nested_path, tmp_path, allow):
    """Found by fuzzing: Keras raises RuntimeError for an input layer that does not exist (was exit 4)."""
    from kmemopt.load.build import build_from_file

    cfg = _config_of(nested_path)
    cfg["config"]["input_layers"] = [["nope", 0, 0]]
    path = _rewrite(nested_path, tmp_path / "m.keras", cfg)
    with pytest.raises(MalformedModelError, match="could not rebuild"):
        build_from_file(read_model_file(path), allow=allow)
