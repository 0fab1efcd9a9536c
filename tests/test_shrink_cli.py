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
    (gate,) = data["fidelity"]["gates"]
    assert gate == {"gate": "min_agreement", "threshold": 1.01, "value": gate["value"], "passed": False}
    assert sorted(p.name for p in folder.iterdir()) == ["mlp.keras"]


def test_ctrl_c_while_writing_leaves_nothing(cli, folder, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(write_stage, "verify_reload", interrupted)
    result = cli("shrink", folder / "mlp.keras", "--samples", "4")
    assert result.exit_code == 130
    assert sorted(p.name for p in folder.iterdir()) == ["mlp.keras"]


def test_killed_reload_process_leaves_nothing(cli, folder, monkeypatch):
    from kmemopt import sandbox

    # The reload child only: the metadata reader runs through the same sandbox and must still work.
    kill = "import os, signal, sys\nif 'reload_in_child' in sys.argv[1]: os.kill(os.getpid(), signal.SIGKILL)\n"
    killed = (*sandbox.CHILD_COMMAND[:-1], kill + sandbox.CHILD_COMMAND[-1])
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


@pytest.mark.slow  # two shrinks with their reload checks; the fast tier keeps this module's other shrinks: `make test` runs it
def test_markdown_and_table_reports(cli, folder):
    src = folder / "mlp.keras"
    result = cli("shrink", src, "-q", "float16", "--samples", "4", "-f", "markdown", "-o", folder / "a.keras")
    assert result.exit_code == 0, result.stderr
    assert "| File |" in result.stdout and "### Passes" in result.stdout
    result = cli("shrink", src, "--dry-run", "-q", "int8")
    assert result.exit_code == 0 and "Dry run: nothing was written." in result.stdout


def test_the_cli_and_the_library_build_the_same_request(cli, folder, monkeypatch):
    """The CLI parses its options into one ShrinkRequest, the one `kmemopt.shrink` builds from the same
    values, and the pipeline receives it unchanged."""
    import inspect

    import kmemopt
    from kmemopt.errors import UsageError
    from kmemopt.passes import pipeline
    from kmemopt.passes.base import MixedPrecision, QuantizeMode

    received = []

    def fake_shrink(path_or_model, out=None, request=pipeline.ShrinkRequest(), *, progress=None):
        received.append((path_or_model, out, request))
        raise UsageError("stop here")

    monkeypatch.setattr(pipeline, "shrink", fake_shrink)
    args = ["--quantize", "int8", "--prune", "50%", "--mixed-precision", "bfloat16", "--keep-optimizer"]
    args += ["--min-agreement", "99%", "--max-accuracy-drop", "0.01", "--samples", "5", "-b", "4"]
    args += ["--input-shape", "x=3", "--max-memory", "1GiB", "--timeout", "60", "--skip", "^dense"]
    assert cli("shrink", folder / "mlp.keras", "-o", folder / "out.keras", *args).exit_code == 2
    kwargs = dict(
        quantize="int8",
        prune="50%",
        mixed_precision="bfloat16",
        keep_optimizer=True,
        min_agreement="99%",
        max_accuracy_drop=0.01,
        samples=5,
        batch_size=4,
        input_shapes={"x": (3,)},
        max_memory="1GiB",
        timeout=60,
        skip="^dense",
    )
    with pytest.raises(UsageError, match="stop here"):
        kmemopt.shrink(folder / "mlp.keras", folder / "out.keras", **kwargs)
    (_, _, from_cli), (_, _, from_api) = received
    assert from_cli == from_api
    assert from_cli.passes.quantize is QuantizeMode.int8 and from_cli.passes.prune == 0.5
    assert from_cli.passes.mixed_precision is MixedPrecision.bfloat16 and not from_cli.passes.strip_optimizer
    assert (from_cli.min_agreement, from_cli.max_accuracy_drop) == (0.99, 0.01)
    assert (from_cli.max_memory_bytes, from_cli.timeout, from_cli.batch_size) == (2**30, 60, 4)
    # kmemopt.shrink's keywords are exactly make_request's, plus the progress callback.
    public = set(inspect.signature(kmemopt.shrink).parameters) - {"path_or_model", "out", "progress"}
    assert public == set(inspect.signature(pipeline.make_request).parameters)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": 0}, "batch size must be at least 1"),
        ({"samples": 0}, "--samples must be at least 1"),
        ({"timeout": 0}, "--timeout must be a positive"),
        ({"max_memory": 0}, "--max-memory must be a positive size"),
        ({"min_agreement": "lots"}, "as a percentage"),
        ({"quantize": "int3"}, "--quantize takes"),
    ],
)
def test_a_bad_request_is_refused_before_anything_is_read(tmp_path, kwargs, message):
    import kmemopt
    from kmemopt.errors import UsageError

    with pytest.raises(UsageError, match=message):
        kmemopt.shrink(tmp_path / "missing.keras", **kwargs)
