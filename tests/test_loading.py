"""kmemopt's in-place `.keras` loader gives the model `keras.models.load_model` gives, bit for bit."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kmemopt.api import load_model
from kmemopt.keras_compat.saving import load_stored_keras

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _assert_same(ours, theirs) -> None:
    assert type(ours) is type(theirs)
    assert [v.path for v in ours.weights] == [v.path for v in theirs.weights]
    a, b = ours.get_weights(), theirs.get_weights()
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bit for bit


def _both(keras, path: Path, compile: bool = False):
    ours = load_stored_keras(path, custom_objects=None, compile=compile)
    assert ours is not None, "a stored weights member should take the in-place path"
    return ours, keras.models.load_model(path, compile=compile, safe_mode=True)


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.keras")))
def test_sample_models_match_keras(keras, name):
    _assert_same(*_both(keras, SAMPLES / name))


def test_nested_shared_model_matches_keras(keras, nested_path):
    ours, theirs = _both(keras, nested_path)
    _assert_same(ours, theirs)
    assert ours.get_layer("sub").get_layer("b").kernel.path == theirs.get_layer("sub").get_layer("b").kernel.path


def test_compiled_model_with_optimizer_state_matches_keras(keras, mlp_path):
    ours, theirs = _both(keras, mlp_path, compile=True)
    _assert_same(ours, theirs)
    assert ours.optimizer is not None and theirs.optimizer is not None
    mine = {v.path: np.asarray(v) for v in ours.optimizer.variables}
    ref = {v.path: np.asarray(v) for v in theirs.optimizer.variables}
    assert mine.keys() == ref.keys()
    assert int(ours.optimizer.iterations.numpy()) == int(theirs.optimizer.iterations.numpy()) > 0
    for key, value in ref.items():
        assert mine[key].tobytes() == value.tobytes(), key


def test_int8_quantized_file_matches_keras(keras, mlp_model, tmp_path):
    import warnings

    model = keras.models.clone_model(mlp_model)
    model.set_weights(mlp_model.get_weights())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.quantize("int8")
    path = tmp_path / "int8.keras"
    model.save(path)
    ours, theirs = _both(keras, path)
    _assert_same(ours, theirs)
    assert any(w.dtype == np.int8 for w in ours.get_weights())


def _deflated(source: Path, target: Path) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return target


def test_deflated_member_is_inflated_to_a_temp_file_and_matches_keras(keras, nested_path, tmp_path, monkeypatch):
    import tempfile

    from kmemopt.keras_compat import saving as loading

    deflated = _deflated(nested_path, tmp_path / "deflated.keras")
    inflated = []
    real = tempfile.TemporaryFile

    def recording(*args, **kwargs):
        f = real(*args, **kwargs)
        inflated.append(f)
        return f

    monkeypatch.setattr(loading.tempfile, "TemporaryFile", recording)
    ours = load_stored_keras(deflated, custom_objects=None, compile=False)
    assert ours is not None and len(inflated) == 1 and inflated[0].closed  # inflated once, then freed
    _assert_same(ours, keras.models.load_model(deflated, compile=False))
    _assert_same(load_model(deflated), keras.models.load_model(deflated, compile=False))


def test_deflated_member_without_room_to_inflate_falls_back_to_keras(keras, nested_path, tmp_path, monkeypatch):
    from kmemopt.keras_compat import saving as loading

    deflated = _deflated(nested_path, tmp_path / "deflated.keras")
    monkeypatch.setattr(loading, "INFLATE_HEADROOM_BYTES", 2**62)  # no temp folder is that free
    assert load_stored_keras(deflated, custom_objects=None, compile=False) is None
    _assert_same(load_model(deflated), keras.models.load_model(deflated, compile=False))


def test_api_load_model_matches_keras(keras, mlp_path):
    _assert_same(load_model(mlp_path, compile=True), keras.models.load_model(mlp_path, compile=True))


def test_weights_that_do_not_fit_the_config_fail_as_in_keras(keras, nested_path, tmp_path):
    """A weights member from another model: Keras's own loading-failure error, not a silent partial load."""
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5, name="shared")], name="nested")
    other_path = tmp_path / "other.keras"
    other.save(other_path)
    mixed = tmp_path / "mixed.keras"
    with zipfile.ZipFile(nested_path) as a, zipfile.ZipFile(other_path) as b, zipfile.ZipFile(mixed, "w") as dst:
        for info in a.infolist():
            source = b if info.filename == "model.weights.h5" else a
            dst.writestr(info.filename, source.read(info.filename))
    with pytest.raises(Exception) as keras_error:
        keras.models.load_model(mixed, compile=False)
    with pytest.raises(type(keras_error.value)):
        load_stored_keras(mixed, custom_objects=None, compile=False)


