"""Structured channel pruning (kmemopt.passes.channels): tied channels, rebuilt plain-Keras models.

The main check is an equivalence: zero the channels pruning removes in the *original* model (their
filters and biases, BatchNorm shift, attention heads' output rows) and the original must then compute
what the pruned model computes. That fails for any wrong slice, offset or tie.
"""

from __future__ import annotations

import numpy as np
import pytest

from kmemopt.passes.channels import Amount, Ranking, prune_channels, pruned_model_config
from kmemopt.passes.channels.graph import CONV_TRANSPOSE, DEPTHWISE, RNN_GATES
from kmemopt.passes.channels.select import layer_weights


def _removed(kept, size):
    if kept is None:
        return np.array([], dtype=int)
    return np.setdiff1d(np.arange(size), kept)


def _zero(array, axis, idx):
    array = array.copy()
    index = [slice(None)] * array.ndim
    index[axis] = idx
    array[tuple(index)] = 0
    return array


def masked_original(keras, model, result):
    """The original model with every removed channel's contribution zeroed."""
    sel = result.selection
    analysis, groups = sel.analysis, sel.analysis.groups
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    nodes = {n.name: n for n in analysis.nodes}
    for name, usage in analysis.usage.items():
        node, layer = nodes[name], clone.get_layer(name)
        weights = layer_weights(layer)
        own = usage.own
        own_removed = _removed(sel.of(own), groups.size[groups.find(own)]) if own is not None else []
        layout = usage.inputs.get("0")
        in_removed = _removed(sel.layout_kept(layout), layout.width) if layout is not None else []
        new = []
        for key, w in weights.items():
            leaf, cls = key.rsplit("/", 1)[-1], node.class_name
            if cls in RNN_GATES:
                units = groups.size[groups.find(own)]
                cols = np.concatenate([g * units + own_removed for g in range(RNN_GATES[cls])]).astype(int)
                w = _zero(w, w.ndim - 1, cols)
            elif cls == "MultiHeadAttention":
                if key == "attention_output/kernel":
                    heads = _removed(sel.of(usage.heads), node.config["num_heads"])
                    w = _zero(w, 0, heads)
                    w = _zero(w, 2, _removed(sel.layout_kept(usage.out), usage.out.width))
                elif key == "attention_output/bias":
                    w = _zero(w, 0, _removed(sel.layout_kept(usage.out), usage.out.width))
            elif cls == "BatchNormalization" and leaf in ("beta", "moving_mean"):
                w = _zero(w, 0, in_removed)
            elif cls in DEPTHWISE and leaf == "bias":
                w = _zero(w, 0, in_removed)
            elif own is not None and leaf in ("kernel", "pointwise_kernel", "embeddings"):
                w = _zero(w, w.ndim - 2 if cls in CONV_TRANSPOSE else w.ndim - 1, own_removed)
            elif own is not None and leaf == "bias":
                w = _zero(w, 0, own_removed)
            new.append(w)
        layer.set_weights(new)
    return clone


def assert_equivalent(keras, model, result, x):
    want = masked_original(keras, model, result).predict(x, verbose=0)
    got = result.model.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def widths(result):
    return {(row.layer, row.what): (row.before, row.after) for row in result.report.layers}


@pytest.fixture(scope="module")
def residual_cnn(keras):
    """Residual CNN with BatchNorm: an Add ties stem and b2, a depthwise-separable branch, a
    Concatenate, Flatten into Dense."""
    keras.utils.set_random_seed(1)
    L = keras.layers
    inp = keras.Input((12, 12, 3), name="img")
    x = L.ReLU()(L.BatchNormalization(name="stem_bn")(L.Conv2D(16, 3, padding="same", name="stem")(inp)))
    y = L.ReLU()(L.BatchNormalization(name="b1_bn")(L.Conv2D(12, 3, padding="same", name="b1")(x)))
    y = L.BatchNormalization(name="b2_bn")(L.Conv2D(16, 3, padding="same", name="b2")(y))
    x = L.Add(name="add")([x, y])
    d = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    s = L.SeparableConv2D(8, 3, padding="same", depth_multiplier=2, name="sep")(d)
    c = L.Concatenate(name="cat")([s, x])
    c = L.MaxPooling2D(3)(L.Conv2D(10, 1, name="mix")(c))
    f = L.Dense(6, activation="relu", name="fc")(L.Flatten(name="flat")(c))
    model = keras.Model(inp, L.Dense(4, name="out")(f), name="residual")
    for layer in model.layers:  # BatchNorm statistics that are not the identity
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights(
                [rng.uniform(0.5, 2, n), rng.normal(0, 0.3, n), rng.normal(0, 0.3, n), rng.uniform(0.5, 2, n)]
            )
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((5, 12, 12, 3)).astype("float32")


