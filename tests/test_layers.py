"""kmemopt's int8 convolutions: exact quantization, outputs close to the float layer, save/load, and
registration that needs only `import kmemopt` (which itself never imports Keras)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quantize_per_channel_exact():
    from kmemopt.layers import quantize_per_channel

    kernel = np.array([[1.0, -0.5], [-2.54, 0.25]], dtype=np.float32)  # (in=2, out=2): per column
    q, scale = quantize_per_channel(kernel, (-1,))
    assert scale.shape == (1, 2)
    np.testing.assert_allclose(scale, [[2.54 / 127, 0.5 / 127]], rtol=1e-6)
    np.testing.assert_array_equal(q, [[50, -127], [-127, 64]])
    assert q.dtype == np.int8


def test_zero_channel_gets_unit_scale():
    from kmemopt.layers import quantize_per_channel

    q, scale = quantize_per_channel(np.zeros((3, 3, 2, 4), np.float32), (-1,))
    assert np.all(q == 0) and np.all(scale == 1.0)


CASES = [
    ("Conv1D", dict(filters=4, kernel_size=3, padding="causal"), (10, 3)),
    ("Conv2D", dict(filters=5, kernel_size=3, padding="same"), (8, 8, 3)),
    ("Conv3D", dict(filters=2, kernel_size=2), (4, 4, 4, 2)),
    ("DepthwiseConv2D", dict(kernel_size=3, depth_multiplier=2), (6, 6, 3)),
    ("SeparableConv2D", dict(filters=4, kernel_size=3, depth_multiplier=2), (6, 6, 3)),
    ("Conv2DTranspose", dict(filters=3, kernel_size=3, strides=2), (5, 5, 2)),
]


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=[c[0] for c in CASES])
def test_int8_layer_matches_float_and_round_trips(keras, tmp_path, name, kwargs, shape):
    from kmemopt.layers import INT8_CONV_CLASSES

    keras.utils.set_random_seed(1)
    float_cls = getattr(keras.layers, name)
    int8_cls = INT8_CONV_CLASSES[float_cls]
    inp = keras.Input(shape)
    ref_layer = float_cls(name="conv", **kwargs)
    ref = keras.Model(inp, ref_layer(inp))
    q_layer = int8_cls(name="conv", **kwargs)
    qmodel = keras.Model(inp, q_layer(inp))
    q_layer.set_float_kernels({v.name: v.numpy() for v in ref_layer.weights})

    int8_vars = [v for v in q_layer.weights if v.dtype == "int8"]
    assert int8_vars and all(not v.trainable for v in int8_vars)
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype("float32")
    a, b = ref.predict(x, verbose=0), qmodel.predict(x, verbose=0)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.02  # int8 per-channel: well under 2%

    path = tmp_path / "q.keras"
    qmodel.save(path)
    loaded = keras.models.load_model(path)  # registered at import: no custom_objects needed
    assert type(loaded.get_layer("conv")) is int8_cls
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), b)


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_import_kmemopt_does_not_import_keras():
    proc = _run("import kmemopt, sys; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def custom_layer_file(keras, tmp_path_factory):
    from kmemopt.layers import Int8Conv2D

    inp = keras.Input((6, 6, 1))
    model = keras.Model(inp, Int8Conv2D(2, 3, name="qconv")(inp))
    path = tmp_path_factory.mktemp("layers") / "custom.keras"
    model.save(path)
    return path


def test_import_kmemopt_then_keras_loads_custom_layers(custom_layer_file):
    code = (
        "import kmemopt, sys\n"
        "assert 'keras' not in sys.modules\n"
        "import keras\n"
        f"m = keras.models.load_model({str(custom_layer_file)!r})\n"
        "assert type(m.get_layer('qconv')).__name__ == 'Int8Conv2D'\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_keras_imported_first_then_kmemopt_loads_custom_layers(custom_layer_file):
    proc = _run(f"import keras, kmemopt\nkeras.models.load_model({str(custom_layer_file)!r})\n")
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_plain_keras_without_kmemopt_cannot_load_custom_layers(custom_layer_file):
    proc = _run(f"import keras\nkeras.models.load_model({str(custom_layer_file)!r})\n")
    assert proc.returncode != 0  # the opt-in is real: these files need kmemopt


def test_profile_trusts_kmemopt_layers(custom_layer_file):
    import kmemopt

    result = kmemopt.profile(custom_layer_file)
    row = next(r for r in result.layers if r.name == "qconv")
    # int8 kernel 3*3*1*2 bytes + float32 scale (1,1,1,2) + float32 bias (2,)
    assert row.param_bytes == 18 + 8 + 8
    assert set(row.param_dtypes) == {"int8", "float32"}
