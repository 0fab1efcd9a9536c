"""Activations, liveness peaks, the batch line, budgets and unknown dimensions, on hand-checked graphs."""

from __future__ import annotations

import pytest

import kmemopt
from kmemopt.errors import UsageError


def _chain(keras):
    inp = keras.Input((16,), name="x")
    h = keras.layers.Dense(32, name="a")(inp)
    h = keras.layers.Dense(32, name="b")(h)
    return keras.Model(inp, keras.layers.Dense(4, name="c")(h), name="chain")


def test_chain_inference_peak_is_the_largest_adjacent_pair(keras):
    model = _chain(keras)
    r = kmemopt.profile(model, batch_size=10)
    # Per sample (float32): x 64 B, a 128 B, b 128 B, c 16 B. While b runs, a and b are alive: 256 B.
    assert r.totals.inference_activation_peak_bytes == 10 * 256
    # Plus the runtime's own costs (calibrated: loader residue, traced graph, a copy of the 64 B input).
    assert r.totals.inference_peak_bytes == r.totals.param_bytes + 10 * 256 + r.totals.runtime_inference_bytes
    assert r.inference.per_sample_bytes == 256 + 64
    assert r.inference.fixed_bytes == r.totals.param_bytes + r.totals.runtime_inference_bytes - 10 * 64
    # Training keeps every tensor: (64 + 128 + 128 + 16) per sample.
    assert r.totals.activation_bytes == 10 * 336


def test_branches_keep_a_tensor_alive_until_its_last_consumer(keras):
    inp = keras.Input((10,), name="x")
    a = keras.layers.Dense(100, name="wide")(inp)  # 400 B a sample, needed again by the add
    b = keras.layers.Dense(10, name="narrow")(a)  # 40 B
    c = keras.layers.Dense(100, name="back")(b)  # 400 B
    out = keras.layers.Add(name="add")([a, c])  # 400 B
    r = kmemopt.profile(keras.Model(inp, out), batch_size=1)
    # While `back` runs: wide (still needed), narrow, back = 840; while `add` runs: wide, back, add = 1200.
    assert r.totals.inference_activation_peak_bytes == 1200


def test_output_shapes_and_rows(keras):
    r = kmemopt.profile(_chain(keras), batch_size=3)
    rows = {row.path: row for row in r.layers}
    assert rows["x"].class_name == "InputLayer" and rows["x"].activation_bytes == 3 * 64
    assert rows["a"].output_shape == [None, 32]
    assert rows["c"].output_bytes == 3 * 16
    assert rows["a"].activation_bytes_per_sample == 128


def test_batch_line_is_exact_at_every_batch(keras):
    model = _chain(keras)
    r1 = kmemopt.profile(model, batch_size=1)
    for b in (2, 7, 64):
        rb = kmemopt.profile(model, batch_size=b)
        assert rb.totals.inference_peak_bytes == r1.inference.at(b)
        assert rb.totals.training_peak_bytes == r1.training.at(b)


def test_budget_gives_the_largest_batch_that_fits(keras):
    model = _chain(keras)
    budget = 20_000_000
    r = kmemopt.profile(model, batch_size=1, budget=budget)
    inf, train = r.budget.max_inference_batch, r.budget.max_training_batch
    assert r.inference.at(inf) <= budget < r.inference.at(inf + 1)
    assert r.training.at(train) <= budget < r.training.at(train + 1)
    assert train < inf


def test_budget_smaller_than_the_weights_fits_nothing(keras):
    r = kmemopt.profile(_chain(keras), batch_size=1, budget="100 B")
    assert r.budget.max_inference_batch == 0 and r.budget.max_training_batch == 0


def test_unknown_sequence_length_is_a_one_line_error(text_path):
    with pytest.raises(UsageError) as err:
        kmemopt.profile(text_path)
    message = str(err.value)
    assert "tokens" in message and "--seq-len" in message and "--input-shape" in message
    assert "\n" not in message


