"""`kmemopt profile --measure`: the child process, its limits, the fit, the JSON and the CLI.

Each measuring child imports TensorFlow (about 10 s here), so the tests that start one are few and
use the tiny session models; the helpers the child uses are tested in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from kmemopt.errors import UsageError
from kmemopt.profiling import _child
from kmemopt.profiling.measure import (
    Status,
    compare,
    fit_line,
    measure,
    parse_batch_sizes,
    resolve_device,
    visible_gpus,
)

MiB = 1024**2
NO_GPU = visible_gpus() == 0


# --------------------------------------------------------------------------------------------- pure helpers


def test_fit_line_recovers_an_exact_line():
    fit = fit_line([(1, 1000 + 250), (8, 1000 + 8 * 250), (32, 1000 + 32 * 250)])
    assert (fit.fixed_bytes, fit.per_sample_bytes) == (1000, 250)


def test_fit_line_needs_two_batch_sizes():
    assert fit_line([(8, 100)]) is None
    assert fit_line([(8, 100), (8, 120)]) is None
    assert fit_line([(1, None), (8, 100)]) is None


def test_compare_is_percent_of_measured():
    assert compare(120, 100) == 20.0
    assert compare(80, 100) == -20.0
    assert compare(100, None) is None


@pytest.mark.parametrize("text", ["1,x", "0,8", "", "-1"])
def test_bad_batch_sizes_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_batch_sizes(text)


def test_batch_sizes_parse():
    assert parse_batch_sizes("1, 8,32") == [1, 8, 32]
    assert parse_batch_sizes(None) is None


@pytest.mark.skipif(not NO_GPU, reason="a GPU is visible")
def test_gpu_without_a_gpu_is_a_usage_error():
    with pytest.raises(UsageError) as info:
        resolve_device("gpu")
    assert info.value.exit_code == 2
    assert resolve_device("auto") == "cpu"


# --------------------------------------------------------------------------------------------- child helpers, in-process


def test_high_water_mark_sees_a_transient_allocation():
    hwm = _child.HighWaterMark()
    assert hwm.method == "vmhwm"  # Linux: the kernel's counter, resettable
    hwm.reset()
    before = _child.rss_bytes()
    block = np.ones(64 * MiB // 8)  # 64 MiB, touched
    del block
    peak = hwm.peak() - before
    assert 60 * MiB <= peak < 80 * MiB  # a few pages may come from memory already resident


def test_the_sampler_sees_an_allocation_held_for_a_moment():
    """The path taken where the kernel's high-water mark is unavailable, forced by a parameter."""
    hwm = _child.HighWaterMark(method="sampling")
    assert hwm.method == "sampling"
    hwm.reset()
    before = _child.rss_bytes()
    block = np.ones(200 * MiB // 8)  # 200 MiB, touched
    time.sleep(0.2)  # a sampler sees what lives longer than its period (2 ms), not a shorter spike
    del block
    peak = hwm.peak() - before
    assert 150 * MiB <= peak < 260 * MiB


SAMPLED_CHILD = """
import time
import numpy as np
from kmemopt.profiling._child import HighWaterMark, rss_bytes
hwm = HighWaterMark()
hwm.reset()
before = rss_bytes()
block = np.ones(200 * 1024**2 // 8)
time.sleep(0.2)
del block
print(hwm.method, hwm.peak() - before)
"""


def test_the_environment_forces_the_sampler_in_a_child():
    env = dict(os.environ, KMEMOPT_MEMORY_METHOD="sampling")
    out = subprocess.run([sys.executable, "-c", SAMPLED_CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    method, peak = out.stdout.split()
    assert method == "sampling" and 150 * MiB <= int(peak) < 260 * MiB


def test_an_unknown_memory_method_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("KMEMOPT_MEMORY_METHOD", "guess")
    with pytest.raises(UsageError):
        _child.HighWaterMark()


def test_inputs_are_shaped_and_token_ids_stay_in_the_vocabulary(keras):
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(7, 3)(tokens)
    model = keras.Model(tokens, keras.layers.Dense(2)(h))
    x = _child.make_inputs(model, [{"name": "tokens", "shape": [None, 5], "dtype": "int32"}], 4, None)["tokens"]
    assert x.shape == (4, 5) and x.dtype == np.int32
    assert x.min() >= 0 and x.max() < 7


def test_data_rows_are_used_and_repeated_to_fill_the_batch(keras, mlp_model):
    data = {"features": np.arange(3 * 16, dtype="float64").reshape(3, 16)}
    x = _child.make_inputs(mlp_model, [{"name": "features", "shape": [None, 16], "dtype": "float32"}], 5, data)
    assert x["features"].shape == (5, 16) and x["features"].dtype == np.float32
    np.testing.assert_array_equal(x["features"][3], data["features"][0])


def test_default_loss_follows_the_output_layer(keras, mlp_model):
    assert _child.default_loss(mlp_model) == "categorical_crossentropy"
    inp = keras.Input((3,))
    assert (
        _child.default_loss(keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(inp))) == "binary_crossentropy"
    )
    assert _child.default_loss(keras.Model(inp, keras.layers.Dense(2)(inp))) == "mean_squared_error"


def test_targets_fit_the_loss():
    out = np.zeros((4, 3), "float32")
    sparse = _child.make_targets(None, out, "sparse_categorical_crossentropy")
    assert sparse.shape == (4,) and sparse.max() < 3
    onehot = _child.make_targets(None, out, "categorical_crossentropy")
    assert onehot.shape == (4, 3) and (onehot.sum(axis=1) == 1).all()


def test_recorded_layer_bytes_are_the_real_output_sizes(keras, nested_shared_model):
    x = np.zeros((3, 8), "float32")
    sizes = _child._record_layers(nested_shared_model, x)
    # `shared` runs twice: two (3, 8) float32 outputs; the nested model's layers get their paths.
    assert sizes == {"shared": 2 * 3 * 8 * 4, "sub/a": 3 * 4 * 4, "sub/b": 3 * 3 * 4}
    assert "call" not in vars(nested_shared_model.get_layer("shared"))  # the hook is removed


# --------------------------------------------------------------------------------------------- child processes


SAMPLES = __import__("pathlib").Path(__file__).resolve().parent.parent / "sample_models"


@pytest.fixture(scope="module")
def measured_cli(tmp_path_factory):
    """One CLI run (two children: batch 2 and 8) on the digits MLP, with real rows from --data."""
    from typer.testing import CliRunner

    from kmemopt.cli import app

    data = tmp_path_factory.mktemp("data") / "pixels.npz"
    np.savez(data, pixels=np.load(SAMPLES / "digits_test.npz")["pixels"][:20])
    args = [
        "profile",
        str(SAMPLES / "digits_mlp.keras"),
        "-b",
        "8",
        "--measure",
        "--batch-sizes",
        "2,8",
        "--data",
        str(data),
        "--format",
        "json",
    ]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_measured_json_has_the_documented_fields(measured_cli):
    m = measured_cli["measured"]
    for key in ("device", "baseline_bytes", "load_bytes", "inference_peak_bytes", "training_peak_bytes", "layers"):
        assert key in m
    assert m["device"] == "cpu" and m["method"] == "vmhwm" and m["status"] == "ok"
    assert m["batch_size"] == 8 and [r["batch_size"] for r in m["runs"]] == [2, 8]
    assert m["baseline_bytes"] > 100 * MiB  # the framework itself
    assert 0 < m["load_bytes"] < m["training_peak_bytes"]
    assert m["inference_peak_bytes"] < m["training_peak_bytes"]
    assert set(m["fit"]) == {"inference", "training"}
    est, got = m["estimated"]["training_peak_bytes"], m["training_peak_bytes"]
    assert m["error_pct"]["training"] == round(100 * (est - got) / got, 1)  # signed: + is an over-estimate
    assert m["runs"][0]["loss"]  # the file's compiled loss, or the default
    assert "allocator_peak_bytes" not in m  # GPU-only fields


def test_measured_layer_bytes_equal_the_static_output_bytes(measured_cli):
    layers = measured_cli["measured"]["layers"]
    assert measured_cli["measured"]["layers_batch_size"] == 8
    expected = {r["path"]: r["output_bytes"] for r in measured_cli["layers"] if r["class_name"] != "InputLayer"}
    assert layers == expected


def test_a_child_over_max_memory_is_reported_as_exceeding(mlp_path):
    m = measure(
        mlp_path,
        inputs=[{"name": "features", "shape": [None, 16], "dtype": "float32"}],
        batch_size=2,
        max_memory_bytes=64 * MiB,
        layers=False,
    )
    assert m.status is Status.exceeded_memory
    assert m.main.inference_peak_bytes is None and "max-memory" in m.main.message


def test_a_child_past_the_timeout_is_reported_as_timeout(mlp_path):
    m = measure(
        mlp_path,
        inputs=[{"name": "features", "shape": [None, 16], "dtype": "float32"}],
        batch_size=2,
        timeout_s=1,
        layers=False,
    )
    assert m.status is Status.timeout


def test_measured_profile_json_puts_each_estimate_beside_its_measurement():
    from kmemopt.profiling.line import Line
    from kmemopt.profiling.measure import Fit, MeasuredProfile, Measurement, Run

    runs = (
        Run(2, 1_000, 3_000, baseline_bytes=500, load_bytes=100, loss="mse", losses=("mse",), seconds=1.234),
        Run(8, 1_600, 4_200, baseline_bytes=510, load_bytes=100, loss="mse", losses=("mse",), seconds=2.0),
    )
    m = Measurement(
        "cpu",
        "vmhwm",
        8,
        runs,
        layers={"dense": 64},
        layers_batch_size=8,
        fit={"inference": Fit(800, 100), "training": Fit(2_600, 200)},
    )
    measured = MeasuredProfile(m, inference_line=Line(1_000, 100), training_line=Line(2_000, 250))
    d = measured.to_dict()
    assert measured.status is Status.ok
    assert d["estimated"] == {"inference_peak_bytes": 1_800, "training_peak_bytes": 4_000}
    assert d["error_pct"] == {"inference": 12.5, "training": -4.8}  # 1800 vs 1600, 4000 vs 4200
    assert [(r["estimated_inference_bytes"], r["estimated_training_bytes"]) for r in d["runs"]] == [
        (1_200, 2_500),
        (1_800, 4_000),
    ]
    assert [(r["inference_error_pct"], r["training_error_pct"]) for r in d["runs"]] == [(20.0, -16.7), (12.5, -4.8)]
    assert d["static_line"] == {
        "inference": {"fixed_bytes": 1_000, "per_sample_bytes": 100},
        "training": {"fixed_bytes": 2_000, "per_sample_bytes": 250},
    }
    assert {k: d[k] for k in ("batch_size", "inference_peak_bytes", "training_peak_bytes", "status")} == {
        "batch_size": 8,
        "inference_peak_bytes": 1_600,
        "training_peak_bytes": 4_200,
        "status": "ok",
    }
    assert d["runs"][0]["seconds"] == 1.23 and d["fit"]["training"] == {"fixed_bytes": 2_600, "per_sample_bytes": 200}
    json.dumps(d)  # plain JSON


def test_a_child_result_is_read_into_its_type():
    from kmemopt.profiling.measure import ChildMeasurement

    value = {
        "method": "sampling",
        "baseline_bytes": 500,
        "load_bytes": 100,
        "runs": [
            {"batch_size": 4, "inference_peak_bytes": 10, "training_peak_bytes": 30, "loss": "mse", "losses": ["mse"]}
        ],
        "layers": {"d": 8},
        "layers_batch_size": 4,
    }
    child = ChildMeasurement.from_child(value, peak_rss_bytes=900)
    assert child == ChildMeasurement("sampling", 500, 100, 10, 30, "mse", ("mse",), None, {"d": 8}, 4, 900)


def test_bad_data_file_is_a_usage_error(mlp_path, tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("1,2\n")
    with pytest.raises(UsageError):
        measure(mlp_path, inputs=[], data=bad)
    with pytest.raises(UsageError):
        measure(mlp_path, inputs=[], data=tmp_path / "missing.npy")


@pytest.mark.skipif(not NO_GPU, reason="a GPU is visible")
def test_cli_gpu_without_gpu_exits_2_with_one_line(cli, mlp_path):
    result = cli("profile", mlp_path, "--measure", "--device", "gpu")
    assert result.exit_code == 2
    assert "no NVIDIA GPU is visible" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU, reason="no GPU visible to NVML")
def test_gpu_measurement_reports_allocator_and_nvml(mlp_path):  # pragma: no cover - needs a GPU
    m = measure(
        mlp_path,
        inputs=[{"name": "features", "shape": [None, 16], "dtype": "float32"}],
        batch_size=4,
        device="gpu",
        layers=False,
    )
    d = m.to_dict()
    assert d["device"] == "gpu"
    assert d["allocator_peak_bytes"] is not None and d["nvml_used_bytes"] >= d["allocator_peak_bytes"]


def test_table_and_markdown_show_measured_and_error_columns(mlp_model):

    from kmemopt.api import profile
    from kmemopt.report import render_to_text
    from kmemopt.report.profile import profile_markdown, render_profile

    static = profile(mlp_model, batch_size=4)
    hidden = next(r for r in static.layers if r.name == "hidden")
    est_inf, est_train = static.inference.at(4), static.training.at(4)
    measured = {
        "device": "cpu",
        "method": "vmhwm",
        "status": "ok",
        "batch_size": 4,
        "baseline_bytes": 800 * MiB,
        "load_bytes": 1000,
        "inference_peak_bytes": est_inf // 2,
        "training_peak_bytes": est_train,
        "layers": {"hidden": hidden.output_bytes * 2},
        "layers_batch_size": 4,
        "runs": [
            {
                "batch_size": 4,
                "status": "ok",
                "inference_peak_bytes": est_inf // 2,
                "training_peak_bytes": est_train,
                "load_bytes": 1000,
                "estimated_inference_bytes": est_inf,
                "estimated_training_bytes": est_train,
            }
        ],
    }
    data = {**static.to_dict(), "measured": measured}  # the JSON a --measure run gives, with chosen figures
    text = render_to_text(lambda c: render_profile(data, c), width=240)
    assert "Measured out" in text and "Out error" in text
    assert "-50%" in text  # the hidden layer's estimate is half of what was "measured"
    assert "error +100%" in text and "error +0%" in text  # inference estimate twice the measurement; training exact
    md = profile_markdown(data)
    assert "Measured on cpu" in md and "error +100%" in md