def test_residual_cnn_halves_every_free_group_and_ties_the_add(keras, residual_cnn, images):
    result = prune_channels(residual_cnn, 0.5, batch_size=None)
    w = widths(result)
    assert w[("stem", "filters")] == (16, 8)
    assert w[("b1", "filters")] == (12, 6)
    assert w[("b2", "filters")] == (16, 8)
    assert w[("sep", "filters")] == (8, 4)
    assert w[("mix", "filters")] == (10, 5)
    assert w[("fc", "units")] == (6, 3)
    assert w[("out", "units")] == (4, 4)  # the model's output keeps its width
    sel, usage = result.selection, result.selection.analysis.usage
    # The Add ties stem and b2: one group, the same channels kept in both.
    assert sel.analysis.groups.find(usage["stem"].own) == sel.analysis.groups.find(usage["b2"].own)
    np.testing.assert_array_equal(sel.of(usage["stem"].own), sel.of(usage["b2"].own))
    assert result.model.get_layer("dw").get_weights()[0].shape == (3, 3, 8, 1)
    assert result.model.get_layer("sep").get_weights()[1].shape == (1, 1, 16, 4)  # 8 channels x multiplier 2
    assert result.model.get_layer("mix").get_weights()[0].shape == (1, 1, 4 + 8, 5)  # the concatenation
    assert result.model.get_layer("fc").get_weights()[0].shape == (4 * 4 * 5, 3)  # Flatten: 4x4 positions
    assert_equivalent(keras, residual_cnn, result, images)


def test_exact_parameter_count_and_profile_match_the_config_only_prediction(keras, residual_cnn):
    from kmemopt.load.build import build_from_config
    from kmemopt.profiling.static import profile_model

    result = prune_channels(residual_cnn, 0.5, batch_size=None)
    config = pruned_model_config(keras.saving.serialize_keras_object(residual_cnn), 0.5)
    predicted = build_from_config(config)
    # Worked by hand: stem 3*3*3*8+8, 3 BN of 4*8 / 4*6, b1 3*3*8*6+6, b2 3*3*6*8+8, dw 9*8+8,
    # sep 9*8*2 + 16*4 + 4, mix 12*5+5, fc 80*3+3, out 3*4+4.
    expected = (224 + 32) + (438 + 24) + (440 + 32) + 80 + 212 + 65 + 243 + 16
    assert result.model.count_params() == expected == predicted.count_params()
    p_pred = profile_model(predicted, batch_size=8).totals
    p_real = profile_model(result.model, batch_size=8).totals
    assert (p_pred.params, p_pred.inference_peak_bytes, p_pred.training_peak_bytes) == (
        p_real.params,
        p_real.inference_peak_bytes,
        p_real.training_peak_bytes,
    )


def test_zero_percent_is_an_exact_identity(keras, residual_cnn, images):
    result = prune_channels(residual_cnn, 0.0, batch_size=None)
    assert result.model.count_params() == residual_cnn.count_params()
    assert np.array_equal(result.model.predict(images, verbose=0), residual_cnn.predict(images, verbose=0))


def test_pruned_model_reloads_with_plain_keras(keras, residual_cnn, images, tmp_path):
    result = prune_channels(residual_cnn, 0.5, batch_size=None)
    path = tmp_path / "pruned.keras"
    result.model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    assert {type(layer).__module__.split(".")[0] for layer in reloaded.layers} == {"keras"}
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), result.model.predict(images, verbose=0))


def test_report_prices_both_models_with_the_static_profile(keras, residual_cnn):
    from kmemopt.profiling.static import profile_model

    result = prune_channels(residual_cnn, 0.5, batch_size=16)
    report = result.report
    after = profile_model(result.model, batch_size=16).totals
    assert report.before.params == residual_cnn.count_params()
    assert (report.after.params, report.after.training_peak_bytes) == (after.params, after.training_peak_bytes)
    assert report.after.inference_peak_bytes < report.before.inference_peak_bytes
    from kmemopt.profiling.flops import model_flops

    flops = report.to_dict()["flops"]
    assert (flops["before"], flops["after"]) == (model_flops(residual_cnn).total, model_flops(result.model).total)
    assert flops["after"] < flops["before"] and flops["not_counted"] == []
    assert sum(row["after"] or 0 for row in flops["layers"]) == flops["after"]


def test_importance_keeps_the_largest_filters(keras):
    L = keras.layers
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(2, name="out")(L.Dense(4, name="h")(inp)))
    kernel = np.zeros((5, 4), "float32")
    kernel[:, 1], kernel[:, 3] = 2.0, -3.0  # columns 1 and 3 are the large ones
    model.get_layer("h").set_weights([kernel, np.zeros(4, "float32")])
    result = prune_channels(model, 0.5, batch_size=None)
    np.testing.assert_array_equal(result.selection.of(result.selection.analysis.usage["h"].own), [1, 3])


def test_activation_importance_needs_data_and_uses_it(keras, residual_cnn, images):
    from kmemopt.errors import UsageError

    with pytest.raises(UsageError, match="needs input data"):
        prune_channels(residual_cnn, 0.5, criterion="activation", batch_size=None)
    result = prune_channels(residual_cnn, 0.5, criterion="activation", data=images, batch_size=None)
    assert widths(result)[("stem", "filters")] == (16, 8)
    assert_equivalent(keras, residual_cnn, result, images)


