"""Real architectures that used to fail or mislead: a keras-hub BERT backbone (dict inputs and outputs,
unknown sequence length) and the bundled digits models (declared input shapes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import kmemopt
from kmemopt.errors import MalformedModelError, UsageError
from kmemopt.passes import fidelity as fid

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
BERT_ARGS = dict(
    vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16, max_sequence_length=16
)


@pytest.fixture(scope="module")
def bert(keras):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(**BERT_ARGS)


@pytest.fixture(scope="module")
def bert_path(bert, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bert") / "bert.keras"
    bert.save(path)
    return path


def _json(result) -> dict:
    return json.loads(result.stdout)


# --------------------------------------------------------------------------------------------
# check: only memory budgets need shapes


def test_check_size_and_parameter_budgets_need_no_seq_len(cli, bert, bert_path):
    args = ("--max-file-size", "50MB", "--max-params", "1M", "--max-param-memory", "1MiB", "-f", "json")
    result = cli("check", bert_path, *args)
    assert result.exit_code == 0, result.stderr
    values = {row["metric"]: row["value"] for row in _json(result)["budgets"]}
    params = bert.count_params()
    assert values == {"file_size": bert_path.stat().st_size, "params": params, "param_memory": 4 * params}


def test_parameter_counts_without_shapes_equal_the_profile(bert_path, mlp_path, nested_path):
    """The shape-free count and the profile's totals walk the same variables: equal to the byte."""
    for path, shapes in ((bert_path, {"seq_len": 8}), (mlp_path, {}), (nested_path, {})):
        report = kmemopt.check([path], max_params="1G", max_param_memory="1GiB", use_config=False)
        got = {r.budget.metric.value: r.value for r in report.results}
        totals = kmemopt.profile(path, **shapes).totals
        assert got == {"params": totals.params, "param_memory": totals.param_bytes}, path.name


def test_a_model_needing_seq_len_gets_an_error_verdict_and_the_others_are_checked(bert_path, mlp_path, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(bert_path, folder / "bert.keras")
    shutil.copy(mlp_path, folder / "mlp.keras")
    report = kmemopt.check(
        ["models/*.keras"], max_params="1M", max_inference_memory="1GiB", cwd=tmp_path, use_config=False
    )
    status = {(r.model, r.budget.metric.value): r.status.value for r in report.results}
    assert status == {
        ("models/bert.keras", "params"): "pass",
        ("models/bert.keras", "inference_memory"): "error",
        ("models/mlp.keras", "params"): "pass",
        ("models/mlp.keras", "inference_memory"): "pass",
    }
    [error] = report.errors
    assert error.model == "models/bert.keras" and "--seq-len" in error.message and error.exit_code == 2
    assert report.exit_code() == 2 and report.exit_code(exit_zero=True) == 2
    # With the length, every budget is evaluated.
    report = kmemopt.check(["models/*.keras"], max_inference_memory="1GiB", seq_len=8, cwd=tmp_path, use_config=False)
    assert report.exit_code() == 0 and not report.errors


def test_check_cli_reports_the_other_budgets_and_exits_2(cli, bert_path):
    result = cli("check", bert_path, "--max-params", "1M", "--max-inference-memory", "1GiB")
    assert result.exit_code == 2
    assert "params" in result.stdout and "ERROR (a budget could not be evaluated)" in result.stdout
    assert len(result.stderr.splitlines()) == 1 and "--seq-len N" in result.stderr


# --------------------------------------------------------------------------------------------
# --input-shape fills unknown dimensions, never changes declared ones


def test_input_shape_conflicting_with_a_declared_shape_is_a_usage_error(cli):
    cnn = SAMPLES / "digits_cnn.keras"
    result = cli("profile", cnn, "--input-shape", "image=16,16,1")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "image=16,16,1" in message and "(None, 8, 8, 1)" in message
    # The declared shape itself is accepted and gives the same profile as no flag at all.
    same = cli("profile", cnn, "--input-shape", "image=8,8,1", "-f", "json")
    plain = cli("profile", cnn, "-f", "json")
    assert same.exit_code == 0 and _json(same)["totals"] == _json(plain)["totals"]


def test_input_shape_conflicts_in_check_and_shrink_too(cli, tmp_path):
    cnn = SAMPLES / "digits_cnn.keras"
    result = cli("check", cnn, "--max-inference-memory", "1GiB", "--input-shape", "image=16,16,1")
    assert result.exit_code == 2 and "(None, 8, 8, 1)" in result.stderr
    result = cli("shrink", cnn, "-o", tmp_path / "out.keras", "-q", "int8", "--input-shape", "image=16,16,1")
    assert result.exit_code == 2 and "(None, 8, 8, 1)" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_input_shape_fills_only_unknown_dimensions(keras):
    inp = keras.Input((None, 8), name="steps")
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(inp))
    filled = kmemopt.profile(model, batch_size=2, input_shapes={"steps": (12, 8)})
    assert filled.layers[-1].output_shape == [None, 12, 2]
    with pytest.raises(UsageError, match=r"steps=12,9 conflicts .*\(None, None, 8\).*steps=N,8"):
        kmemopt.profile(model, input_shapes={"steps": (12, 9)})


def test_seq_len_never_changes_a_declared_length():
    lstm = SAMPLES / "digits_lstm.keras"
    assert kmemopt.profile(lstm, seq_len=20).totals == kmemopt.profile(lstm).totals


# --------------------------------------------------------------------------------------------
# fidelity: outputs named as the model names them; top-1 agreement only on class scores


def test_a_bert_backbone_outputs_are_named_by_their_keys_and_get_no_agreement(bert):
    specs = fid.output_specs(bert)
    assert [s.name for s in specs] == ["sequence_output", "pooled_output"]
    assert [s.class_scores for s in specs] == [None, False]  # the pooler is a tanh Dense: features
    inputs = fid.load_inputs(bert, None, samples=3, seq_len=5)
    outputs = fid.predict(bert, inputs)
    assert [o.shape for o in outputs] == [(3, 5, 8), (3, 8)]  # the arrays follow the names
    noisy = [o + np.float32(0.01) for o in outputs]
    result = fid.compare(specs, outputs, noisy, inputs)
    assert [(o.name, o.kind, o.top1_agreement) for o in result.outputs] == [
        ("sequence_output", "values", None),
        ("pooled_output", "values", None),
    ]
    assert result.top1_agreement is None
    with pytest.raises(UsageError, match="--min-agreement needs an output of class scores"):
        fid.apply_gates(result, min_agreement=0.99, max_accuracy_drop=None)


def test_class_scores_are_recognised_by_the_layer_that_makes_them(keras):
    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(5, activation="relu", name="h")(inp)
    head = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax", name="p")], name="head")
    outputs = {
        "zz_probs": head(h),  # softmax inside a nested model
        "logits": keras.layers.Dense(4, name="logits")(h),  # a Dense with no activation
        "features": keras.layers.Dense(4, activation="tanh", name="features")(h),
        "normed": keras.layers.LayerNormalization(name="ln")(h),  # says nothing: decided by shape
    }
    model = keras.Model(inp, outputs)
    specs = fid.output_specs(model)
    assert [(s.name, s.class_scores) for s in specs] == [
        ("zz_probs", True),
        ("logits", True),
        ("features", False),
        ("normed", None),
    ]
    inputs = fid.load_inputs(model, None, samples=8)
    ref = fid.predict(model, inputs)
    assert [o.shape[1] for o in ref] == [3, 4, 4, 5]  # in the order of the names (not sorted keys)
    kinds = [o.kind for o in fid.compare(specs, ref, ref, inputs).outputs]
    assert kinds == ["class_scores", "class_scores", "values", "class_scores"]


def test_the_digits_classifier_keeps_its_agreement_and_accuracy():
    data = np.load(SAMPLES / "digits_test.npz")
    model = kmemopt.load_model(SAMPLES / "digits_mlp.keras")
    specs = fid.output_specs(model)
    assert [(s.name, s.class_scores) for s in specs] == [("classifier", True)]
    inputs = fid.load_inputs(model, SAMPLES / "digits_test.npz")
    out = fid.predict(model, inputs)
    result = fid.compare(specs, out, out, inputs)
    assert result.outputs[0].kind == "class_scores" and result.top1_agreement == 1.0
    expected = float(np.mean(np.argmax(out[0], axis=1) == data["y"]))
    assert result.accuracy_before == expected and expected > 0.9


def test_a_layer_name_tensorflow_cannot_run_is_refused_with_its_name(keras):
    """Keras accepts "my layer"; TensorFlow's name scopes do not, and Keras's own predict fails inside
    tf.function. An input's name opens no scope, so any name is fine there."""
    inp = keras.Input((4,), name="any name\x1b")
    ok = keras.Model(inp, keras.layers.Dense(2, name="_d.x-1>y")(inp), name="m")
    inputs = fid.load_inputs(ok, None, samples=2)
    assert fid.predict(ok, inputs)[0].shape == (2, 2)
    bad = keras.Model(inp, keras.layers.Dense(2, name="my layer")(inp), name="m2")
    with pytest.raises(MalformedModelError, match="the layer name 'my layer' is not a valid TensorFlow name scope"):
        fid.predict(bad, inputs)


@pytest.mark.slow
def test_shrink_on_a_bert_backbone_reports_its_outputs_by_name(cli, bert_path, tmp_path):
    result = cli("shrink", bert_path, "-o", tmp_path / "bert.int8.keras", "-q", "int8", "--samples", "4", "-f", "json")
    assert result.exit_code == 0, result.stderr
    fidelity = _json(result)["fidelity"]
    assert [(o["name"], o["kind"], o["top1_agreement"]) for o in fidelity["outputs"]] == [
        ("sequence_output", "values", None),
        ("pooled_output", "values", None),
    ]
    assert fidelity["top1_agreement"] is None
    assert all(o["cosine_similarity"] > 0.99 for o in fidelity["outputs"])
