"""kmemopt's boundary to Keras's internals: every contract holds on the installed Keras, the tested range
is the one pyproject.toml declares, no module outside keras_compat reaches into `keras.src`, and when a
contract is broken on purpose (a symbol "renamed", as a newer Keras might) the operation takes Keras's
public path, warns in one line, and still gives the same result."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from kmemopt.keras_compat import contracts
from kmemopt.keras_compat.contracts import CONTRACTS, KERAS_TESTED, KerasCompatWarning, Symbol

ROOT = Path(__file__).resolve().parent.parent


def break_contract(monkeypatch, name: str) -> None:
    """Make contract `name` fail as it would on a Keras that renamed one of its symbols."""
    contract = CONTRACTS[name]
    renamed = Symbol(contract.symbols[0].module, "_renamed_in_a_newer_keras")
    monkeypatch.setitem(CONTRACTS, name, dataclasses.replace(contract, symbols=(*contract.symbols, renamed)))


def compat_messages(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, KerasCompatWarning)]


# ------------------------------------------------------------------------------------ the contracts


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_contract_holds_on_installed_keras(keras, name):
    assert contracts.problems(name) == []


def test_every_private_module_used_is_in_a_contract():
    """Each `keras.src` module keras_compat imports is named by some contract (so it is checked)."""
    checked = {s.module for c in CONTRACTS.values() for s in c.symbols}
    unchecked = set()
    for path in (ROOT / "kmemopt" / "keras_compat").glob("*.py"):
        text = path.read_text()
        for module, names in re.findall(r"^\s*from (keras\.src[\w.]*) import ([\w, ]+)", text, re.M):
            for name in (n.split(" as ")[0].strip() for n in names.split(",")):
                if module not in checked and f"{module}.{name}" not in checked:
                    unchecked.add(f"{module}.{name}")
        unchecked |= set(re.findall(r"^\s*import (keras\.src[\w.]*)", text, re.M)) - checked
    assert unchecked == set(), unchecked


def test_symbol_problems_are_found():
    assert Symbol("keras.src.saving.saving_lib", "no_such_thing").problem().endswith("is missing")
    assert "cannot be imported" in Symbol("keras.src.no_such_module").problem()
    changed = Symbol("keras.src.saving.saving_lib", "save_model", ("model", "destination"))
    assert "takes (model, filepath" in changed.problem()
    assert Symbol("keras.src.saving.saving_lib", "save_model", ("model", "filepath")).problem() is None


def test_tested_range_is_the_declared_one(keras):
    from packaging.specifiers import SpecifierSet

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = [d for d in deps if re.match(r"keras\s*[<>=!~]", d)]
    assert len(declared) == 1, deps
    assert SpecifierSet(declared[0][len("keras") :]) == SpecifierSet(KERAS_TESTED)
    assert keras.__version__ in SpecifierSet(KERAS_TESTED)


def test_unallocated_dense_has_no_value(keras):
    from kmemopt.keras_compat.variables import allocate_rest, assign_initializes, is_unallocated, unallocated

    with unallocated() as created:
        layer = keras.layers.Dense(3)
        layer.build((None, 5))
    assert all(is_unallocated(v) for v in layer.weights) and len(created) == 2
    kernel = np.arange(15, dtype="float32").reshape(5, 3)
    with assign_initializes():
        layer.kernel.assign(kernel)
    allocate_rest(created)  # the bias, from its initializer
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    np.testing.assert_array_equal(layer.bias.numpy(), np.zeros(3, "float32"))


def test_no_keras_src_outside_keras_compat():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "kmemopt").rglob("*.py")
        if "keras_compat" not in p.parts and "keras.src" in p.read_text()
    ]
    assert offenders == []


def test_no_private_layer_walk_outside_keras_compat():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "kmemopt").rglob("*.py")
        if "keras_compat" not in p.parts and "._flatten_layers(" in p.read_text()
    ]
    assert offenders == []


# ------------------------------------------------------------------------------------ the fallbacks


def _outputs(model, x):
    return np.asarray(model(x, training=False))


def test_load_falls_back_to_keras_loader(monkeypatch, mlp_path):
    import kmemopt

    x = np.random.default_rng(1).random((4, 16), dtype="float32")
    expected = _outputs(kmemopt.load_model(mlp_path), x)
    break_contract(monkeypatch, "load_in_place")
    with pytest.warns(KerasCompatWarning) as record:
        model = kmemopt.load_model(mlp_path)
    np.testing.assert_array_equal(_outputs(model, x), expected)
    (message,) = set(compat_messages(record))
    assert "\n" not in message and "2x the weights" in message and KERAS_TESTED in message


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_load_through_public_loader_by_content(monkeypatch, keras, mlp_model, tmp_path, suffix):
    """Neither internal loader: Keras's public load_model on a link named for the content's format, even
    when the file's own name says otherwise."""
    import kmemopt

    saved = tmp_path / f"m{suffix}"
    mlp_model.save(saved)
    misnamed = tmp_path / ("m.h5" if suffix == ".keras" else "m.keras")
    saved.rename(misnamed)
    x = np.random.default_rng(2).random((3, 16), dtype="float32")
    expected = _outputs(kmemopt.load_model(misnamed), x)
    break_contract(monkeypatch, "load_in_place")
    break_contract(monkeypatch, "load_file_object")
    with pytest.warns(KerasCompatWarning) as record:
        model = kmemopt.load_model(misnamed)
    np.testing.assert_array_equal(_outputs(model, x), expected)
    assert all("\n" not in m for m in compat_messages(record))
    assert any("through a link named for their format" in m for m in compat_messages(record))


def test_allocating_build_when_unallocated_is_broken(monkeypatch, mlp_path):
    import kmemopt

    x = np.random.default_rng(3).random((2, 16), dtype="float32")
    expected = _outputs(kmemopt.load_model(mlp_path), x)
    break_contract(monkeypatch, "unallocated_build")
    with pytest.warns(KerasCompatWarning) as record:
        model = kmemopt.load_model(mlp_path)
        report = kmemopt.profile(mlp_path)
    np.testing.assert_array_equal(_outputs(model, x), expected)
    assert report.totals.params == 16 * 32 + 32 + 4 * 32 + 32 * 4 + 4
    (message,) = set(compat_messages(record))
    assert "weights allocated" in message


def test_allocating_build_refused_for_large_weights(monkeypatch, mlp_path):
    from kmemopt import sandbox
    from kmemopt.errors import UsageError
    from kmemopt.load.archive import read_model_file
    from kmemopt.load.build import build_from_file

    break_contract(monkeypatch, "unallocated_build")
    monkeypatch.setattr(sandbox, "default_max_memory", lambda: 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KerasCompatWarning)
        with pytest.raises(UsageError, match=r"install a tested Keras") as info:
            build_from_file(read_model_file(mlp_path))
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_required_contract_refuses_in_one_sentence(monkeypatch, keras):
    from kmemopt.errors import UsageError
    from kmemopt.keras_compat import registry

    break_contract(monkeypatch, "model_classes")
    with pytest.raises(UsageError, match=re.escape(KERAS_TESTED)) as info:
        registry.registered_objects()
    assert "\n" not in str(info.value)


def test_quantization_falls_back_to_model_quantize(monkeypatch, keras):
    from kmemopt.keras_compat import quantize

    monkeypatch.setattr(quantize, "LEAN_FROM_BYTES", 0)
    calls = []
    real = quantize.lean_abs_max_quantize
    monkeypatch.setattr(quantize, "lean_abs_max_quantize", lambda *a, **k: calls.append(1) or real(*a, **k))

    def quantized(broken: bool):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32)])
        with pytest.MonkeyPatch.context() as mp:
            if broken:
                break_contract(mp, "lean_quantization")
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                with quantize.keras_quantization():
                    model.quantize("int8")
        return [np.asarray(w) for w in model.weights], compat_messages(record)

    lean, none = quantized(broken=False)
    assert calls and none == []
    calls.clear()
    plain, messages = quantized(broken=True)
    assert calls == []  # Keras's own quantizer ran
    assert len(messages) == 1 and "4x each large kernel" in messages[0]
    for a, b in zip(lean, plain):
        np.testing.assert_array_equal(a, b)


def test_write_falls_back_to_keras_save(monkeypatch, keras, mlp_model, tmp_path):
    import zipfile

    from kmemopt.keras_compat.saving import save_keras_zip

    out = tmp_path / "out.keras"
    break_contract(monkeypatch, "write_through_disk")
    with pytest.warns(KerasCompatWarning, match="two extra copies"), open(out, "wb") as fh:
        save_keras_zip(mlp_model, fh, through_disk=True)
    assert "model.weights.h5" in zipfile.ZipFile(out).namelist()
    again = keras.saving.load_model(out)
    for a, b in zip(mlp_model.weights, again.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_optimizer_slots_fall_back(monkeypatch, keras):
    from kmemopt.keras_compat.optimizer import use_backend_neutral_methods

    assert use_backend_neutral_methods(keras.optimizers.Adam()) is True
    break_contract(monkeypatch, "optimizer_slots")
    with pytest.warns(KerasCompatWarning, match="allocates the model's weights"):
        assert use_backend_neutral_methods(keras.optimizers.Adam()) is False


def test_cli_shows_one_warning_line(monkeypatch, cli, mlp_path):
    intact = cli("profile", mlp_path, "--format", "json")
    assert intact.exit_code == 0 and "warning:" not in intact.stderr
    break_contract(monkeypatch, "unallocated_build")
    with warnings.catch_warnings():
        warnings.simplefilter("always", KerasCompatWarning)
        result = cli("profile", mlp_path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert lines and all(line.startswith("warning: Keras ") for line in lines)
    assert len(set(lines)) == 1
    assert json.loads(result.stdout)["totals"] == json.loads(intact.stdout)["totals"]


@pytest.mark.slow  # about 22 s: two real shrinks
def test_cli_shrink_int8_through_public_paths(monkeypatch, cli, keras, mlp_path, tmp_path):
    """shrink -q int8 with lean quantization and write-through-disk both unavailable: Keras's own
    model.quantize and save give the same file contents, and each fallback is one warning line."""
    intact_out, fallback_out = tmp_path / "intact.keras", tmp_path / "fallback.keras"
    intact = cli("shrink", mlp_path, "-q", "int8", "--samples", "4", "-o", intact_out, "-f", "json")
    assert intact.exit_code == 0, intact.stderr
    break_contract(monkeypatch, "lean_quantization")
    break_contract(monkeypatch, "write_through_disk")
    with warnings.catch_warnings():
        warnings.simplefilter("always", KerasCompatWarning)
        result = cli("shrink", mlp_path, "-q", "int8", "--samples", "4", "-o", fallback_out, "-f", "json")
    assert result.exit_code == 0, result.stderr
    lines = {line for line in result.stderr.splitlines() if line.startswith("warning: Keras ")}
    assert any("4x each large kernel" in line for line in lines)
    assert any("two extra copies" in line for line in lines)
    assert len(lines) == 2
    a, b = keras.saving.load_model(intact_out), keras.saving.load_model(fallback_out)
    assert [w.dtype for w in a.weights] == [w.dtype for w in b.weights] and "int8" in {w.dtype for w in b.weights}
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