def test_global_ranking_keeps_a_floor_and_removes_the_asked_fraction(keras, residual_cnn, images):
    result = prune_channels(residual_cnn, Amount(0.5, Ranking.global_, floor=0.25), batch_size=None)
    analysis = result.selection.analysis
    groups = [g for g in analysis.prunable()]
    sizes = sum(analysis.groups.size[g] for g in groups)
    kept = sum(result.selection.width(g) for g in groups)
    assert sizes - kept == round(0.5 * sizes)
    for g in groups:
        assert result.selection.width(g) >= max(1, -(-analysis.groups.size[g] // 4))
    assert_equivalent(keras, residual_cnn, result, images)


def test_round_to_multiples_of_8(keras, residual_cnn):
    result = prune_channels(residual_cnn, Amount(0.5, round_to=8), batch_size=None)
    w = widths(result)
    assert w[("stem", "filters")] == (16, 8)
    assert w[("b1", "filters")] == (12, 8)  # 6 rounds up to 8
    assert w[("fc", "units")] == (6, 6)  # never above the original width


def test_attention_loses_whole_heads(keras):
    keras.utils.set_random_seed(2)
    L = keras.layers
    tokens = keras.Input((6, 8), name="seq")
    h = L.Dense(16, name="proj")(tokens)
    att = L.MultiHeadAttention(4, 4, name="mha")(h, h)
    h = L.Add(name="res")([h, att])
    h = L.Dense(12, activation="relu", name="ffn")(h)
    model = keras.Model(tokens, L.Dense(3, name="out")(L.GlobalAveragePooling1D()(h)))
    x = np.random.default_rng(3).normal(size=(4, 6, 8)).astype("float32")
    result = prune_channels(model, 0.5, batch_size=None)
    w = widths(result)
    assert w[("mha", "heads")] == (4, 2)
    assert w[("proj", "units")] == (16, 8)
    mha = result.model.get_layer("mha")
    assert [tuple(v.shape) for v in mha.weights][:2] == [(8, 2, 4), (2, 4)]
    assert tuple(mha.weights[-2].shape) == (2, 4, 8)
    assert_equivalent(keras, model, result, x)


def test_sequential_rnn_and_embedding(keras):
    keras.utils.set_random_seed(3)
    L = keras.layers
    for rnn in (L.LSTM(8, return_sequences=True, name="rnn"), L.GRU(8, name="rnn"), L.SimpleRNN(8, name="rnn")):
        model = keras.Sequential(
            [keras.Input((5,), dtype="int32"), L.Embedding(20, 6, name="emb"), rnn, L.Flatten(), L.Dense(2, name="out")]
        )
        x = np.random.default_rng(0).integers(0, 20, (3, 5)).astype("int32")
        result = prune_channels(model, 0.5, batch_size=None)
        w = widths(result)
        assert (w[("emb", "output_dim")], w[("rnn", "units")]) == ((6, 3), (8, 4))
        assert_equivalent(keras, model, result, x)


@pytest.fixture(scope="module")
def custom_layer_class(keras):
    @keras.saving.register_keras_serializable(package="kmemopt_test")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    return Doubler


def test_unknown_layer_and_its_channels_are_left_alone(keras, custom_layer_class, images):
    L = keras.layers
    inp = keras.Input((12, 12, 3))
    a = L.Conv2D(8, 3, name="a")(inp)
    b = L.Conv2D(8, 3, name="b")(custom_layer_class(name="odd")(a))
    model = keras.Model(inp, L.Dense(2, name="out")(L.GlobalMaxPooling2D()(b)))
    result = prune_channels(model, 0.5, batch_size=None)
    w = widths(result)
    assert w[("a", "filters")] == (8, 8)
    assert w[("b", "filters")] == (8, 4)
    kept = {row.layer: row.kept_because for row in result.report.layers}
    assert "Doubler" in kept["a"] and "odd" in kept["a"]
    assert [(name, cls) for name, cls, _ in result.report.left_alone] == [("odd", "Doubler")]
    assert_equivalent(keras, model, result, images)


def test_channels_that_cannot_be_followed_keep_their_width(keras, images):
    L = keras.layers
    inp = keras.Input((12, 12, 3))
    a = L.Conv2D(8, 3, name="a")(inp)
    r = L.Reshape((10, 80), name="mixing")(a)  # channels and positions mixed: not followed
    model = keras.Model(inp, L.Dense(2, name="out")(L.Flatten()(r)))
    result = prune_channels(model, 0.5, batch_size=None)
    assert widths(result)[("a", "filters")] == (8, 8)
    assert np.array_equal(result.model.predict(images, verbose=0), model.predict(images, verbose=0))


def test_transposed_and_1d_convolutions(keras):
    keras.utils.set_random_seed(4)
    L = keras.layers
    img = keras.Input((6, 6, 2), name="img")
    up = L.Conv2DTranspose(6, 3, strides=2, padding="same", name="up")(L.Conv2D(8, 3, name="down")(img))
    a = L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="mix")(up))
    seq = keras.Input((10, 3), name="seq")
    b = L.GlobalMaxPooling1D()(L.Conv1D(6, 3, name="c1b")(L.Conv1D(10, 3, name="c1a")(seq)))
    model = keras.Model([img, seq], L.Dense(2, name="out")(L.Concatenate()([a, b])))
    rng = np.random.default_rng(5)
    x = [rng.random((3, 6, 6, 2)).astype("float32"), rng.random((3, 10, 3)).astype("float32")]
    result = prune_channels(model, 0.5, batch_size=None)
    w = widths(result)
    assert [w[(n, "filters")] for n in ("down", "up", "mix", "c1a", "c1b")] == [(8, 4), (6, 3), (4, 2), (10, 5), (6, 3)]
    assert result.model.get_layer("up").get_weights()[0].shape == (3, 3, 3, 4)  # (k, k, out, in)
    assert_equivalent(keras, model, result, x)


