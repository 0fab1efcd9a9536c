"""The profile command as a user meets it: output, formats, files, exit codes, start-up cost."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
from conftest import SAMPLES


def test_table_names_layers_totals_and_peaks(cli, mlp_path):
    result = cli("profile", mlp_path, "--batch-size", "8", "--budget", "64MiB")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "hidden",
        "Dense",
        "BatchNormalization",
        "Inference peak",
        "Training peak",
        "largest batch",
        "optimizer state",
    ):
        assert text in out


def test_json_is_the_documented_interface(cli, mlp_path):
    result = cli("profile", mlp_path, "-b", "4", "--format", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["schema_version"] == 1
    assert set(data["model"]) >= {"path", "name", "format", "file_bytes"}
    assert data["batch_size"] == 4 and data["optimizer"]["name"] == "Adam"
    row_keys = {
        "name",
        "class_name",
        "output_shape",
        "params",
        "trainable_params",
        "param_bytes",
        "activation_bytes",
        "gradient_bytes",
        "optimizer_bytes",
    }
    assert all(row_keys <= set(row) for row in data["layers"])
    total_keys = {
        "params",
        "trainable_params",
        "non_trainable_params",
        "param_bytes",
        "activation_bytes",
        "gradient_bytes",
        "optimizer_bytes",
        "inference_peak_bytes",
        "training_peak_bytes",
    }
    assert total_keys <= set(data["totals"])
    assert "measured" in data
    assert sum(r["param_bytes"] for r in data["layers"]) == data["totals"]["param_bytes"]


def test_markdown_and_output_file(cli, mlp_path, tmp_path):
    target = tmp_path / "report.md"
    result = cli("profile", mlp_path, "--format", "markdown", "--output", target)
    assert result.exit_code == 0
    text = target.read_text()
    assert text.startswith("## kmemopt profile") and "| `hidden` | Dense |" in text
    assert not list(tmp_path.glob("*.tmp"))
    table = tmp_path / "report.txt"
    assert cli("profile", mlp_path, "-o", table).exit_code == 0
    assert "Training peak" in table.read_text()


def test_top_sums_the_lighter_layers_in_one_row(cli, mlp_path):
    result = cli("profile", mlp_path, "--top", "1")
    assert result.exit_code == 0 and "1 heaviest of 4 layers shown" in result.stdout
    assert "… 3 other layers" in result.stdout
    md = cli("profile", mlp_path, "--top", "1", "-f", "markdown").stdout
    assert "| … 3 other layers |" in md


def test_a_big_model_shows_its_heaviest_layers_by_default_and_reads_in_100_columns(keras, tmp_path):
    from kmemopt.api import profile
    from kmemopt.report import render_to_text
    from kmemopt.report.profile import DEFAULT_TOP, render_profile

    inp = keras.Input((8,), name="x")
    h = inp
    for i in range(60):
        h = keras.layers.Dense(8 + i, name=f"a_rather_long_layer_name_{i}")(h)
    data = profile(keras.Model(inp, h), batch_size=4).to_dict()
    text = render_to_text(lambda c: render_profile(data, c), width=100)
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 100
    assert f"{DEFAULT_TOP} heaviest of 61 layers shown" in text
    assert sum("a_rather_long_layer_name_59" in line for line in lines) == 1  # the heaviest, on one line
    everything = render_to_text(lambda c: render_profile(data, c, top=0), width=100)
    assert "other layers" not in everything and "a_rather_long_layer_name_0" in everything


@pytest.mark.parametrize("sample", ["digits_mlp", "digits_cnn", "digits_lstm", "nested_shared"])
def test_bundled_samples_profile(cli, sample):
    assert cli("profile", SAMPLES / f"{sample}.keras", "-f", "json").exit_code == 0


def test_missing_path_and_folder_exit_2(cli, tmp_path):
    result = cli("profile", tmp_path / "missing.keras")
    assert result.exit_code == 2 and "No such file" in result.stderr
    result = cli("profile", tmp_path)
    assert result.exit_code == 2 and "folder" in result.stderr


def test_not_a_model_exits_3_without_traceback(cli, tmp_path):
    text = tmp_path / "notes.keras"
    text.write_text("hello")
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    for path in (text, empty):
        result = cli("profile", path)
        assert result.exit_code == 3
        assert "Traceback" not in result.output and "error:" in result.stderr


def test_lambda_model_is_refused_with_rule_and_path(cli, keras, tmp_path):
    inp = keras.Input((4,))
    out = keras.layers.Lambda(lambda x: x * 2, name="double")(inp)
    path = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(path)
    result = cli("profile", path)
    assert result.exit_code == 3
    assert "TRUST-CODE" in result.stderr and "$.config.layers[1]" in result.stderr


def test_unknown_dimension_is_exit_2_with_a_hint(cli, text_path):
    result = cli("profile", text_path)
    assert result.exit_code == 2 and "--seq-len" in result.stderr
    assert cli("profile", text_path, "--seq-len", "64").exit_code == 0
    assert cli("profile", text_path, "--input-shape", "tokens=64").exit_code == 0
    assert cli("profile", text_path, "--input-shape", "tokens").exit_code == 2


def test_bad_budget_is_a_usage_error(cli, mlp_path):
    result = cli("profile", mlp_path, "--budget", "lots")
    assert result.exit_code == 2 and "'lots'" in result.stderr


def test_debug_shows_the_traceback(cli, tmp_path):
    result = cli("--debug", "profile", tmp_path / "missing.keras")
    assert result.exit_code == 2 and "Traceback" in result.stderr


def test_every_command_has_help_with_an_example(cli):
    import typer.main

    from kmemopt.cli import app

    group = typer.main.get_command(app)
    assert group.commands, "no commands registered"
    for name in group.commands:
        result = cli(name, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout, name


def test_help_and_version_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "from kmemopt.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0\n"
        "r = CliRunner().invoke(app, ['--version'])\n"
        "assert r.stdout.startswith('kmemopt ')\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'pynvml', 'h5py') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_profile_never_reads_weight_values(cli, mlp_path, tmp_path):
    """Zero the weights' bytes on disk: the static profile must not notice (it reads metadata only)."""
    import h5py

    copy = tmp_path / "scrambled.keras"
    with zipfile.ZipFile(mlp_path) as src, zipfile.ZipFile(copy, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "model.weights.h5":
                weights = tmp_path / "w.h5"
                weights.write_bytes(data)
                with h5py.File(weights, "r+") as h5:

                    def scramble(name, obj):
                        if isinstance(obj, h5py.Dataset) and obj.shape:
                            obj[...] = float("nan")

                    h5.visititems(scramble)
                data = weights.read_bytes()
            dst.writestr(info, data)
    a = json.loads(cli("profile", mlp_path, "-f", "json").stdout)
    b = json.loads(cli("profile", copy, "-f", "json").stdout)
    assert a["totals"] == b["totals"] and a["layers"] == b["layers"]


CUSTOM_LAYER = """
import keras


@keras.saving.register_keras_serializable(package="mine")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


def test_custom_layers_need_custom_objects(cli, keras, tmp_path):
    import runpy

    source = tmp_path / "my_layers.py"
    source.write_text(CUSTOM_LAYER)
    scale = runpy.run_path(str(source))["Scale"]
    inp = keras.Input((6,), name="x")
    path = tmp_path / "custom.keras"
    keras.Model(inp, scale(name="scale")(inp)).save(path)

    refused = cli("profile", path)
    assert refused.exit_code == 3 and "--custom-objects" in refused.stderr
    accepted = cli("profile", path, "--custom-objects", source, "-f", "json")
    assert accepted.exit_code == 0, accepted.stderr
    rows = {r["name"]: r for r in json.loads(accepted.stdout)["layers"]}
    assert rows["scale"]["class_name"] == "Scale" and rows["scale"]["params"] == 6
    missing = cli("profile", path, "--custom-objects", tmp_path / "nope.py")
    assert missing.exit_code == 2


def test_functional_graph_with_bare_keras_ops_is_allowed(cli, keras, tmp_path):
    """MobileNetV3 style: keras.ops calls in a functional graph are saved as Operation nodes."""
    inp = keras.Input((8,), name="x")
    h = keras.ops.add(keras.layers.Dense(8, name="a")(inp), 1.0)
    path = tmp_path / "ops.keras"
    keras.Model(inp, keras.ops.relu(h)).save(path)
    result = cli("profile", path, "-f", "json")
    assert result.exit_code == 0, result.stderr
    classes = {row["class_name"] for row in json.loads(result.stdout)["layers"]}
    assert {"Add", "Relu"} <= classes
