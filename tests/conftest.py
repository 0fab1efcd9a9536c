"""Shared fixtures: tiny real models built once per session, and a CLI runner."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------ runs of the CLI in their own processes


def whole_module_runs_here(config: pytest.Config) -> bool:
    """True when every test of a module runs in this process: no pytest-xdist, or xdist handing out whole
    files (`--dist loadfile`, what `make test` uses) or modules (`--dist loadscope`)."""
    return "PYTEST_XDIST_WORKER" not in os.environ or config.getoption("dist", "no") in ("loadfile", "loadscope")


def selected_params(session: pytest.Session, test_name: str) -> list[dict[str, Any]]:
    """The parameters of every selected, not skip-marked, item of the test function `test_name`."""
    return [
        item.callspec.params
        for item in session.items
        if getattr(item, "originalname", None) == test_name
        and hasattr(item, "callspec")
        and item.get_closest_marker("skip") is None
    ]


class RunPool:
    """Independent runs (each a process tree) on a small thread pool, each started once; a test waits
    for its own. Starting a module's runs together overlaps them (TensorFlow's import alone is seconds a
    run), so a corpus file does not keep one xdist worker busy long after the other is done."""

    def __init__(self, start: Callable[..., Any], workers: int | None = None) -> None:
        self._start = start
        self._pool = ThreadPoolExecutor(max_workers=workers or max(2, min(4, os.cpu_count() or 2)))
        self._futures: dict[tuple, Future] = {}

    def submit(self, *key: Any) -> Future:
        if key not in self._futures:
            self._futures[key] = self._pool.submit(self._start, *key)
        return self._futures[key]

    def submit_all(self, keys: Iterable[tuple]) -> None:
        for key in keys:
            self.submit(*key)

    def result(self, *key: Any) -> Any:
        return self.submit(*key).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# The modules that take longest, first: `--dist loadfile` hands whole modules to the workers in collection
# order, and a long module handed out last keeps one worker busy while the other waits.
LONGEST_FIRST = ("test_security.py", "test_hostile_round2.py", "test_measure.py", "test_config_safety.py")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
