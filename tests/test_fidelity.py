"""Fidelity metrics, input reading and gates: pure NumPy, exact numbers."""

from __future__ import annotations

import numpy as np
import pytest

from kmemopt.errors import UsageError
from kmemopt.passes import fidelity as fid


def test_compare_output_exact():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    new = np.array([[1.0, 0.5], [0.0, 1.0]])
    out = fid.compare_output("y", ref, new)
    assert out.max_abs_error == 1.0
    assert out.relative_l2_error == pytest.approx(np.sqrt(1.25) / np.sqrt(5))
    assert out.cosine_similarity == pytest.approx(3.0 / (np.sqrt(5) * np.sqrt(2.25)))
    assert out.top1_agreement == 1.0


def test_top1_agreement_counts_argmax_changes():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    new = np.array([[0.1, 0.9], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert fid.compare_output("y", ref, new).top1_agreement == 0.75


def test_regression_output_has_no_agreement():
    assert fid.compare_output("y", np.ones((4, 1)), np.ones((4, 1))).top1_agreement is None


def test_identical_outputs():
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = fid.compare_output("y", a, a.copy())
    assert (out.max_abs_error, out.relative_l2_error, out.top1_agreement) == (0.0, 0.0, 1.0)
    assert out.cosine_similarity == pytest.approx(1.0)


def test_accuracy_with_int_and_one_hot_labels():
    outputs = [np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])]
    assert fid.accuracy(outputs, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert fid.accuracy(outputs, np.array([[1, 0], [0, 1], [0, 1]])) == pytest.approx(2 / 3)
    assert fid.accuracy(outputs, None) is None


def _fidelity(agreement_ref, agreement_new, labels=None):
    inputs = fid.Inputs((np.zeros((len(agreement_ref), 1)),), ("x",), labels, "data")
    return fid.compare(["y"], [np.array(agreement_ref)], [np.array(agreement_new)], inputs)


def test_gates_pass_and_fail():
    f = _fidelity([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]], labels=np.array([0, 1]))
    assert f.top1_agreement == 0.5 and f.accuracy_before == 1.0 and f.accuracy_after == 0.5
    assert fid.apply_gates(f, min_agreement=0.5, max_accuracy_drop=0.6).passed
    failed = fid.apply_gates(f, min_agreement=0.51, max_accuracy_drop=0.4)
    assert [g.passed for g in failed.gates] == [False, False] and f.gates == ()  # a new Fidelity; f is unchanged
    assert [g.to_dict() for g in failed.gates] == [
        {"gate": "min_agreement", "threshold": 0.51, "value": 0.5, "passed": False},
        {"gate": "max_accuracy_drop", "threshold": 0.4, "value": 0.5, "passed": False},
    ]
    message = str(fid.gate_failure(failed))
    assert "below --min-agreement" in message and "Nothing was written" in message


def test_accuracy_gate_needs_labels():
    f = _fidelity([[1.0, 0.0]], [[1.0, 0.0]])
    with pytest.raises(UsageError, match="labels"):
        fid.apply_gates(f, min_agreement=None, max_accuracy_drop=0.01)


class _FakeModel:
    """What load_inputs reads from a model: its symbolic inputs."""

    def __init__(self, specs):
        class T:
            def __init__(self, name, shape, dtype):
                self.name, self.shape, self.dtype = name, shape, dtype

        self.inputs = [T(*s) for s in specs]

    def _flatten_layers(self):
        return []


def test_synthetic_inputs_have_the_model_shapes():
    model = _FakeModel([("image", (None, 8, 8, 1), "float32"), ("tokens", (None, None), "int32")])
    inputs = fid.load_inputs(model, None, samples=5)
    assert inputs.source == "synthetic" and inputs.samples == 5
    assert inputs.arrays[0].shape == (5, 8, 8, 1) and inputs.arrays[0].dtype == np.float32
    assert inputs.arrays[1].shape == (5, fid.DEFAULT_SEQ_LEN) and inputs.arrays[1].dtype == np.int32


def test_npz_keyed_by_name_or_x(tmp_path):
    model = _FakeModel([("pixels", (None, 4), "float32")])
    np.savez(tmp_path / "a.npz", pixels=np.ones((7, 4)), y=np.arange(7))
    np.savez(tmp_path / "b.npz", x=np.ones((3, 4)))
    a = fid.load_inputs(model, tmp_path / "a.npz", samples=5)
    assert a.samples == 5 and list(a.labels) == [0, 1, 2, 3, 4] and a.source == "data"
    b = fid.load_inputs(model, tmp_path / "b.npz")
    assert b.samples == 3 and b.labels is None


def test_bad_data_is_a_usage_error(tmp_path):
    model = _FakeModel([("pixels", (None, 4), "float32")])
    np.savez(tmp_path / "wrong.npz", other=np.ones((3, 4)))
    np.save(tmp_path / "shape.npy", np.ones((3, 5)))
    with pytest.raises(UsageError, match="no array for the model input"):
        fid.load_inputs(model, tmp_path / "wrong.npz")
    with pytest.raises(UsageError, match="expects"):
        fid.load_inputs(model, tmp_path / "shape.npy")
    with pytest.raises(UsageError, match="does not exist"):
        fid.load_inputs(model, tmp_path / "missing.npz")
