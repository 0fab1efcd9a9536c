"""Forward FLOPs (kmemopt.profiling.flops): 2 x multiply-adds per sample, worked out by hand per layer
kind, and the published figures of real architectures (built unallocated: no weights)."""

from __future__ import annotations

import pytest

from kmemopt.profiling.flops import format_flops, model_flops


def _flops(keras, layer, *shapes, **call_kwargs):
    """FLOPs of `layer` called on inputs of `shapes` (batch excluded), keyed by layer name."""
    inputs = [keras.Input(s) for s in shapes]
    out = layer(*inputs, **call_kwargs)
    model = keras.Model(inputs, out)
    return {r.path: r.flops for r in model_flops(model).layers}[layer.name]


@pytest.mark.parametrize(
    "make, shapes, expected",
    [
        # 5 inputs x 7 units
        (lambda L: L.Dense(7, name="t"), [(5,)], 2 * 5 * 7),
        # 3 positions x 4 inputs x 6 units
        (lambda L: L.Dense(6, name="t"), [(3, 4)], 2 * 3 * 4 * 6),
        # out 8x8x4, each a 3x3x3 window
        (lambda L: L.Conv2D(4, 3, padding="same", name="t"), [(8, 8, 3)], 2 * 8 * 8 * 4 * 3 * 3 * 3),
        # strides 2, valid: out 3x3x4
        (lambda L: L.Conv2D(4, 3, strides=2, name="t"), [(8, 8, 3)], 2 * 3 * 3 * 4 * 27),
        # out 8 x 6, each a 3 x 2 window
        (lambda L: L.Conv1D(6, 3, name="t"), [(10, 2)], 2 * 8 * 6 * 3 * 2),
        # out 2x2x2x5, each a 2x2x2x3 window
        (lambda L: L.Conv3D(5, 2, name="t"), [(3, 3, 3, 3)], 2 * 8 * 5 * 8 * 3),
        # groups=2: each filter sees 4 of the 8 channels
        (lambda L: L.Conv2D(6, 1, groups=2, name="t"), [(4, 4, 8)], 2 * 16 * 6 * 4),
        # out 8x8x3, a 3x3 window each
        (lambda L: L.DepthwiseConv2D(3, padding="same", name="t"), [(8, 8, 3)], 2 * 8 * 8 * 3 * 9),
        # depthwise 8x8x3 x 9, then pointwise 8x8 x 3 x 5
        (lambda L: L.SeparableConv2D(5, 3, padding="same", name="t"), [(8, 8, 3)], 2 * (64 * 3 * 9 + 64 * 3 * 5)),
        # every one of 4x4x3 inputs scattered through a 3x3 kernel into 4 filters
        (lambda L: L.Conv2DTranspose(4, 3, strides=2, name="t"), [(4, 4, 3)], 2 * 48 * 9 * 4),
        # abc,cd->abd: 4 x 6 outputs, each a sum over c=5
        (lambda L: L.EinsumDense("abc,cd->abd", output_shape=(4, 6), name="t"), [(4, 5)], 2 * 4 * 6 * 5),
        # 5 steps x 4 gates x (3 x 4 input + 4 x 4 recurrent)
        (lambda L: L.LSTM(4, name="t"), [(5, 3)], 2 * 5 * 4 * (12 + 16)),
        (lambda L: L.GRU(4, name="t"), [(5, 3)], 2 * 5 * 3 * (12 + 16)),
        (lambda L: L.SimpleRNN(4, return_sequences=True, name="t"), [(5, 3)], 2 * 5 * (12 + 16)),
        (lambda L: L.Bidirectional(L.LSTM(4), name="t"), [(5, 3)], 2 * 2 * 5 * 4 * (12 + 16)),
        (lambda L: L.Embedding(100, 8, name="t"), [(6,)], 0),
        (lambda L: L.BatchNormalization(name="t"), [(4, 4, 3)], 0),
        (lambda L: L.MaxPooling2D(name="t"), [(4, 4, 3)], 0),
    ],
)
def test_layer_flops_by_hand(keras, make, shapes, expected):
    assert _flops(keras, make(keras.layers), *shapes) == expected


