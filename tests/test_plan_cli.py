"""`kmemopt plan` the command and `kmemopt.plan(...)`: exit codes, the written file, the measurement, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

HELD = ["batch_size", "mixed_precision", "optimizer", "freeze"]  # what a .keras file can hold


def _plan(path, **kw):
    import kmemopt

    return kmemopt.plan(path, **kw)


def test_kmemopt_plan_is_callable_after_its_modules_are_imported(mlp_path):
    import kmemopt
    import kmemopt.plan.strategy  # binds the package to kmemopt.plan: it must stay callable

    assert callable(kmemopt.plan)
    result = kmemopt.plan(mlp_path, budget="1GiB", batch_size=8, only=["optimizer"])
    assert result.plan is not None and result.plan.fits


def test_cli_json_and_exit_0_when_a_plan_fits(cli, mlp_path):
    r = cli("plan", mlp_path, "--budget", "1GiB", "-b", "8", "--only", "batch_size,optimizer", "-f", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["budget_bytes"] == 2**30 and data["batch_size"] == 8 and data["phase"] == "train"
    assert {row["name"] for row in data["strategies"]} == {"batch_size", "optimizer"}
    assert data["plan"]["fits"] and data["baseline"]["fits"]
    assert data["measured"] is None and data["output"] is None


def test_cli_exit_1_when_no_plan_fits(cli, mlp_path, tmp_path):
    out = tmp_path / "out.keras"
    r = cli("plan", mlp_path, "--budget", "1KiB", "-b", "8", "--only", "optimizer", "--apply", "-o", out)
    assert r.exit_code == 1, r.output
    assert "No plan fits" in r.stdout
    assert not out.exists()  # a plan that does not fit writes nothing


@pytest.mark.parametrize(
    "args",
    [
        ["--budget", "lots"],
        ["--budget", "1GiB", "--phase", "eval"],
        ["--budget", "1GiB", "--freeze", "("],
        ["--budget", "1GiB", "--only", "nope"],
        ["--budget", "1GiB", "-o", "x.keras"],  # -o without --apply
        ["--budget", "1GiB", "--apply", "-o", "x.txt"],
    ],
)
def test_cli_usage_errors_exit_2(cli, mlp_path, args):
    r = cli("plan", mlp_path, *args)
    assert r.exit_code == 2, r.output


def test_cli_never_overwrites_the_input(cli, mlp_path):
    before = mlp_path.read_bytes()
    r = cli("plan", mlp_path, "--budget", "1GiB", "-b", "8", "--only", "optimizer", "--apply", "-o", mlp_path)
    assert r.exit_code == 2
    assert mlp_path.read_bytes() == before


def test_cli_malformed_model_exit_3(cli, tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04 not a zip at all")
    r = cli("plan", bad, "--budget", "1GiB")
    assert r.exit_code == 3, r.output


@pytest.fixture(scope="module")
def applied(mlp_path, tmp_path_factory):
    """A plan that combines every strategy a file holds: the combination with the lowest peak is the
    plan when the budget is that peak."""
    probe = _plan(mlp_path, budget=1, batch_size=8, only=HELD, freeze="^hidden$")
    budget = probe.plan.predicted.peak_bytes
    out = tmp_path_factory.mktemp("plan") / "mlp.plan.keras"
    result = _plan(mlp_path, budget=budget, batch_size=8, only=HELD, freeze="^hidden$", apply=True, out=out)
    return result, out


def test_apply_writes_the_plans_state_exactly(applied):
    import kmemopt

    result, out = applied
    assert result.plan.fits and out.exists()
    names = {s.strategy for s in result.plan.settings}
    assert len(names) >= 3, names  # several strategies at once
    spec = result.plan.spec
    written = kmemopt.profile(out, batch_size=spec.batch_size).totals
    predicted = result.plan.predicted
    assert written.param_bytes == predicted.param_bytes
    assert written.gradient_bytes == predicted.gradient_bytes
    assert written.optimizer_bytes == predicted.optimizer_bytes
    assert result.output["matches_plan"] is True
    assert result.output["reload"]["reproduced"] is True


def test_applied_file_trains_with_plain_keras(keras, applied, mlp_path):
    result, out = applied
    spec = result.plan.spec
    model = keras.models.load_model(out)
    original = keras.models.load_model(mlp_path)
    # The input's real weights, carried over (float32 master weights under a mixed policy).
    for a, b in zip(original.get_layer("hidden").weights, model.get_layer("hidden").weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if spec.dtype_policy:
        assert model.get_layer("hidden").dtype_policy.name == spec.dtype_policy
    if spec.frozen:
        assert not model.get_layer("hidden").trainable
    accumulation = spec.gradient_accumulation_steps
    assert (model.optimizer.gradient_accumulation_steps or None) == accumulation
    rng = np.random.default_rng(0)
    x, y = rng.random((spec.batch_size, 16), dtype="float32"), rng.integers(0, 4, spec.batch_size)
    before = np.asarray(model.get_layer("out").kernel).copy()
    for _ in range(accumulation or 1):  # one optimizer update
        model.fit(x, y, batch_size=spec.batch_size, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 1
    assert not np.array_equal(before, np.asarray(model.get_layer("out").kernel))


@pytest.mark.slow  # a written plan with its reload check; the fast tier keeps test_apply_writes_the_plans_state_exactly: `make test` runs it
def test_lora_is_not_written_and_says_why(keras, tmp_path):
    inp = keras.Input((512,), name="x")
    h = inp
    for i in range(4):  # wide kernels: LoRA saves their gradients and slots (more than the merged kernels cost)
        h = keras.layers.Dense(512, name=f"wide{i}")(h)
    wide = keras.Model(inp, h, name="wide")
    wide.compile(optimizer="adam", loss="mse")
    wide.save(tmp_path / "wide.keras")
    out = tmp_path / "lora.keras"
    result = _plan(tmp_path / "wide.keras", budget="1GiB", batch_size=8, only=["lora"], apply=True, out=out)
    assert [s.strategy for s in result.plan.settings] == ["lora"]
    (row,) = result.output["not_in_file"]
    assert row["name"] == "lora" and "zeroes" in row["why"] and "enable_lora" in row["keras_code"]
    assert result.output["matches_plan"] is None  # the file does not hold the adapters


def test_table_fits_100_columns_and_escapes_names(keras, tmp_path):
    from kmemopt.report import render_to_text
    from kmemopt.report.plan import plan_markdown, render_plan

    evil = "x[bold]\x1b]0;pwned\x07\nFAKE"
    inp = keras.Input((4,), name="inp")
    h = keras.layers.Dense(8, name=evil)(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(h), name="m")
    model.compile(optimizer="adam", loss="mse")
    path = tmp_path / "evil.keras"
    model.save(path)
    data = _plan(path, budget="1GiB", batch_size=4, only=["freeze"], train_last=1).to_dict()
    text = render_to_text(lambda console: render_plan(data, console), width=100)
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "\x1b" not in text and "\x07" not in text
    assert not any(line.startswith("FAKE") for line in text.splitlines())
    assert "Keras code" in text and "kmemopt plan" in text
    md = plan_markdown(data)
    assert "\x1b" not in md and not any(line.startswith("FAKE") for line in md.splitlines())


@pytest.mark.slow
def test_measure_puts_measured_beside_predicted(mlp_path):
    result = _plan(mlp_path, budget="1GiB", batch_size=8, only=["batch_size"], measure=True)
    m = result.measured
    assert m["baseline"]["predicted_peak_bytes"] == result.baseline_priced.peak_bytes
    assert m["baseline"]["measured_peak_bytes"] > 0 and m["baseline"]["status"] == "ok"
    plan = m["plan"]
    assert plan["batch_size"] == result.plan.spec.batch_size
    assert plan["predicted_peak_bytes"] == result.plan.predicted.peak_bytes
    assert plan["measured_peak_bytes"] > 0 and plan["file"] is None  # a scratch file, gone
    assert result.to_dict()["measured"] is m


@pytest.fixture(scope="module")
def bert_paths(keras, tmp_path_factory):
    """A tiny keras-hub BertBackbone under a classifier head: token inputs of length 8, and of unknown length."""
    keras_hub = pytest.importorskip("keras_hub")
    folder = tmp_path_factory.mktemp("bert")
    paths = {}
    for length in (8, None):
        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=200,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            max_sequence_length=8,
            name="bert_backbone",
        )
        inputs = {
            k: keras.Input((length,), dtype="int32", name=k) for k in ("token_ids", "segment_ids", "padding_mask")
        }
        out = keras.layers.Dense(2, activation="softmax", name="classifier")(backbone(inputs)["pooled_output"])
        model = keras.Model(inputs, out, name="bert_classifier")
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        paths[length] = folder / f"bert_{length or 'free'}.keras"
        model.save(paths[length])
    return paths


@pytest.mark.slow  # keras-hub backbone traced twice: make test
def test_backbone_under_fixed_length_inputs_is_profiled_from_them(bert_paths):
    """The nested backbone's own inputs have an unknown length; the outer inputs fix it (was UnknownDimension)."""
    import kmemopt

    free = kmemopt.profile(bert_paths[None], batch_size=4, seq_len=8).totals
    for seq_len in (None, 8):
        fixed = kmemopt.profile(bert_paths[8], batch_size=4, seq_len=seq_len).totals
        assert fixed.training_peak_bytes == free.training_peak_bytes
        assert fixed.inference_peak_bytes == free.inference_peak_bytes
    result = _plan(bert_paths[8], budget="1GiB", batch_size=4, only=["batch_size"])
    assert result.baseline_training_peak_bytes == free.training_peak_bytes


