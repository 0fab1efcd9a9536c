"""kmemopt plan: every strategy priced by the static profile on the rebuilt model, and the search."""

from __future__ import annotations

import math

import pytest


@pytest.fixture(scope="module")
def cnn_path(keras, models_dir):
    L = keras.layers
    i = keras.Input((16, 16, 3), name="img")
    x = L.Conv2D(8, 3, activation="relu", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Conv2D(16, 3, activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(32, activation="gelu", name="d1")(x)
    o = L.Dense(10, activation="softmax", name="out")(x)
    model = keras.Model(i, o, name="plan_cnn")
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    path = models_dir / "plan_cnn.keras"
    model.save(path)
    return path


def _plan(path, **kw):
    from kmemopt.plan.planner import plan
    from kmemopt.plan.request import make_request

    return plan(path, make_request(**kw))


def _rows(result, name):
    return [r for r in result.strategies if r.setting.strategy == name]


def test_baseline_is_the_static_profile(cnn_path):
    from kmemopt import api

    profile = api.profile(cnn_path, batch_size=16)
    result = _plan(cnn_path, budget=10**12, batch_size=16)
    assert result.baseline_training_peak_bytes == profile.totals.training_peak_bytes
    assert result.baseline_inference_peak_bytes == profile.totals.inference_peak_bytes
    # The planner's own pricing of the unchanged spec is the same estimator: the same number.
    assert result.baseline_priced.peak_bytes == profile.totals.training_peak_bytes
    assert result.baseline_fits


def test_each_strategy_equals_the_profile_of_the_changed_model(keras, cnn_path):
    """A strategy's predicted peak is the static profile of the model built with that change."""
    from kmemopt import api
    from kmemopt.load.build import make_optimizer

    result = _plan(cnn_path, budget=10**12, batch_size=16)
    sgd = next(r for r in _rows(result, "optimizer") if r.setting.settings["class_name"] == "SGD")
    profile = api.profile(
        cnn_path,
        batch_size=16,
        optimizer=make_optimizer({"module": "keras.optimizers", "class_name": "SGD", "config": {"momentum": 0.9}}),
    )
    assert sgd.predicted.peak_bytes == profile.totals.training_peak_bytes
    assert sgd.predicted.optimizer_bytes == profile.totals.optimizer_bytes

    b4 = next(
        r
        for r in _rows(result, "batch_size")
        if r.setting.settings == {"batch_size": 4, "gradient_accumulation_steps": None}
    )
    assert b4.predicted.peak_bytes == api.profile(cnn_path, batch_size=4).totals.training_peak_bytes

    # Accumulation: Keras's accumulators (one per trainable variable, its shape and dtype) are counted.
    acc = next(
        r
        for r in _rows(result, "batch_size")
        if r.setting.settings == {"batch_size": 4, "gradient_accumulation_steps": 4}
    )
    assert acc.predicted.optimizer_bytes - b4.predicted.optimizer_bytes == b4.predicted.gradient_bytes


def test_mixed_precision_halves_activations_keeps_float32_weights(cnn_path):
    result = _plan(cnn_path, budget=10**12, batch_size=16)
    base = result.baseline_priced
    mixed = next(r for r in _rows(result, "mixed_precision") if r.setting.settings["policy"] == "mixed_bfloat16")
    assert mixed.predicted.param_bytes == base.param_bytes  # float32 master weights
    assert mixed.predicted.gradient_bytes == base.gradient_bytes
    assert mixed.predicted.activation_bytes < base.activation_bytes
    assert "mixed_precision_weight_copies" in mixed.predicted.estimated_terms


def test_freezing_drops_gradients_slots_and_activations_below(keras, cnn_path):
    result = _plan(cnn_path, budget=10**12, batch_size=16, freeze="^(c1|bn1|c2)$")
    (row,) = _rows(result, "freeze")
    base = result.baseline_priced
    frozen_params = 3 * 3 * 3 * 8 + 8 + 2 * 8 + 3 * 3 * 8 * 16 + 16  # c1, bn1 gamma/beta, c2
    assert row.setting.settings["frozen_params"] == frozen_params
    assert base.gradient_bytes - row.predicted.gradient_bytes == 4 * frozen_params
    assert base.optimizer_bytes - row.predicted.optimizer_bytes == 2 * 4 * frozen_params  # Adam: m and v
    # Nothing below d1 is recorded by the tape: the conv activations are no longer kept.
    assert row.predicted.activation_bytes < base.activation_bytes / 4


def test_lora_trains_adapters_only(keras, cnn_path):
    result = _plan(cnn_path, budget=10**12, batch_size=16, only=["lora"])
    r8 = next(r for r in result.strategies if r.setting.settings["rank"] == 8)
    base = result.baseline_priced
    # d1 (32 -> 32 after GAP of 16 channels: kernel 16x32) and out (32x10) get adapters; kernels freeze.
    adapters = 8 * (16 + 32) + 8 * (32 + 10)
    kernels = 16 * 32 + 32 * 10
    assert r8.predicted.param_bytes - base.param_bytes == 4 * adapters
    assert base.gradient_bytes - r8.predicted.gradient_bytes == 4 * (kernels - adapters)


def test_composed_pricing_equals_the_whole_walk(cnn_path):
    """The search prices a combination from terms cached per variant (trained variables per freezing,
    backward lines per freezing and remat, optimizer state, runtime); each price must equal the whole
    walk over a freshly built variant, whatever was priced before it."""
    import copy

    from kmemopt.api import open_checked
    from kmemopt.plan.planner import _optimizer_config
    from kmemopt.plan.pricing import Pricer, optimizer_identifier, training_breakdown
    from kmemopt.plan.strategy import ModelSpec
    from kmemopt.profiling.optimizer import optimizer_state

    model_file, model, _ = open_checked(cnn_path)
    config = copy.deepcopy(model_file.config)
    config.pop("compile_config", None)
    base = ModelSpec(model_config=config, optimizer_config=_optimizer_config("adam"), batch_size=16)
    sgd = {"module": "keras.optimizers", "class_name": "SGD", "config": {"momentum": 0.9}}
    low = ("^(c1|bn1)$",)
    specs = [
        base,
        base.with_changes(batch_size=4, gradient_accumulation_steps=4),
        base.with_changes(frozen=low),
        base.with_changes(remat="activations"),
        base.with_changes(frozen=low, remat="activations", batch_size=8, gradient_accumulation_steps=2),
        base.with_changes(
            dtype_policy="mixed_bfloat16", frozen=low, remat="activations", batch_size=4, gradient_accumulation_steps=4
        ),  # fmt: skip
        base.with_changes(
            dtype_policy="mixed_float16",
            optimizer_config=sgd,
            frozen=("^c2$",),
            batch_size=2,
            gradient_accumulation_steps=8,
        ),  # fmt: skip
        base.with_changes(dtype_policy="mixed_bfloat16", batch_size=32),
    ]
    pricer = Pricer()
    pricer.seed(base, model)
    composed = [pricer.price(spec, "train") for spec in specs]
    again = [pricer.price(spec, "train") for spec in reversed(specs)][::-1]  # every term from the caches
    assert again == composed
    assert pricer.builds == 2  # the two mixed policies; the rest composes on the seeded variant
    for spec, fast in zip(specs, composed):
        fresh = Pricer().variant(spec)
        ident = optimizer_identifier(spec.optimizer_config, spec.gradient_accumulation_steps)
        opt = optimizer_state(ident, fresh.model, mixed_float16=(spec.dtype_policy == "mixed_float16") or None)
        assert fast == training_breakdown(fresh, spec, opt), spec
    assert len({b.peak_bytes for b in composed}) == len(specs)  # eight different steps, not one number


def test_search_picks_the_cheapest_that_fits(cnn_path):
    first = _plan(cnn_path, budget=10**12, batch_size=32)
    half = next(r for r in _rows(first, "batch_size") if r.setting.label == "batch 16 x 2 accumulation steps")
    assert half.saving_bytes > 0
    result = _plan(cnn_path, budget=half.predicted.peak_bytes, batch_size=32)
    assert result.plan is not None and result.plan.fits
    assert result.plan.predicted.peak_bytes <= result.budget_bytes
    # Gradient accumulation at half the batch is a compute-only change and fits here: nothing dearer is chosen.
    labels = [s.label for s in result.plan.settings]
    assert labels == ["batch 16 x 2 accumulation steps"]
    assert "gradient_accumulation_steps=2" in result.plan.keras_code
    assert "batch_size=16" in result.plan.keras_code
    assert result.plan.command.startswith("kmemopt plan ")


def test_no_fit_says_so_and_gives_the_closest(cnn_path):
    result = _plan(cnn_path, budget=1024, batch_size=16)
    assert result.plan is not None and not result.plan.fits
    assert any("No combination fits" in n for n in result.notes)
    closest = min(r.predicted.peak_bytes for r in result.strategies)
    assert result.plan.predicted.peak_bytes <= closest


def test_json_schema_fields(cnn_path):
    d = _plan(cnn_path, budget="1GiB", batch_size=8).to_dict()
    assert set(d["baseline"]) >= {"inference_peak_bytes", "training_peak_bytes", "fits"}
    assert d["budget_bytes"] == 2**30 and d["batch_size"] == 8 and d["phase"] == "train"
    row = d["strategies"][0]
    assert set(row) >= {"name", "settings", "predicted_peak_bytes", "saving_bytes", "cost", "applies_to_file"}
    assert set(d["plan"]) >= {"strategies", "predicted_peak_bytes", "fits", "keras_code", "command"}
    assert d["measured"] is None and d["output"] is None


def test_inference_phase_prices_weight_dtypes(cnn_path):
    result = _plan(cnn_path, budget=10**12, batch_size=8, phase="infer")
    names = {r.setting.strategy for r in result.strategies}
    # channel pruning (kmemopt.passes.channels) is a strategy for inference too: it shrinks the weights
    assert names == {"batch_size", "mixed_precision", "weight_dtype", "channel_pruning"}
    int8 = next(r for r in _rows(result, "weight_dtype") if r.setting.settings["weights"] == "int8")
    # Keras int8: Dense kernels in one byte plus a float32 scale per output unit; the rest unchanged.
    base = result.baseline_priced
    kernels = 16 * 32 + 32 * 10
    assert base.param_bytes - int8.predicted.param_bytes == 4 * kernels - (kernels + 4 * (32 + 10))


def test_bad_arguments_are_usage_errors(cnn_path):
    from kmemopt.errors import UsageError

    with pytest.raises(UsageError):
        _plan(cnn_path, budget="8GiB", phase="eval")
    with pytest.raises(UsageError):
        _plan(cnn_path, budget="8GiB", freeze="(")
    with pytest.raises(UsageError):
        _plan(cnn_path, budget="8GiB", only=["nope"])


@pytest.mark.slow
def test_declared_7b_model_plans_in_under_a_minute(keras, tmp_path):
    import time

    from factories import write_declared_model

    from kmemopt.keras_compat.variables import unallocated

    L = keras.layers
    with unallocated():
        tok = keras.Input((2048,), dtype="int32", name="tokens")
        x = L.Embedding(32000, 4096, name="embed")(tok)
        for i in range(32):
            h = L.Dense(3 * 4096, name=f"qkv_{i}")(L.LayerNormalization(name=f"ln1_{i}")(x))
            x = L.Add(name=f"r1_{i}")([x, L.Dense(4096, name=f"o_{i}")(h)])
            h = L.Dense(16384, activation="gelu", name=f"up_{i}")(L.LayerNormalization(name=f"ln2_{i}")(x))
            x = L.Add(name=f"r2_{i}")([x, L.Dense(4096, name=f"down_{i}")(h)])
        model = keras.Model(tok, L.Dense(32000, name="head")(x), name="declared_llm")
    path = write_declared_model(tmp_path / "llm.keras", model)
    started = time.perf_counter()
    result = _plan(path, budget="80GiB", batch_size=1)
    assert time.perf_counter() - started < 60
    assert math.isclose(model.count_params(), 7.78e9, rel_tol=0.01)
    assert result.plan is not None and result.plan.fits
