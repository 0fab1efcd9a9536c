"""kmemopt shrink on the command line: exit codes, never touching the input, never leaving temp files."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from kmemopt.write import save as write_stage


@pytest.fixture()
def folder(tmp_path, mlp_path):
    shutil.copy(mlp_path, tmp_path / "mlp.keras")
    return tmp_path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_help_has_an_example(cli):
    result = cli("shrink", "--help")
    assert result.exit_code == 0 and "Example: kmemopt shrink" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["-o", "{in}"], "is the input"),
        (["-o", "{dir}/out.h5"], "must be a .keras file"),
        (["--prune", "1.5"], "--prune takes a sparsity"),
        (["--allow-custom-layers"], "--allow-custom-layers only applies"),
        (["--skip", "("], "not a valid regular expression"),
        (["-o", "{dir}/missing/out.keras"], "does not exist"),
    ],
)
def test_usage_errors_exit_2(cli, folder, args, message):
    src = folder / "mlp.keras"
    args = [a.format(**{"in": src, "dir": folder}) for a in args]
    result = cli("shrink", src, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["mlp.keras"]


def test_existing_output_needs_force_and_input_is_untouched(cli, folder):
    src, out = folder / "mlp.keras", folder / "mlp.slim.keras"
    digest = _digest(src)
    out.write_bytes(b"precious")
    result = cli("shrink", src)
    assert result.exit_code == 2 and "--force" in result.stderr
    assert out.read_bytes() == b"precious"
    result = cli("shrink", src, "--force", "--samples", "4", "-f", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["output"] == str(out) and data["written"]  # the default name: <stem>.slim.keras beside the input
    assert out.read_bytes()[:2] == b"PK"
    assert _digest(src) == digest
    assert sorted(p.name for p in folder.iterdir()) == ["mlp.keras", "mlp.slim.keras"]


def test_failed_gate_exits_1_and_writes_nothing(cli, folder):
    src = folder / "mlp.keras"
    result = cli("shrink", src, "-q", "int4", "--samples", "16", "--min-agreement", "101%", "-f", "json")
    assert result.exit_code == 1
    assert "Fidelity gate failed" in result.stderr
    data = json.loads(result.stdout)  # the report is still printed
    assert data["written"] is False and data["fidelity"]["passed"] is False
    assert sorted(p.name for p in folder.iterdir()) == ["mlp.keras"]


def test_ctrl_c_while_writing_leaves_nothing(cli, folder, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(write_stage, "verify_reload", interrupted)
    result = cli("shrink", folder / "mlp.keras", "--samples", "4")
    assert result.exit_code == 130
    assert sorted(p.name for p in folder.iterdir()) == ["mlp.keras"]


def test_killed_reload_process_leaves_nothing(cli, folder, monkeypatch):
    import sys

    from kmemopt import sandbox

    killed = (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    monkeypatch.setattr(sandbox, "CHILD_COMMAND", killed)
    result = cli("shrink", folder / "mlp.keras", "--samples", "4")
    assert result.exit_code == 4
    assert "did not reload" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["mlp.keras"]


def test_unsafe_model_exits_3(cli, keras, tmp_path):
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2, name="code")(inp))
    model.save(tmp_path / "lambda.keras")
    result = cli("shrink", tmp_path / "lambda.keras")
    assert result.exit_code == 3 and "runs code" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lambda.keras"]


def test_weights_not_stored_exit_3(cli, keras, tmp_path):
    from factories import dense_stack, write_declared_model

    path = write_declared_model(tmp_path / "declared.keras", dense_stack(keras, [8, 4]))
    result = cli("shrink", path)
    assert result.exit_code == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["declared.keras"]


def test_markdown_and_table_reports(cli, folder):
    src = folder / "mlp.keras"
    result = cli("shrink", src, "-q", "float16", "--samples", "4", "-f", "markdown", "-o", folder / "a.keras")
    assert result.exit_code == 0, result.stderr
    assert "| File |" in result.stdout and "### Passes" in result.stdout
    result = cli("shrink", src, "--dry-run", "-q", "int8")
    assert result.exit_code == 0 and "Dry run: nothing was written." in result.stdout