@pytest.mark.slow  # a keras-hub backbone applied, written and reloaded (minutes under load): make test
def test_freezing_inside_a_keras_hub_backbone_is_written_or_listed_as_lost(bert_paths, tmp_path):
    """A backbone's config is its constructor's arguments: its layers' trainable flags are not in the file.
    Freezing the whole backbone is (its own flag); freezing part of it is listed under not_in_file."""
    import kmemopt

    path = bert_paths[8]
    whole = _plan(path, budget="1GiB", batch_size=4, only=["freeze"], freeze="^bert_backbone/", apply=True,
                  out=tmp_path / "whole.keras")  # fmt: skip
    assert [s["name"] for s in whole.output["in_file"]] == ["freeze"] and whole.output["not_in_file"] == []
    assert whole.output["matches_plan"] is True
    written = kmemopt.profile(tmp_path / "whole.keras", batch_size=4).totals
    assert written.gradient_bytes == whole.plan.predicted.gradient_bytes == 4 * (16 * 2 + 2)  # the head only

    part = _plan(path, budget="1GiB", batch_size=4, only=["freeze"], freeze="transformer_layer_0", apply=True,
                 out=tmp_path / "part.keras")  # fmt: skip
    (lost,) = part.output["not_in_file"]
    assert lost["name"] == "freeze" and "constructor" in lost["why"] and "layer.trainable = False" in lost["keras_code"]
    assert lost["weights"] and all("transformer_layer_0" in w for w in lost["weights"])
    assert part.output["in_file"] == [] and part.output["matches_plan"] is None
    # The report is true to the file: the written model trains what the plan froze.
    baseline = kmemopt.profile(path, batch_size=4).totals
    assert kmemopt.profile(tmp_path / "part.keras", batch_size=4).totals.gradient_bytes == baseline.gradient_bytes
    assert part.plan.predicted.gradient_bytes < baseline.gradient_bytes
