"""The int8-convolution benchmark on trained CNNs (benchmarks/suite_int8conv.py, issue 18): the networks
it trains, the measures it computes, the rows it committed and their section in BENCHMARKS.md."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import run as bench  # noqa: E402
import suite_int8conv as S  # noqa: E402

# Layers with kernels in each network: (convolutions, Dense).
RESNET_KERNELS = (8, 2)  # stem, 2 x block1, 3 x block2 (projection included), 2 x block3; fc, classifier
MOBILENET_KERNELS = (12, 1)  # stem, 3 x (expand, depthwise, project), separable, head; classifier


def _results() -> dict:
    return json.loads((ROOT / "benchmarks" / "results.json").read_text())


def test_the_residual_cnn_is_the_network_described(keras):
    model = S.residual_cnn(keras)
    # stem 3*3*1*32 + BN 4*32; block1 2 x (3*3*32*32 + BN 128); block2 projection 32*64 + BN 256,
    # 3*3*32*64 + BN 256, 3*3*64*64 + BN 256; block3 2 x (3*3*64*64 + BN 256); fc 64*64+64; 64*10+10.
    assert model.count_params() == 416 + 18_688 + 58_112 + 74_240 + 4_160 + 650 == 156_266
    classes = [type(layer).__name__ for layer in model.layers]
    assert classes.count("Conv2D") == RESNET_KERNELS[0] and classes.count("Dense") == RESNET_KERNELS[1]
    assert classes.count("Add") == 3 and classes.count("BatchNormalization") == 8


def test_the_separable_cnn_is_mobilenet_style(keras):
    model = S.separable_cnn(keras)
    # stem 288 + BN 128; ir1 (32->128->32) 4096+512+1152+512+4096+128; ir2 (32->128->64, stride 2)
    # 4096+512+1152+512+8192+256; ir3 (64->256->64) 16384+1024+2304+1024+16384+256; separable 576+6144
    # + BN 384; head 96*256 + BN 1024; classifier 256*10+10.
    assert model.count_params() == 416 + 10_496 + 14_720 + 37_376 + 7_104 + 25_600 + 2_570 == 98_282
    classes = [type(layer).__name__ for layer in model.layers]
    assert classes.count("DepthwiseConv2D") == 3 and classes.count("SeparableConv2D") == 1
    assert classes.count("Conv2D") == 8 and classes.count("Add") == 2  # ir2 changes shape: no shortcut


def test_the_split_is_the_sample_models_one():
    x_tr, x_te, y_tr, y_te = S.digits()
    assert x_tr.shape == (1347, 8, 8, 1) and x_te.shape == (450, 8, 8, 1)
    assert float(x_tr.max()) == 1.0 and float(x_tr.min()) == 0.0
    assert np.bincount(y_te).tolist() == [45, 46, 44, 46, 45, 46, 45, 45, 43, 45]


def test_agreement_and_relative_l2_by_hand():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    new = np.array([[0.8, 0.2], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])
    assert S.agreement(ref, new) == 0.75  # the third sample flips
    # differences 0.1, 0.1, 0.2, 0.2 (squares 0.01+0.01+0.04+0.04 = 0.1); |ref|^2 = 0.81+0.01+0.04+0.64+0.36+0.16+0.09+0.49
    assert S.relative_l2(ref, new) == pytest.approx((0.1 / 2.6) ** 0.5, rel=1e-12)


def test_layer_counts_tell_int8_float16_and_float32_kernels_apart(keras):
    import warnings

    x = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3, name="conv")(x)
    h = keras.layers.DepthwiseConv2D(3, dtype="float16", name="dw")(h)
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Flatten()(h))
    mixed = keras.Model(x, keras.layers.Dense(2, name="out")(h))
    assert S.layer_counts(mixed) == {"int8": 0, "float16": 1, "float32": 2}
    h = keras.layers.Flatten()(keras.layers.Conv2D(3, 3, name="conv")(x))
    model = keras.Model(x, keras.layers.Dense(2, name="out")(h))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.quantize("int8")  # Keras's own: the Dense only
    assert S.layer_counts(model) == {"int8": 1, "float16": 0, "float32": 1}


def test_markdown_rows_are_exact():
    row = {
        "model": "M",
        "method": S.KMEMOPT_CONV,
        "file_bytes": 2048,
        "ratio": 0.25,
        "kernels": {"int8": 3, "float16": 0, "float32": 0},
        "accuracy_before": 0.98,
        "accuracy_after": 0.9755,
        "top1_agreement": 0.99,
        "relative_l2_error": 0.01234,
    }
    text = S.markdown([row])
    assert f"| M | {S.KMEMOPT_CONV} | 2.0 | 0.250x | 3/0/0 | 98.00% → 97.55% | 99.00% | 0.0123 |" in text


def test_committed_rows_cover_both_networks_and_every_method_with_their_stamp():
    results = _results()
    rows = results[S.KEY]
    assert sorted((r["model"], r["method"]) for r in rows) == sorted(
        (model, method) for model, _ in S.MODELS for method in S.METHODS
    )
    for r in rows:
        at = r["measured_at"]
        assert len(at["commit"]) == 40 and at["date"][:4] == "2026" and at["machine"] in results["machines"]
        assert r["test_samples"] == 450
        assert r["ratio"] == r["file_bytes"] / r["reference_bytes"]
        assert 0.0 <= r["top1_agreement"] <= 1.0 and r["relative_l2_error"] >= 0.0


@pytest.mark.parametrize(
    ("model", "kernels"),
    [("digits ResNet-style CNN", RESNET_KERNELS), ("digits MobileNetV2-style CNN", MOBILENET_KERNELS)],
)
def test_each_method_stored_the_kernels_it_claims(model, kernels):
    """Read from the files the run wrote: Keras's int8 quantizes the Dense layers only; kmemopt's portable
    int8 stores the convolutions float16; with its own layers every convolution is int8."""
    convs, dense = kernels
    by = {r["method"]: r["kernels"] for r in _results()[S.KEY] if r["model"] == model}
    assert by[S.REFERENCE] == {"int8": 0, "float16": 0, "float32": convs + dense}
    assert by[S.KERAS_NATIVE] == {"int8": dense, "float16": 0, "float32": convs}
    assert by[S.KMEMOPT_PORTABLE] == {"int8": dense, "float16": convs, "float32": 0}
    assert by[S.KMEMOPT_CONV] == {"int8": convs + dense, "float16": 0, "float32": 0}


def test_benchmarks_md_has_the_section_results_json_renders():
    results = _results()
    rendered = bench.render(results)
    assert f"## {S.TITLE}" in rendered
    section = rendered.split(f"## {S.TITLE}", 1)[1].split("\n## ", 1)[0]
    assert section in (ROOT / "BENCHMARKS.md").read_text()


def test_the_readme_puts_held_out_accuracy_beside_the_trained_int8_convolution_sizes():
    import readme_figures

    stamp = {"commit": "c" * 40, "date": "2026-12-03T20:00:00Z", "machine": "m"}
    shrink = [
        {"model": "ResNet50", "method": "float32 reference (plain Keras, no optimizer)", "ratio": 1.0},
        {"model": "ResNet50", "method": "kmemopt int8 + custom layers", "ratio": 0.26, "measured_at": stamp},
    ]
    trained = [
        {
            "model": "digits ResNet-style CNN",
            "method": S.KMEMOPT_CONV,
            "ratio": 0.3,
            "accuracy_before": 0.99,
            "accuracy_after": 0.98,
            "top1_agreement": 0.985,
            "relative_l2_error": 0.02,
            "test_samples": 450,
            "measured_at": stamp,
        }
    ]
    text = readme_figures.generate({"shrink": shrink, "int8conv": trained})
    assert (
        "  - Convolutional networks trained on real data (scikit-learn's digits; measured 2026-12-03, on commit "
        "`ccccccc`):\n    - digits ResNet-style CNN: int8 with kmemopt's layers 0.300x (accuracy 99.00% -> 98.00%, "
        "98.5% top-1 agreement, relative L2 0.02 on 450 held-out samples)."
    ) in text
