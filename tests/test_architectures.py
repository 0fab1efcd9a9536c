"""Real architectures, built without allocating their weights: counts equal Keras's and FACTS.md's."""

from __future__ import annotations

import pytest

import kmemopt
from kmemopt.keras_compat.variables import unallocated

pytestmark = pytest.mark.slow

# keras.applications(weights=None), 224x224, include_top (FACTS.md, measured with Keras 3.15.1):
# params, trainable params, params x 4 bytes.
REFERENCE = {
    "ResNet50": (25_636_712, 25_583_592, 102_546_848),
    "MobileNetV2": (3_538_984, 3_504_872, 14_155_936),
    "DenseNet121": (8_062_504, 7_978_856, 32_250_016),
    "EfficientNetB0": (5_330_571, 5_288_548, 21_322_284),
}


@pytest.fixture(scope="module", params=sorted(REFERENCE))
def architecture(request, keras):
    with unallocated():
        model = getattr(keras.applications, request.param)(weights=None)
    return request.param, model


def test_counts_match_keras_and_the_reference(architecture, keras):
    name, model = architecture
    params, trainable, float32_bytes = REFERENCE[name]
    r = kmemopt.profile(model, batch_size=8)
    assert r.totals.params == model.count_params() == params
    assert r.totals.trainable_params == trainable
    assert r.totals.non_trainable_params == params - trainable
    # Bytes at the stored dtype: the same architecture allocated for real holds exactly this much.
    real = getattr(keras.applications, name)(weights=None)
    assert r.totals.param_bytes == sum(w.nbytes for w in real.get_weights())
    # EfficientNet's Normalization layer keeps an int64 sample count: 4 bytes over params x 4.
    assert r.totals.param_bytes == float32_bytes + (4 if name.startswith("EfficientNet") else 0)
    assert r.totals.gradient_bytes == trainable * 4
    assert sum(row.param_bytes for row in r.layers) == r.totals.param_bytes
    assert sum(row.activation_bytes for row in r.layers) == r.totals.activation_bytes


def test_resnet50_adam_state_equals_keras(keras):
    with unallocated():
        model = keras.applications.ResNet50(weights=None)
    r = kmemopt.profile(model, batch_size=1, optimizer="adam")
    # FACTS.md: Keras counts 51,167,186 optimizer elements (two float32 slots a trainable weight, an
    # int64 iteration counter and a float32 learning rate).
    assert r.totals.optimizer_bytes == (51_167_186 - 2) * 4 + 8 + 4


def test_declared_file_of_a_real_architecture_profiles_like_the_model(keras, tmp_path):
    from factories import write_declared_model

    with unallocated():
        model = keras.applications.MobileNetV2(weights=None)
    path = write_declared_model(tmp_path / "mobilenet.keras", model)
    from_file = kmemopt.profile(path, batch_size=4)
    in_memory = kmemopt.profile(model, batch_size=4)
    assert from_file.totals == in_memory.totals
    assert from_file.file.weights_declared_bytes == in_memory.totals.param_bytes


def test_keras_hub_backbone_profiles_when_installed(keras, tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    model = keras_hub.models.LlamaBackbone(
        vocabulary_size=100, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32, intermediate_dim=64
    )
    path = tmp_path / "llama.keras"
    model.save(path)
    r = kmemopt.profile(path, batch_size=2, seq_len=16)
    assert r.totals.params == model.count_params()
    assert {row.class_name for row in r.layers} >= {"ReversibleEmbedding", "LlamaTransformerDecoder"}
    assert {i.name for i in r.inputs} == {"token_ids", "padding_mask"}


def test_tracing_never_allocates_declared_weights(keras, tmp_path):
    """A 0.5 B-parameter keras-hub Llama (2 GB of float32 weights, declared but not stored) profiles
    with unknown dimensions filled (so every layer's shape is inferred again, some through TensorFlow's
    scratch-graph tracing) in a child whose peak RSS grows far less than the weights' size."""
    keras_hub = pytest.importorskip("keras_hub")
    import json
    import subprocess
    import sys

    from factories import write_declared_model

    with unallocated():
        llama = keras_hub.models.LlamaBackbone(
            vocabulary_size=32000,
            num_layers=8,
            num_query_heads=16,
            num_key_value_heads=16,
            hidden_dim=2048,
            intermediate_dim=5504,
        )
    weight_bytes = llama.count_params() * 4
    path = write_declared_model(tmp_path / "llama.keras", llama)
    code = (
        "import json, kmemopt, keras_hub\n"
        "from kmemopt._keras import import_keras\n"
        "import_keras()\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1]) * 1024\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # reset the high-water mark after the imports\n"
        "start = status('VmRSS:')\n"
        f"r = kmemopt.profile({str(path)!r}, batch_size=1, seq_len=256)\n"
        "from keras.src.backend.common import global_state\n"
        "print(json.dumps({'params': r.totals.params,\n"
        "  'left': len(global_state.get_global_attribute('uninitialized_variables') or []),\n"
        "  'growth': status('VmHWM:') - start}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["params"] == llama.count_params()
    assert result["left"] == 0  # nothing left for a later stateless scope to initialize
    # Allocating the weights would add 2 GB; profiling adds a few hundred MB of Python objects at most.
    assert result["growth"] < weight_bytes / 4
