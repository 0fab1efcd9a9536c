"""Running a model is capped: a static check before anything runs (RUN-MEMORY), and children that run
under a memory limit and a timeout, die with their parent, leave no temp folder and report by type."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from kmemopt import sandbox
from kmemopt.errors import UnsafeModelError

GiB = 1024**3
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")

# Runs the CLI and prints the largest resident set of any process it waited for (kmemopt and its
# children): the kernel's own figure (RUSAGE_CHILDREN), no sampling.
_PEAK = textwrap.dedent(
    """
    import resource, subprocess, sys
    rc = subprocess.run([sys.executable, "-m", "kmemopt", *sys.argv[1:]], capture_output=True, text=True)
    sys.stderr.write(rc.stderr)
    print(rc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    """
)


def run_cli_peak(*args, env=None) -> tuple[int, int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, *map(str, args)], capture_output=True, text=True, env=env or ENV, timeout=600
    )
    rc, peak = map(int, proc.stdout.split())
    return rc, peak, proc.stderr, time.monotonic() - started


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error")]


@pytest.fixture(scope="module")
def big_models(keras, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("big")
    paths = {}
    inp = keras.Input((1_000_000, 4))
    paths["long_input"] = folder / "long_input.keras"
    keras.Model(inp, keras.layers.Dense(256)(inp)).save(paths["long_input"])
    inp = keras.Input((16,))
    h = keras.layers.RepeatVector(2**20)(inp)
    paths["repeat"] = folder / "repeat.keras"
    keras.Model(inp, keras.layers.Dense(512)(h)).save(paths["repeat"])
    inp = keras.Input((2**40, 4))
    paths["huge_input"] = folder / "huge_input.keras"
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(paths["huge_input"])
    return paths


# ------------------------------------------------------------------------------------- static check first


# One model in the fast tier: the check is the same static comparison for each (`make test` runs all).
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("long_input", marks=pytest.mark.slow),
        pytest.param("repeat", marks=pytest.mark.slow),
        # the same refusal as profile --measure's below (a CLI process each, a TensorFlow import): `make test`
        pytest.param("huge_input", marks=pytest.mark.slow),
    ],
)
def test_shrink_refuses_a_run_over_the_default_limit(big_models, tmp_path, name):
    out = tmp_path / "out.keras"
    rc, peak, stderr, seconds = run_cli_peak("shrink", big_models[name], "-o", out)
    assert rc == 3, stderr
    (line,) = _error_lines(stderr)
    assert "[RUN-MEMORY]" in line and "by the static estimate, over the memory limit of" in line
    assert "fidelity check on 64 samples" in line
    assert peak < 3 * GiB and seconds < 120
    assert not out.exists()


@pytest.mark.parametrize("name", [pytest.param("repeat", marks=pytest.mark.slow), "huge_input"])
def test_profile_measure_refuses_a_run_over_the_default_limit(big_models, name):
    rc, peak, stderr, seconds = run_cli_peak("profile", big_models[name], "--measure")
    assert rc == 3, stderr
    (line,) = _error_lines(stderr)
    assert "[RUN-MEMORY]" in line and "a measured training step at batch 32" in line
    assert peak < 3 * GiB and seconds < 120


def test_max_memory_lowers_the_limit(cli, mlp_path, tmp_path):
    result = cli("shrink", mlp_path, "-o", tmp_path / "o.keras", "--max-memory", "1KiB")
    assert result.exit_code == 3 and "[RUN-MEMORY]" in result.stderr and "1.0 KiB" in result.stderr
    result = cli("profile", mlp_path, "--measure", "--max-memory", "1KiB")
    assert result.exit_code == 3 and "[RUN-MEMORY]" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_batch_that_runs_is_the_one_checked(keras, tmp_path):
    """A large per-sample input runs one sample at a time: the check uses batch 1, not 32."""
    from kmemopt.api import profile
    from kmemopt.passes.pipeline import HELD_BYTES_PER_OUTPUT_ELEMENT, run_memory_estimate
    from kmemopt.profiling.static import peaks_at

    inp = keras.Input((2**18 + 1,))
    path = tmp_path / "wide.keras"
    keras.Model(inp, keras.layers.Dense(3)(inp)).save(path)
    result = profile(path, batch_size=32)
    estimate, batch, n = run_memory_estimate(result, samples=10)
    assert (batch, n) == (1, 10)
    held = 10 * (4 * (2**18 + 1) + HELD_BYTES_PER_OUTPUT_ELEMENT * 3)
    assert estimate == peaks_at(result, 1)[0] + held
    assert peaks_at(result, 1) == (
        profile(path, batch_size=1).totals.inference_peak_bytes,
        profile(path, batch_size=1).totals.training_peak_bytes,
    )


def test_data_rows_set_the_samples(keras, tmp_path):
    from kmemopt.api import profile
    from kmemopt.passes.pipeline import run_memory_estimate

    inp = keras.Input((6,), name="x")
    path = tmp_path / "m.keras"
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(path)
    np.savez(tmp_path / "d.npz", x=np.zeros((7, 6), "float32"), y=np.zeros(7))
    _, batch, n = run_memory_estimate(profile(path), data=tmp_path / "d.npz")
    assert (batch, n) == (7, 7)


@pytest.mark.slow  # a measuring child (a TensorFlow import); the fast tier keeps the refusals of a run over the limit: `make test` runs it
def test_data_sizes_the_unknown_dimensions_it_will_run(keras, tmp_path, cli):
    """A model of unknown length run on long --data sequences is checked at the data's length, not 16."""
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(50, 64, name="embedding")(tokens)
    model = keras.Model(tokens, keras.layers.Dense(1024, name="wide")(h))
    path = tmp_path / "text.keras"
    model.save(path)
    np.savez(tmp_path / "long.npz", tokens=np.zeros((2, 1_000_000), "int32"))
    np.savez(tmp_path / "short.npz", tokens=np.zeros((2, 8), "int32"))
    out = tmp_path / "out.keras"
    result = cli(
        "shrink", path, "--quantize", "int8", "--data", tmp_path / "long.npz", "-o", out, "--max-memory", "1GiB"
    )
    assert result.exit_code == 3, result.output
    assert "RUN-MEMORY" in result.stderr and not out.exists()
    result = cli(
        "shrink", path, "--quantize", "int8", "--data", tmp_path / "short.npz", "-o", out, "--max-memory", "1GiB"
    )
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------------- the sandbox


@pytest.mark.slow  # several children each importing TensorFlow; test_runner's fast tier checks errors by type with light children: `make test` runs it
def test_child_errors_come_back_by_type_with_their_traceback(keras, tmp_path):
    inp = keras.Input((4,))
    path = tmp_path / "lambda.keras"
    keras.Model(inp, keras.layers.Lambda(lambda t: t * 2)(inp)).save(path)
    spec = {"path": str(path), "inputs": [], "batch_sizes": [1], "device": "cpu"}
    with pytest.raises(UnsafeModelError) as info:
        sandbox.run_child("kmemopt.profiling._child:measure_in_child", spec, max_memory_bytes=8 * GiB)
    assert info.value.rule == "TRUST-CODE" and info.value.child_type == "UnsafeModelError"
    assert "Traceback" in str(info.value.__cause__) and "load_model" in str(info.value.__cause__)

    request = {"model": str(tmp_path / "missing.keras"), "import_kmemopt": False, "batch_size": 1}
    with pytest.raises(sandbox.ChildFailed) as info:
        sandbox.run_child("kmemopt.write.save:reload_in_child", request, [np.zeros((1, 4))], max_memory_bytes=8 * GiB)
    assert info.value.child_type == "ValueError" and info.value.exit_code == 4
    assert "keras" in str(info.value.__cause__)


def test_a_child_past_its_timeout_is_stopped_and_leaves_nothing(tmp_path):
    env = {"TMPDIR": str(tmp_path)}
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    os.environ["TMPDIR"], saved = str(tmp_path), os.environ.get("TMPDIR")
    import tempfile

    tempfile.tempdir = None
    try:
        with pytest.raises(sandbox.RunLimitExceeded) as info:
            sandbox.run_child(
                "kmemopt.profiling._child:measure_in_child",
                {"path": "x", "inputs": [], "batch_sizes": [1], "device": "cpu"},
                max_memory_bytes=8 * GiB,
                timeout_s=1,
                env=env,
                private_keras_home=True,
            )
    finally:
        os.environ.pop("TMPDIR")
        if saved is not None:
            os.environ["TMPDIR"] = saved
        tempfile.tempdir = None
    assert info.value.rule == "RUN-TIME" and info.value.exit_code == 3
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    assert list(tmp_path.iterdir()) == []


def test_a_child_over_its_memory_limit_is_stopped(tmp_path):
    """The reload child loads TensorFlow (hundreds of MiB resident): a 64 MiB limit stops it."""
    request = {"model": str(tmp_path / "m.keras"), "import_kmemopt": False, "batch_size": 1}
    with pytest.raises(sandbox.RunLimitExceeded) as info:
        sandbox.run_child("kmemopt.write.save:reload_in_child", request, [np.zeros((1, 4))], max_memory_bytes=64 << 20)
    assert info.value.rule == "RUN-MEMORY" and 64 << 20 < info.value.peak_rss_bytes < 3 * GiB


# ------------------------------------------------------------------------------------- custom objects, kill

CUSTOM = textwrap.dedent(
    """
    import os, time
    import keras

    @keras.saving.register_keras_serializable(package="kmemopt_test")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

        @classmethod
        def from_config(cls, config):
            # In the reload child only (and only when asked): hold the load so a test can kill it there.
            if os.environ.get("KMEMOPT_SANDBOX_PARENT") and os.environ.get("SLOW_RELOAD"):
                time.sleep(float(os.environ["SLOW_RELOAD"]))
            return cls(**config)
    """
)


@pytest.fixture()
def custom_model(tmp_path):
    """A model with a custom layer, and the --custom-objects file that defines it (a fresh process)."""
    (tmp_path / "custom.py").write_text(CUSTOM)
    script = textwrap.dedent(
        f"""
        import runpy, keras
        ns = runpy.run_path({str(tmp_path / "custom.py")!r})
        inp = keras.Input((8,))
        h = ns["Doubler"](name="double")(keras.layers.Dense(16, name="d1")(inp))
        keras.Model(inp, keras.layers.Dense(4, name="d2")(h)).save({str(tmp_path / "custom.keras")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=ENV, capture_output=True)
    return tmp_path / "custom.keras", tmp_path / "custom.py"


@pytest.mark.slow
def test_shrink_with_custom_objects_reloads_them_in_the_child(cli, custom_model, tmp_path):
    model, custom = custom_model
    out = tmp_path / "out.keras"
    result = cli("shrink", model, "--custom-objects", custom, "-q", "int8", "-o", out, "--samples", "4", "-f", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["written"] and data["reload"]["reproduced"]
    assert out.read_bytes()[:2] == b"PK"


@pytest.mark.slow
def test_sigkill_of_shrink_during_the_reload_load_leaves_no_temp_folder_and_no_child(custom_model, tmp_path):
    model, custom = custom_model
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = dict(ENV, TMPDIR=str(tmpdir), SLOW_RELOAD="30")
    cmd = [sys.executable, "-m", "kmemopt", "shrink", str(model), "--custom-objects", str(custom)]
    proc = subprocess.Popen([*cmd, "-o", str(out_dir / "o.keras"), "--samples", "4"], env=env)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 300
    child = None
    # Wait for the reload child, then for its scratch folder (the symlink Keras loads through exists
    # while from_config sleeps): the kill lands while a temp folder is there to be left behind.
    while time.monotonic() < deadline and proc.poll() is None:
        kids = [k for k in parent.children() if "reload_in_child" in " ".join(_cmdline(k))]
        if kids and any(p.name.startswith("kmemopt-") for p in tmpdir.iterdir()):
            child = kids[0]
            break
        time.sleep(0.05)
    assert child is not None and proc.poll() is None, "the reload child never got to its load"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs([child], timeout=30)
    assert not alive, "the reload child outlived its parent"
    assert list(tmpdir.iterdir()) == []
    assert list(out_dir.iterdir()) == []


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


# ------------------------------------------------------------------------------------- --measure on real shapes


@pytest.mark.slow
def test_measure_feeds_a_dict_input_backbone(tmp_path):
    script = textwrap.dedent(
        f"""
        import keras_hub
        m = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
                                          intermediate_dim=16, max_sequence_length=16)
        m.save({str(tmp_path / "bert.keras")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=ENV, capture_output=True)
    rc, _, stderr, _ = run_cli_peak("profile", tmp_path / "bert.keras", "--measure", "--seq-len", "8", "-b", "2")
    assert rc == 0, stderr


@pytest.mark.slow
def test_measure_trains_each_output_with_its_compiled_loss(keras, tmp_path, cli):
    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(8)(inp)
    model = keras.Model(
        inp, [keras.layers.Dense(3, activation="softmax", name="cls")(h), keras.layers.Dense(1, name="reg")(h)]
    )
    model.compile(optimizer="adam", loss={"cls": "sparse_categorical_crossentropy", "reg": "mean_absolute_error"})
    model.save(tmp_path / "two.keras")
    result = cli("profile", tmp_path / "two.keras", "--measure", "-b", "4", "-f", "json")
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)["measured"]["runs"][0]
    assert row["losses"] == ["sparse_categorical_crossentropy", "mean_absolute_error"]