def test_multi_head_attention_counts_projections_scores_and_mixing(keras):
    # query 4 x 5, value (and key) 6 x 7, 2 heads of key_dim 3 (value_dim 3), output back to 5
    q, v = keras.Input((4, 5)), keras.Input((6, 7))
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")
    model = keras.Model([q, v], mha(q, v))
    projections = 4 * 5 * 6 + 6 * 7 * 6 + 6 * 7 * 6  # query, key, value: positions x in x heads*key_dim
    scores = mixing = 2 * 4 * 6 * 3  # heads x query positions x key positions x key_dim
    output = 4 * 6 * 5
    assert model_flops(model).total == 2 * (projections + scores + mixing + output)
    # by keyword, key given apart from value (a different width, same length)
    k = keras.Input((6, 2))
    mha2 = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, name="mha2")
    model2 = keras.Model([q, v, k], mha2(query=q, value=v, key=k))
    assert model_flops(model2).total == 2 * (4 * 5 * 6 + 6 * 2 * 6 + 6 * 7 * 6 + scores + mixing + output)


def test_sequential_totals_and_unknown_layers_listed_not_guessed(keras):
    L = keras.layers
    model = keras.Sequential(
        [keras.Input((6,)), L.Dense(4, name="a"), L.Lambda(lambda x: x * 2, name="double"), L.Dense(3, name="b")]
    )
    result = model_flops(model)
    assert result.total == 2 * (6 * 4 + 4 * 3)
    assert [(r.path, r.class_name, r.kind) for r in result.not_counted] == [("double", "Lambda", "not counted")]
    assert result.to_dict()["total"] == result.total


def test_unknown_length_needs_seq_len(keras):
    from kmemopt.errors import UsageError

    inp = keras.Input((None, 3))
    model = keras.Model(inp, keras.layers.LSTM(4)(inp))
    with pytest.raises(UsageError, match="--seq-len"):
        model_flops(model)
    assert model_flops(model, seq_len=5).total == 2 * 5 * 4 * (12 + 16)


def test_nested_model_paths_and_shared_layer_calls(keras):
    L = keras.layers
    inner_in = keras.Input((5,))
    inner = keras.Model(inner_in, L.Dense(3, name="d")(inner_in), name="enc")
    shared = L.Dense(2, name="shared")
    x = keras.Input((5,))
    h = inner(x)
    model = keras.Model(x, shared(L.Concatenate()([shared(h), h])[:, :3]))
    result = model_flops(model)
    assert result.by_path()["enc/d"] == 2 * 5 * 3
    assert result.by_path()["shared"] == 2 * (3 * 2 + 3 * 2)  # both calls


@pytest.mark.parametrize(
    "name, flops, published_macs",
    [
        # MobileNetV2 (1.0, 224): 300 M multiply-adds (Sandler et al. 2018, table 4)
        ("MobileNetV2", 601_548_544, 300e6),
        # ResNet50: 3.8 G multiply-adds (He et al. 2016, table 1); others quote up to 4.1 G
        ("ResNet50", 7_715_946_496, 3.86e9),
        # EfficientNetB0: 0.39 B "FLOPs" (multiply-adds; Tan & Le 2019, table 2)
        ("EfficientNetB0", 771_629_504, 0.39e9),
    ],
)
def test_published_figures_of_real_architectures(keras, name, flops, published_macs):
    from kmemopt.keras_compat.variables import unallocated

    with unallocated():
        model = getattr(keras.applications, name)(weights=None)
    result = model_flops(model)
    assert result.not_counted == []
    assert result.total == flops  # exact under the convention (the architecture fixes it)
    assert abs(result.total / 2 - published_macs) / published_macs < 0.02


def test_format_flops():
    assert (format_flops(601_548_544), format_flops(7_715_946_496), format_flops(999)) == ("602 M", "7.72 G", "999")
