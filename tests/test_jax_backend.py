"""kmemopt on the JAX backend: the same exact bytes as on TensorFlow, XLA's own accounting beside the
estimate, unallocated builds, --measure, shrink and check.

This test process has imported Keras on TensorFlow, so every JAX run is a subprocess with
KERAS_BACKEND=jax. Without jax installed these tests skip, except in CI (CI=true), where the dev extra
installs it and a skip would hide a broken backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from factories import dense_stack, write_declared_model

import kmemopt

HAS_JAX = importlib.util.find_spec("jax") is not None
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def needs_jax():
    if not HAS_JAX:
        if os.environ.get("CI") == "true":
            pytest.fail("jax is not installed: CI must run the JAX backend tests (the dev extra installs it).")
        pytest.skip('jax is not installed (pip install "kmemopt[jax]")')


def run_jax(args: list[str], *, code: str | None = None, extra_env: dict[str, str] | None = None, cwd=None):
    """`kmemopt ARGS` (or `python -c CODE`) in a child whose Keras runs on JAX."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", **(extra_env or {})}
    command = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "kmemopt", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd)


@pytest.fixture(scope="module")
def bn_path(keras, tmp_path_factory):
    """A tiny CNN with batch normalization (non-trainable weights) and dropout (a seed generator's state)."""
    inp = keras.Input((8, 8, 1), name="pixels")
    h = keras.layers.Conv2D(4, 3, name="conv")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dropout(0.5, name="drop")(h)
    out = keras.layers.Dense(3, activation="softmax", name="head")(h)
    model = keras.Model(inp, out, name="tiny_bn")
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    path = tmp_path_factory.mktemp("jax") / "tiny_bn.keras"
    model.save(path)
    return path


def test_profile_on_jax_counts_the_same_bytes_and_xla_accounts_for_every_argument(needs_jax, bn_path):
    batch = 4
    r = run_jax(["profile", str(bn_path), "-b", str(batch), "-f", "json"])
    assert r.returncode == 0, r.stderr
    jax_profile = json.loads(r.stdout)
    tf_profile = kmemopt.profile(bn_path, batch_size=batch).to_dict()
    assert jax_profile["backend"] == "jax" and tf_profile["backend"] == "tensorflow"
    assert tf_profile["xla_estimate"] is None

    def exact(profile: dict) -> dict:
        keys = ("params", "trainable_params", "param_bytes", "gradient_bytes", "activation_bytes")
        return {
            "totals": {k: profile["totals"][k] for k in keys},
            "slots": profile["totals"]["optimizer_bytes"] - profile["totals"]["optimizer_global_bytes"],
            "rows": [
                (
                    row["path"],
                    row["param_bytes"],
                    row["gradient_bytes"],
                    row["optimizer_bytes"],
                    row["activation_bytes"],
                )
                for row in profile["layers"]
            ],
        }

    assert exact(jax_profile) == exact(tf_profile)
    # Adam's step counter is int64 on TensorFlow and int32 on JAX (64-bit types are off in JAX by default);
    # the learning rate is a float32 on both. What each backend really holds.
    assert tf_profile["totals"]["optimizer_global_bytes"] == 8 + 4
    assert jax_profile["totals"]["optimizer_global_bytes"] == 4 + 4
    assert any("calibrated on TensorFlow's CPU runtime" in w for w in jax_profile["warnings"])

    xla = jax_profile["xla_estimate"]
    totals = jax_profile["totals"]
    inputs = batch * 8 * 8 * 1 * 4
    targets = batch * 3 * 4  # one-hot float32, for the file's categorical cross-entropy
    seed_state = 2 * 4  # Dropout's seed generator: a uint32 pair, a variable of the model but not a weight
    assert xla["batch_size"] == batch and xla["platform"] == "cpu" and xla["loss"] == "categorical_crossentropy"
    # jax.jit drops arguments a step never reads: the seed state, in inference (dropout is off).
    assert xla["inference"]["argument_bytes"] == totals["param_bytes"] + inputs
    assert xla["training"]["argument_bytes"] == (
        totals["param_bytes"] + seed_state + totals["optimizer_bytes"] + inputs + targets
    )
    assert xla["inference"]["output_bytes"] == batch * 3 * 4
    # The donated state comes back in its own buffers: every updated weight, statistic and slot.
    assert xla["training"]["alias_bytes"] == totals["param_bytes"] + seed_state + totals["optimizer_bytes"]
    for phase in ("inference", "training"):
        step = xla[phase]
        assert (
            xla[f"{phase}_bytes"]
            == step["total_bytes"]
            == (step["argument_bytes"] + step["output_bytes"] - step["alias_bytes"] + step["temp_bytes"])
            + step["generated_code_bytes"]
        )
        assert step["temp_bytes"] > 0
        ours = xla["compared"][f"kmemopt_{phase}_tensor_bytes"]
        assert ours == totals[f"{phase}_peak_bytes"] - totals[f"runtime_{phase}_bytes"]
        assert xla["compared"][f"{phase}_ratio"] == round(ours / step["total_bytes"], 3)
    # The training step holds the gradients and the kept activations on top of the state.
    assert xla["training_bytes"] > xla["training"]["argument_bytes"] + totals["gradient_bytes"]


@pytest.mark.slow
def test_the_table_shows_xla_beside_the_estimate_and_it_can_be_skipped(needs_jax, bn_path):
    r = run_jax(["profile", str(bn_path), "-b", "2"])
    assert r.returncode == 0, r.stderr
    assert "XLA's own accounting of the compiled steps (cpu, batch 2" in r.stdout
    assert "kmemopt's tensors" in r.stdout
    skipped = run_jax(["profile", str(bn_path), "-b", "2", "-f", "json"], extra_env={"KMEMOPT_XLA": "0"})
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(skipped.stdout)["xla_estimate"] is None