def test_seq_len_and_input_shape_fill_unknown_dimensions(text_path):
    r = kmemopt.profile(text_path, batch_size=2, seq_len=10)
    same = kmemopt.profile(text_path, batch_size=2, input_shapes={"tokens": (10,)})
    assert r.totals == same.totals
    assert r.inputs[0].shape == (None, 10) and r.inputs[0].dtype == "int32"
    rows = {row.name: row for row in r.layers}
    assert rows["tokens"].activation_bytes == 2 * 10 * 4  # int32 token ids
    assert rows["embedding"].output_bytes == 2 * 10 * 8 * 4
    # LSTM(6) keeps, per time step, 4 activated gates and c, tanh(c), h: 7 x 6 floats (calibrated, docs/measure.md).
    assert rows["lstm"].output_bytes == 2 * 6 * 4
    assert rows["lstm"].activation_bytes == 2 * (6 * 4 + 10 * 7 * 6 * 4)
    longer = kmemopt.profile(text_path, batch_size=2, seq_len=20)
    assert longer.totals.activation_bytes > r.totals.activation_bytes


def test_input_shape_with_a_wrong_name_or_rank_is_a_usage_error(text_path):
    with pytest.raises(UsageError, match="model's inputs are"):
        kmemopt.profile(text_path, input_shapes={"nope": (3,)})
    with pytest.raises(UsageError, match="dimension"):
        kmemopt.profile(text_path, input_shapes={"tokens": (3, 4)})


def test_fixed_batch_input_is_traced_with_a_free_batch(keras):
    inp = keras.Input((8,), batch_size=4, name="x")
    model = keras.Model(inp, keras.layers.Dense(2, name="d")(inp))
    r = kmemopt.profile(model, batch_size=16)
    assert r.totals.inference_activation_peak_bytes == 16 * (8 + 2) * 4


def test_attention_counts_the_score_matrix(keras):
    inp = keras.Input((12, 16), name="x")
    out = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")(inp, inp)
    r = kmemopt.profile(keras.Model(inp, out), batch_size=1)
    row = next(r for r in r.layers if r.name == "mha")
    scores = 2 * 12 * 12 * 4
    assert row.activation_bytes >= row.output_bytes + 2 * scores


def test_sequential_model_input_gets_a_row(keras):
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="d")], name="seq")
    r = kmemopt.profile(model, batch_size=2)
    assert r.layers[0].class_name == "InputLayer" and r.layers[0].activation_bytes == 2 * 5 * 4
    assert sum(row.activation_bytes for row in r.layers) == r.totals.activation_bytes


def test_rows_sum_to_totals_with_unkept_tensors_and_bare_operations(keras):
    """An Add feeding an Add keeps nothing for the backward pass; a keras.ops call is a graph node
    without being a layer: both still have rows, and the rows sum to the totals."""
    inp = keras.Input((8,), name="x")
    a = keras.layers.Dense(8, name="a")(inp)
    s1 = keras.layers.Add(name="add_1")([a, inp])
    s2 = keras.layers.Add(name="add_2")([s1, inp])
    doubled = keras.ops.multiply(s2, 2.0)
    out = keras.layers.Dense(3, name="head")(doubled)
    r = kmemopt.profile(keras.Model(inp, out), batch_size=4)
    rows = {row.name: row for row in r.layers}
    assert rows["add_1"].output_bytes == 4 * 8 * 4 and rows["add_1"].activation_bytes == 0
    op_rows = [row for row in r.layers if row.name not in {"x", "a", "add_1", "add_2", "head"}]
    assert len(op_rows) == 1 and op_rows[0].output_bytes == 4 * 8 * 4 and op_rows[0].params == 0
    for field in ("activation_bytes", "param_bytes", "gradient_bytes"):
        assert sum(getattr(row, field) for row in r.layers) == getattr(r.totals, field)