def test_save_container_writes_weights_through_a_temp_file_not_memory(keras, nested_path, tmp_path, monkeypatch):
    """shrink's writer keeps Keras off its in-memory weights copy, even into an unnamed temp output."""
    from keras.src.saving import saving_lib

    from kmemopt.write.fileio import atomic_path
    from kmemopt.write.save import save_container

    model = keras.models.load_model(nested_path, compile=False)
    stores = []
    keras_own = saving_lib.is_memory_sufficient
    original = saving_lib.H5IOStore.__init__

    def spy(self, path_or_io, archive=None, mode="r"):
        stores.append((str(path_or_io), archive is not None, mode))
        original(self, path_or_io, archive=archive, mode=mode)

    monkeypatch.setattr(saving_lib.H5IOStore, "__init__", spy)
    out = tmp_path / "out" / "slim.keras"
    out.parent.mkdir()
    with atomic_path(out) as tmp:
        save_container(model, tmp, compress=False)
    writes = [s for s in stores if s[2] == "w"]
    assert len(writes) == 1
    import tempfile

    # A file on disk (not the in-memory archive), in the system temp folder: a killed shrink must not
    # leave Keras's named temp file in the user's output folder.
    assert writes[0][1] is False and writes[0][0].startswith(tempfile.gettempdir())
    assert str(out.parent) not in writes[0][0]
    assert sorted(p.name for p in out.parent.iterdir()) == ["slim.keras"]  # and nothing left behind
    assert saving_lib.is_memory_sufficient is keras_own  # Keras's own function is back
    _assert_same(keras.models.load_model(out, compile=False), model)


def test_weights_read_straight_into_their_variables_match_keras(keras, monkeypatch, nested_path, mlp_path):
    """Datasets read straight into the variables' own buffers (forced for every size here) give Keras's
    model, bit for bit."""
    from kmemopt.keras_compat import saving as loading

    monkeypatch.setattr(loading, "LAZY_FROM_BYTES", 0)
    seen = []
    real = loading.LazyDataset.read_into

    def counted(self, out):
        seen.append(self.shape)
        return real(self, out)

    monkeypatch.setattr(loading.LazyDataset, "read_into", counted)
    for path in (nested_path, mlp_path, SAMPLES / "digits_cnn.keras"):
        _assert_same(*_both(keras, path))
    assert seen, "the direct path should have been taken"


def test_the_non_lean_load_is_keras_own_allocation_with_the_same_weights(keras, mlp_path, monkeypatch):
    """`lean=False` (what --measure uses) builds allocated and assigns through Keras's own path."""
    from kmemopt.keras_compat import variables as build

    def never(*args, **kwargs):
        raise AssertionError("lean machinery used by a non-lean load")

    monkeypatch.setattr(build, "_adopt_buffer", never)
    ours = load_stored_keras(mlp_path, custom_objects=None, compile=False, lean=False)
    _assert_same(ours, keras.models.load_model(mlp_path, compile=False))


def test_a_never_built_model_loads_as_with_keras(keras, tmp_path):
    """Saved before it was built (no input shape, no weights): loads; profiling it is what needs a shape."""
    from kmemopt.errors import MalformedModelError

    model = keras.Sequential([keras.layers.Dense(3, name="d")], name="unbuilt")
    path = tmp_path / "unbuilt.keras"
    model.save(path)
    ours, theirs = load_model(path), keras.models.load_model(path, compile=False)
    assert type(ours) is type(theirs) and not ours.built and not ours.weights
    ours.build((None, 4))
    assert [tuple(v.shape) for v in ours.weights] == [(4, 3), (3,)]
    import kmemopt

    with pytest.raises(MalformedModelError, match="never built"):
        kmemopt.profile(path)


def test_a_lazy_dataset_reads_like_the_array_keras_would_get(nested_path):
    import h5py

    from kmemopt.keras_compat import saving as loading

    with zipfile.ZipFile(nested_path) as zf, h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r") as h5:
        datasets = []
        h5.visititems(lambda name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        kernel = next(d for d in datasets if d.ndim == 2)
        lazy, full = loading.LazyDataset(kernel), kernel[()]
        assert lazy.shape == full.shape and lazy.dtype == full.dtype and len(lazy) == len(full)
        assert np.array_equal(np.asarray(lazy), full) and np.array_equal(lazy[1:], full[1:])
        assert lazy.astype("float16").dtype == np.float16


def test_a_keras_hub_backbone_loads_lean_as_keras_loads_it(keras, monkeypatch, tmp_path):
    """keras-hub layers' own load_own_variables see the lazily read datasets (forced for every size)."""
    keras_hub = pytest.importorskip("keras_hub")
    from kmemopt.keras_compat import saving as loading

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=300, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=8
    )
    path = tmp_path / "gpt2.keras"
    backbone.save(path)
    monkeypatch.setattr(loading, "LAZY_FROM_BYTES", 0)
    _assert_same(*_both(keras, path))