def test_shared_layers_and_nested_models_are_left_whole(keras, nested_shared_model):
    x = np.random.default_rng(6).random((4, 8)).astype("float32")
    result = prune_channels(nested_shared_model, 0.5, batch_size=None)
    left = {name: why for name, _, why in result.report.left_alone}
    assert "shared weights" in left["shared"]
    assert "Sequential" in left["sub"]
    assert result.model.count_params() == nested_shared_model.count_params()
    np.testing.assert_array_equal(result.model.predict(x, verbose=0), nested_shared_model.predict(x, verbose=0))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV2", "ResNet50"])
def test_real_architectures_prune_30_percent(keras, name, tmp_path):
    from kmemopt.load.build import build_from_config

    model = getattr(keras.applications, name)(weights=None, input_shape=(64, 64, 3))
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype("float32")
    result = prune_channels(model, 0.3, batch_size=None)
    predicted = build_from_config(pruned_model_config(keras.saving.serialize_keras_object(model), 0.3))
    assert result.model.count_params() == predicted.count_params() < 0.6 * model.count_params()
    path = tmp_path / f"{name}.keras"
    result.model.save(path)
    out = keras.models.load_model(path).predict(x, verbose=0)
    assert out.shape == (2, 1000) and np.isfinite(out).all()
    assert [r.layer for r in result.report.layers if r.kept_because] == ["predictions"]
    same = prune_channels(model, 0.0, batch_size=None).model
    assert np.array_equal(same.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.fixture(scope="module")
def digits_cnn(keras):
    """A small residual CNN trained briefly on scikit-learn's digits (real data, reproducible)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(inp)))
    r = L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(h))
    h = L.GlobalAveragePooling2D()(L.Conv2D(32, 3, strides=2, activation="relu")(L.Add()([h, r])))
    model = keras.Model(inp, L.Dense(10, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:600], y[:600], epochs=4, batch_size=32, verbose=0)
    return model, x, y


def _kl(p, q):
    p, q = np.clip(p, 1e-7, 1), np.clip(q, 1e-7, 1)
    return float(np.mean(np.sum(p * np.log(p / q), axis=-1)))


@pytest.mark.slow  # trains for epochs; the fast tier keeps finetune's recovery: `make test` runs it
def test_distillation_needs_inputs_only_and_brings_the_student_closer(keras, digits_cnn):
    from kmemopt.passes.channels.recover import recover

    teacher, x, _ = digits_cnn
    before_weights = [w.copy() for w in teacher.get_weights()]
    student = prune_channels(teacher, 0.5, batch_size=None).model
    probe = x[1500:1600]
    ref = teacher.predict(probe, verbose=0)
    gap_before = _kl(ref, student.predict(probe, verbose=0))
    lines = []
    result = recover(student, teacher, x[:1200], mode="distill", epochs=4, progress=lines.append)
    gap_after = _kl(ref, student.predict(probe, verbose=0))
    assert gap_after < 0.7 * gap_before  # measured: 0.0250 -> 0.0132
    assert result.history[-1]["distillation_loss"] < result.history[0]["distillation_loss"]
    assert result.method.startswith("keras.distillation.Distiller, kl_divergence")
    assert result.epochs_run == len(result.history) == len(lines) <= 4
    assert lines[0].startswith("distill epoch 1/4:") and "val_loss" in lines[0]
    assert teacher.trainable  # the Distiller's freeze is undone
    for a, b in zip(before_weights, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_recovery_starts_at_the_rate_the_model_was_trained_with(keras):
    from kmemopt.passes.channels.recover import trained_learning_rate

    L = keras.layers
    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    assert trained_learning_rate(model) == (1e-3, "Adam's default; the model carries no learning rate")
    model.compile(keras.optimizers.Adam(2e-3), "mse")
    rate, source = trained_learning_rate(model)
    assert rate == pytest.approx(2e-3) and source == "the model's optimizer"
    schedule = keras.optimizers.schedules.ExponentialDecay(5e-3, decay_steps=10, decay_rate=0.5)
    model.compile(keras.optimizers.SGD(schedule), "mse")
    assert trained_learning_rate(model)[0] == pytest.approx(5e-3)  # where the schedule starts
    uncompiled = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    config = {"optimizer": {"class_name": "RMSprop", "config": {"learning_rate": 0.0004}}, "loss": "mse"}
    assert trained_learning_rate(uncompiled, config) == (0.0004, "the model's compile config")


def test_the_plateau_cut_leaves_a_scheduled_rate_alone(keras):
    """A model compiled with a learning-rate schedule (finetune recompiles with it): Keras cannot set
    that rate, so no ReduceLROnPlateau; a plain rate gets one, cutting to at least rate / 100."""
    from kmemopt.passes.channels.recover import plateau_callback

    schedule = keras.optimizers.schedules.ExponentialDecay(5e-3, decay_steps=10, decay_rate=0.5)
    assert plateau_callback(keras, keras.optimizers.SGD(schedule), 6, 5e-3) is None
    cut = plateau_callback(keras, keras.optimizers.Adam(2e-3), 6, 2e-3)
    assert isinstance(cut, keras.callbacks.ReduceLROnPlateau)
    assert (cut.factor, cut.patience, cut.min_lr) == (0.3, 2, pytest.approx(2e-5))


def test_distillation_is_seeded_and_reports_its_rate(keras, digits_cnn):
    """Two recoveries from different global random states give the same weights: the first at the rate
    read from the model (compile("adam"): 1e-3), the second at the same rate given explicitly."""
    from kmemopt.errors import UsageError
    from kmemopt.passes.channels.recover import recover

    teacher, x, _ = digits_cnn
    results, weights = [], []
    for given in (None, 1e-3):
        student = prune_channels(teacher, 0.5, batch_size=None).model
        keras.utils.set_random_seed(len(weights))  # a different global state each time: recover seeds its own
        results.append(recover(student, teacher, x[:256], mode="distill", epochs=1, batch_size=64, learning_rate=given))
        weights.append(student.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
    read, given = results
    assert read.learning_rate == pytest.approx(1e-3) and "Adam at 0.001 (the model's optimizer)" in read.method
    assert given.learning_rate == 1e-3 and "Adam at 0.001 (given)" in given.method
    assert read.to_dict()["learning_rate"] == read.learning_rate
    with pytest.raises(UsageError, match="positive"):
        recover(student, teacher, x[:256], mode="distill", learning_rate=-1.0)


def test_finetune_uses_the_models_compile_config_and_needs_labels(keras, digits_cnn):
    from kmemopt.errors import UsageError
    from kmemopt.passes.channels.recover import recover

    teacher, x, y = digits_cnn
    student = prune_channels(teacher, 0.5, batch_size=None).model
    with pytest.raises(UsageError, match="needs labels"):
        recover(student, teacher, x[:100], mode="finetune")
    result = recover(student, teacher, x[:600], y[:600], mode="finetune", epochs=2)
    assert student.loss == "sparse_categorical_crossentropy"
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    uncompiled = keras.Model.from_config(teacher.get_config())
    with pytest.raises(UsageError, match="without one"):
        recover(student, uncompiled, x[:100], y[:100], mode="finetune")


def test_plan_strategy_prices_the_pruned_widths_from_the_config(keras, residual_cnn):
    from kmemopt.load.build import build_from_config
    from kmemopt.passes.channels.strategy import ChannelPruning
    from kmemopt.plan.strategy import ModelSpec, Strategy
    from kmemopt.profiling.static import profile_model

    strategy = ChannelPruning()
    assert isinstance(strategy, Strategy)
    spec = ModelSpec(
        model_config=keras.saving.serialize_keras_object(residual_cnn), optimizer_config=None, batch_size=8
    )
    settings = list(strategy.settings(spec, "train"))
    assert [s.settings["fraction"] for s in settings] == [0.25, 0.5]
    pruned_spec = strategy.apply(spec, settings[1])
    assert pruned_spec.model_config is not spec.model_config and pruned_spec.extra["channel_pruning"]["fraction"] == 0.5
    predicted = profile_model(build_from_config(dict(pruned_spec.model_config)), batch_size=8).totals
    actual = profile_model(prune_channels(residual_cnn, 0.5, batch_size=None).model, batch_size=8).totals
    assert predicted.params == actual.params
    assert predicted.training_peak_bytes == actual.training_peak_bytes
    assert strategy.cost(spec, settings[1]).accuracy_risk.startswith("not measured; needs recovery training")
    assert "prune_channels(model, 0.5)" in strategy.keras_code(settings[1])


@pytest.fixture(scope="module")
def digits_files(digits_cnn, tmp_path_factory):
    model, x, y = digits_cnn
    folder = tmp_path_factory.mktemp("digits")
    model.save(folder / "digits.keras")
    np.savez(folder / "train.npz", x=x[:600], y=y[:600])
    np.savez(folder / "test.npz", x=x[1500:], y=y[1500:])
    return folder


@pytest.mark.slow
def test_shrink_prunes_first_recovers_then_quantizes(keras, cli, digits_files):
    import json

    out = digits_files / "small.keras"
    result = cli(
        "shrink", digits_files / "digits.keras", "--prune-channels", "50%", "--data", digits_files / "train.npz",
        "--recover", "distill", "--epochs", "2", "--eval-data", digits_files / "test.npz", "--quantize", "int8",
        "-o", out, "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [p["name"] for p in data["passes"]][:3] == ["prune-channels", "strip-optimizer", "quantize"]
    cp = data["channel_pruning"]
    assert cp["criterion"] == "activation" and cp["recovery"]["epochs_run"] <= 2
    assert cp["recovery"]["learning_rate"] == pytest.approx(1e-3)  # the file's Adam, compiled as "adam"
    assert {(r["layer"], r["before"], r["after"]) for r in cp["layers"]} >= {("conv2d", 16, 8), ("conv2d_2", 32, 16)}
    assert data["fidelity"]["samples"] == 297  # --eval-data, not the training data
    assert not any("trained on" in w for w in data["warnings"])
    reloaded = keras.models.load_model(out)
    assert reloaded.get_layer("conv2d").kernel.shape == (3, 3, 1, 8)
    assert data["after"]["param_bytes"] < 0.3 * data["before"]["param_bytes"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--recover", "distill"], "give --prune-channels too"),
        (["--prune-channels", "50%", "--recover", "distill"], "give --data"),
        (["--prune-channels", "1.5"], "--prune-channels takes a fraction"),
        (["--prune-channels", "50%", "--learning-rate", "0.01"], "give --recover distill"),
        (["--prune-channels", "50%", "--recover", "distill", "--learning-rate", "0"], "must be a positive number"),
    ],
)
def test_shrink_channel_usage_errors_exit_2(cli, digits_files, args, message):
    result = cli("shrink", digits_files / "digits.keras", *args, "-o", digits_files / "never.keras")
    assert result.exit_code == 2 and message in result.output
    assert not (digits_files / "never.keras").exists()


@pytest.mark.slow  # a CLI shrink with its reload check; the fast tier keeps the in-process identity checks: `make test` runs it
def test_shrink_zero_percent_changes_nothing(cli, digits_files):
    import json

    out = digits_files / "same.keras"
    result = cli("shrink", digits_files / "digits.keras", "--prune-channels", "0%", "-o", out, "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["fidelity"]["outputs"][0]["max_abs_error"] == 0.0
    assert data["after"]["param_bytes"] == data["before"]["param_bytes"]
    assert data["passes"][0]["applied"] == []
    flops = data["channel_pruning"]["flops"]
    assert flops["before"] == flops["after"] > 0 and flops["not_counted"] == []
    text = cli("shrink", digits_files / "digits.keras", "--prune-channels", "0%", "-o", digits_files / "same2.keras")
    from kmemopt.profiling.flops import format_flops

    shown = format_flops(flops["before"])
    assert f"FLOPs per sample: {shown} → {shown} (1.000x)" in text.output


# --------------------------------------------------------------------------------------------
# --target-params / --target-memory: the smallest amount that reaches a target


@pytest.mark.parametrize("ranking", [Ranking.uniform, Ranking.global_])
def test_target_params_picks_the_smallest_amount_that_reaches_it(keras, residual_cnn, ranking):
    from kmemopt.passes.channels.prune import model_analysis, scores_for
    from kmemopt.passes.channels.select import Criterion
    from kmemopt.passes.channels.target import STEPS, parse_target, search_fraction

    analysis = model_analysis(residual_cnn)
    scores = scores_for(analysis, residual_cnn, Criterion.l1)
    search = search_fraction(analysis, parse_target("params", "0.3x"), ranking=ranking, scores=scores)
    limit = int(0.3 * residual_cnn.count_params())
    assert search.limit == limit and search.original == residual_cnn.count_params()

    def pruned_params(fraction):
        amount = Amount(fraction, ranking)
        return prune_channels(residual_cnn, amount, batch_size=None, scores=scores).model.count_params()

    chosen = pruned_params(search.fraction)
    assert chosen == search.reached <= limit
    one_less = (round(search.fraction * STEPS) - 1) / STEPS
    assert search.one_step_less == (one_less, pruned_params(one_less))
    assert pruned_params(one_less) > limit


def test_target_memory_reaches_the_static_training_peak(keras, residual_cnn):
    from kmemopt.passes.channels.prune import model_analysis
    from kmemopt.passes.channels.target import STEPS, parse_target, search_fraction
    from kmemopt.profiling.static import profile_model

    def peak(fraction):
        model = prune_channels(residual_cnn, fraction, batch_size=None).model
        return profile_model(model, batch_size=8).totals.training_peak_bytes

    analysis = model_analysis(residual_cnn)
    original = profile_model(residual_cnn, batch_size=8).totals.training_peak_bytes
    asked = (original + peak(0.999)) // 2  # the peak holds a fixed runtime part: halfway to the smallest
    search = search_fraction(analysis, parse_target("memory", asked), batch_size=8)
    assert search.original == original and search.limit == asked
    assert peak(search.fraction) == search.reached <= asked
    assert peak((round(search.fraction * STEPS) - 1) / STEPS) > asked
    # The same limit as a multiple of the original's peak finds the same amount, or one step more
    ratio = search_fraction(analysis, parse_target("memory", f"{asked / original:.6f}x"), batch_size=8)
    assert 0 <= round(STEPS * ratio.fraction) - round(STEPS * search.fraction) <= 1


def test_unreachable_target_names_the_closest_reachable_value(keras, residual_cnn):
    from kmemopt.errors import UsageError
    from kmemopt.passes.channels.prune import model_analysis
    from kmemopt.passes.channels.target import parse_target, search_fraction

    smallest = prune_channels(residual_cnn, 0.999, batch_size=None).model.count_params()
    with pytest.raises(UsageError) as err:
        search_fraction(model_analysis(residual_cnn), parse_target("params", "0.01x"))
    assert f"still has {smallest:,} parameters" in str(err.value)


@pytest.mark.slow
def test_shrink_target_params_prunes_once_at_the_found_amount(keras, cli, digits_files):
    import json

    out = digits_files / "target.keras"
    result = cli(
        "shrink", digits_files / "digits.keras", "--target-params", "0.3x", "--prune-scope", "global",
        "--prune-criterion", "bn", "-o", out, "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    cp = data["channel_pruning"]
    target = cp["target"]
    assert cp["criterion"] == "bn" and cp["ranking"] == "global"
    assert target["kind"] == "params" and target["ratio"] == 0.3
    assert target["limit"] == int(0.3 * data["before"]["params"])
    assert keras.models.load_model(out).count_params() == data["after"]["params"] == target["reached"]
    assert target["reached"] <= target["limit"] < target["one_step_less"]["value"]
    assert cp["fraction"] == target["fraction"]
    assert round(1000 * target["fraction"]) == round(1000 * target["one_step_less"]["fraction"]) + 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["--target-params", "0.0001x"], "cannot be reached by channel pruning"),
        (["--target-params", "0.3x", "--prune-channels", "50%"], "give one"),
        (["--target-params", "0.3x", "--target-memory", "1MiB"], "not both"),
        (["--target-params", "3x"], "at most 1x"),
        (["--prune-channels", "50%", "--prune-criterion", "activation"], "give --data"),
        (["--prune-channels", "50%", "--prune-criterion", "gradient"], "give --data"),
        (["--prune-scope", "global"], "give --prune-channels or a --target-* option"),
        (["--prune-criterion", "bn"], "give --prune-channels or a --target-* option"),
    ],
)
def test_shrink_target_and_criterion_usage_errors_exit_2(cli, digits_files, args, message):
    result = cli("shrink", digits_files / "digits.keras", *args, "-o", digits_files / "never.keras")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (digits_files / "never.keras").exists()


def test_gradient_importance_ranks_a_channel_with_zero_outgoing_weights_last(keras):
    from kmemopt.passes.channels.prune import input_batches, model_analysis
    from kmemopt.passes.channels.select import Criterion, gradient_scores, magnitude_scores

    keras.utils.set_random_seed(3)
    L = keras.layers
    inp = keras.Input((6, 6, 2))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h = L.GlobalAveragePooling2D()(L.Conv2D(5, 3, padding="same", activation="relu", name="c2")(h))
    model = keras.Model(inp, L.Dense(3, activation="softmax", name="out")(h))
    c1 = model.get_layer("c1")
    kernel, bias = c1.get_weights()
    kernel[..., 1] *= 10.0  # channel 1 of c1 is the largest by magnitude ...
    c1.set_weights([kernel, bias])
    c2 = model.get_layer("c2")
    k2, b2 = c2.get_weights()
    k2[:, :, 1, :] = 0.0  # ... but nothing downstream reads it
    c2.set_weights([k2, b2])
    x = np.random.default_rng(0).random((40, 6, 6, 2)).astype("float32")
    analysis = model_analysis(model)
    group = analysis.groups.find(analysis.usage["c1"].own)
    scores = gradient_scores(analysis, model, input_batches(x, batch_size=16))[group]
    assert scores[1] == 0.0 and (np.delete(scores, 1) > 0).all()
    assert magnitude_scores(analysis, model, Criterion.l1)[group].argmax() == 1  # magnitude would keep it
    result = prune_channels(model, 0.25, criterion="gradient", data=x, batch_size=None)
    np.testing.assert_array_equal(result.selection.of(analysis.usage["c1"].own), [0, 2, 3])
    np.testing.assert_array_equal(result.model.get_layer("c1").get_weights()[0], kernel[..., [0, 2, 3]])


def test_shrink_gradient_criterion_uses_the_labels_and_the_compile_loss(cli, digits_files):
    import json

    result = cli(
        "shrink", digits_files / "digits.keras", "--prune-channels", "50%", "--prune-criterion", "gradient",
        "--data", digits_files / "train.npz", "--dry-run", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["channel_pruning"]["criterion"] == "gradient"
    assert any("|activation x gradient|" in n for n in data["passes"][0]["notes"])


# --------------------------------------------------------------------------------------------
# --prune-scope sensitivity: each group pruned alone first, sensitive groups lose less


@pytest.fixture(scope="module")
def one_sensitive_layer(keras):
    """`sensitive` feeds the output with weights of scale 1, `robust` with weights of scale 1e-3: pruning
    `robust` alone barely moves the outputs, pruning `sensitive` alone moves them a lot."""
    L = keras.layers
    inp = keras.Input((8,), name="x")
    h = L.Dense(16, activation="relu", name="sensitive")(inp)
    g = L.Dense(16, activation="relu", name="robust")(h)
    model = keras.Model(inp, L.Dense(4, name="out")(L.Concatenate(name="cat")([h, g])), name="two_paths")
    rng = np.random.default_rng(0)
    model.get_layer("sensitive").set_weights([rng.normal(0, 1, (8, 16)), np.full(16, 0.5)])
    model.get_layer("robust").set_weights([rng.normal(0, 1, (16, 16)), np.full(16, 0.5)])
    kernel = np.concatenate([rng.normal(0, 1, (16, 4)), rng.normal(0, 1e-3, (16, 4))])
    model.get_layer("out").set_weights([kernel, np.zeros(4)])
    return model


def test_sensitivity_pass_measures_each_group_alone(keras, one_sensitive_layer):
    from kmemopt.passes import fidelity as fid
    from kmemopt.passes.channels.prune import model_analysis
    from kmemopt.passes.channels.sensitivity import SPREAD, measure_sensitivity

    model = one_sensitive_layer
    analysis = model_analysis(model)
    inputs = fid.load_inputs(model, None, samples=32)
    measured = {m.layers: m for m in measure_sensitivity(analysis, model, 0.5, None, inputs)}
    sensitive, robust = measured[("sensitive",)], measured[("robust",)]
    assert (sensitive.size, sensitive.kept, robust.kept) == (16, 8, 8)
    assert sensitive.relative_l2 > 100 * robust.relative_l2 > 0
    # weights: the mean sensitivity over the group's, clipped to [1/SPREAD, SPREAD]
    assert (sensitive.weight, robust.weight) == (
        pytest.approx((1 + robust.relative_l2 / sensitive.relative_l2) / 2),
        SPREAD,
    )


def test_sensitivity_scope_spends_the_uniform_parameters_where_they_hurt_least(keras, one_sensitive_layer):
    from kmemopt.passes import fidelity as fid
    from kmemopt.passes.channels.step import prune_step
    from kmemopt.passes.pipeline import make_request

    model = one_sensitive_layer
    uniform = prune_step(model, make_request(prune_channels=0.5))
    sens = prune_step(model, make_request(prune_channels=0.5, prune_scope="sensitivity"))
    widths = {r["layer"]: r["after"] for r in sens.info["layers"]}
    assert {r["layer"]: r["after"] for r in uniform.info["layers"]} == {"sensitive": 8, "robust": 8, "out": 4}
    assert widths["sensitive"] > 8 and widths["robust"] < 8
    assert sens.model.count_params() <= uniform.model.count_params() == 212  # the same parameter target
    assert any("uniform 50% would" in note for note in sens.result.notes)
    from kmemopt.report.shrink import channel_summary

    shown = [line for line in channel_summary(sens.info) if line.startswith("Sensitivity")]
    assert len(shown) == 1 and shown[0].index("sensitive ") < shown[0].index("robust ")
    assert sens.info["ranking"] == "sensitivity"
    assert [(row["layers"], row["size"]) for row in sens.info["sensitivity"]] == [(["sensitive"], 16), (["robust"], 16)]
    x = fid.load_inputs(model, None, samples=64, seed=1).feed()
    ref = model.predict(x, verbose=0)

    def error(m):
        return float(np.linalg.norm(m.predict(x, verbose=0) - ref) / np.linalg.norm(ref))

    assert error(sens.model) < error(uniform.model)


@pytest.mark.slow
def test_shrink_sensitivity_scope_through_the_cli(keras, cli, digits_files):
    import json

    args = ("shrink", digits_files / "digits.keras", "--prune-channels", "50%", "--data", digits_files / "train.npz")
    uniform = json.loads(cli(*args, "-o", digits_files / "u.keras", "--format", "json").stdout)["channel_pruning"]
    result = cli(*args, "--prune-scope", "sensitivity", "-o", digits_files / "s.keras", "--format", "json")
    assert result.exit_code == 0, result.output
    cp = json.loads(result.stdout)["channel_pruning"]
    assert cp["ranking"] == "sensitivity" and uniform["sensitivity"] is None
    probed = {layer for row in cp["sensitivity"] for layer in row["layers"]}
    assert probed == {r["layer"] for r in uniform["layers"] if r["after"] < r["before"]}
    assert all(row["kept_at_probe"] == (row["size"] + 1) // 2 and row["relative_l2"] > 0 for row in cp["sensitivity"])
    assert cp["after"]["params"] <= uniform["after"]["params"]