@pytest.mark.slow  # a JAX child; the fast tier keeps profile on JAX: `make test` runs it
def test_an_unallocated_build_and_xla_accounting_on_jax_allocate_no_weight(needs_jax, keras, tmp_path):
    model = dense_stack(keras, [32768, 32768, 16])  # 1.07 billion float32 parameters: 4.3 GB, 12.9 GB with Adam
    weight_bytes = model.count_params() * 4
    path = write_declared_model(tmp_path / "declared.keras", model)
    code = (
        "import json, kmemopt\n"
        "from kmemopt._keras import import_keras\n"
        "keras = import_keras()\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1]) * 1024\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # the high-water mark from here on\n"
        "start = status('VmRSS:')\n"
        f"r = kmemopt.profile({str(path)!r}, batch_size=1)\n"
        "from keras.src.backend.common import global_state\n"
        "print(json.dumps({'backend': keras.backend.backend(), 'params': r.totals.params,\n"
        "  'optimizer': r.totals.optimizer_bytes - r.totals.optimizer_global_bytes,\n"
        "  'xla': r.to_dict()['xla_estimate'],\n"
        "  'left': len(global_state.get_global_attribute('uninitialized_variables') or []),\n"
        "  'growth': status('VmHWM:') - start}))\n"
    )
    r = run_jax([], code=code)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax" and result["params"] == model.count_params()
    assert result["optimizer"] == 2 * weight_bytes  # Adam's two slots, built unallocated too
    # XLA compiled a training step over all of it: weights, slots, Adam's 8 bytes of globals, one input
    # row and its target (mean squared error: no compiled loss in this file).
    assert result["xla"]["training"]["argument_bytes"] == 3 * weight_bytes + 8 + 32768 * 4 + 16 * 4
    assert result["left"] == 0  # nothing left for a later stateless scope to initialize
    assert result["growth"] < weight_bytes / 4  # allocating the weights alone would add 4.3 GB


@pytest.mark.slow  # a JAX child; the fast tier keeps profile on JAX: `make test` runs it
def test_the_lean_loader_on_jax_gives_keras_own_weights(needs_jax, bn_path):
    """Weights read in place into unallocated variables (JAX's `_initialize` assigns through
    `_direct_assign`, which kmemopt patches while loading) equal Keras's own load, value for value."""
    code = (
        "import json, numpy as np\n"
        "from kmemopt.api import load_model\n"
        f"lean, plain = (load_model({str(bn_path)!r}, lean=flag) for flag in (True, False))\n"
        "print(json.dumps({'backend': type(lean.weights[0].value).__module__,\n"
        "  'equal': [bool(np.array_equal(np.asarray(a.value), np.asarray(b.value)))\n"
        "            for a, b in zip(lean.weights, plain.weights, strict=True)]}))\n"
    )
    r = run_jax([], code=code)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["backend"].startswith("jax") and len(result["equal"]) == 8 and all(result["equal"])


def test_a_missing_jax_is_exit_2_with_the_install_command(tmp_path):
    """The same refusal as tests/test_backends.py, made to happen where jax is installed (CI): the import
    of jax is refused in the child before kmemopt starts."""
    code = (
        "import sys\n"
        "class NoJax:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'jax' or name.startswith('jax.') or name.startswith('jaxlib'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoJax())\n"
        "from kmemopt.cli import main\n"
        "sys.argv = ['kmemopt', 'profile', 'sample_models/digits_mlp.keras']\n"
        "main()\n"
    )
    from conftest import ROOT

    r = run_jax([], code=code, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert 'pip install "kmemopt[jax]"' in lines[0] and "KERAS_BACKEND=jax" in lines[0]


@pytest.mark.slow
def test_shrink_and_check_run_on_jax(needs_jax, mlp_path, tmp_path):
    out = tmp_path / "mlp.int8.keras"
    r = run_jax(["shrink", str(mlp_path), "--quantize", "int8", "-o", str(out), "-f", "json"])
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["written"] and out.is_file()
    assert report["reload"]["reproduced"] is True
    quantize = next(p for p in report["passes"] if p["name"] == "quantize")
    assert quantize["applied"] and report["after"]["param_bytes"] < report["before"]["param_bytes"]
    # The shrunk file holds the same parameters, whichever backend wrote it.
    assert kmemopt.profile(out, batch_size=4).totals.param_bytes == report["after"]["param_bytes"]

    limit = report["after"]["training_peak_bytes"]  # at batch 32, shrink's default
    passing = run_jax(["check", str(out), "--max-training-memory", str(limit), "-f", "json"])
    failing = run_jax(["check", str(out), "--max-training-memory", str(limit - 1), "-f", "json"])
    assert passing.returncode == 0, passing.stderr
    assert failing.returncode == 1, failing.stderr
    assert json.loads(failing.stdout)["budgets"][0]["value"] == limit


@pytest.mark.slow
def test_measure_runs_on_jax(needs_jax, mlp_path):
    r = run_jax(["profile", str(mlp_path), "--measure", "-b", "4", "-f", "json"], extra_env={"KMEMOPT_XLA": "0"})
    assert r.returncode == 0, r.stderr
    measured = json.loads(r.stdout)["measured"]
    assert measured["backend"] == "jax" and measured["status"] == "ok" and measured["device"] == "cpu"
    assert measured["inference_peak_bytes"] > 0 and measured["training_peak_bytes"] > 0
    assert measured["baseline_bytes"] > 0
    # Every leaf layer's real output bytes, as the static profile counts them: exact for a Dense stack.
    static = {row["path"]: row["output_bytes"] for row in json.loads(r.stdout)["layers"]}
    assert measured["layers"] and all(static[path] == got for path, got in measured["layers"].items())
