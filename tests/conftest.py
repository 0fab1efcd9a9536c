"""Shared fixtures: tiny real models built once per session, and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


@pytest.fixture(scope="session")
def keras():
    from kmemopt._keras import import_keras

    return import_keras()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mlp_model(keras):
    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="features")
    h = keras.layers.Dense(32, activation="relu", name="hidden")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    out = keras.layers.Dense(4, activation="softmax", name="out")(h)
    return keras.Model(inp, out, name="tiny_mlp")


@pytest.fixture(scope="session")
def mlp_path(keras, mlp_model, models_dir) -> Path:
    import numpy as np

    model = keras.models.clone_model(mlp_model)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.random((32, 16), dtype="float32"), rng.integers(0, 4, 32), epochs=1, verbose=0)
    path = models_dir / "mlp.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def nested_shared_model(keras):
    inp = keras.Input((8,), name="x")
    shared = keras.layers.Dense(8, name="shared")
    sub = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4, name="a"), keras.layers.Dense(3, name="b")], name="sub"
    )
    h = shared(inp)
    h = shared(h)
    return keras.Model(inp, sub(h), name="nested")


@pytest.fixture(scope="session")
def nested_path(nested_shared_model, models_dir) -> Path:
    path = models_dir / "nested.keras"
    nested_shared_model.save(path)
    return path


@pytest.fixture(scope="session")
def text_path(keras, models_dir) -> Path:
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(50, 8, name="embedding")(tokens)
    h = keras.layers.LSTM(6, name="lstm")(h)
    model = keras.Model(tokens, keras.layers.Dense(2, name="out")(h), name="text")
    path = models_dir / "text.keras"
    model.save(path)
    return path


@pytest.fixture()
def cli():
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from kmemopt.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke
