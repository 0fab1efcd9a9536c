"""Files whose bytes say one thing and whose name another, and weights hidden behind HDF5 filters.

kmemopt decides a file's format by its content, refuses a file that is two formats at once
(FORMAT-AMBIGUOUS), and loads exactly the bytes it checked; a weights dataset that declares more than
it stores (unwritten chunks behind a filter, a compression bomb) is refused before anything is
allocated (HDF5-SHAPE-BOMB, HDF5-RATIO).
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kmemopt.errors import KmemoptError, MalformedModelError, UnsafeModelError

CANARY_SRC = "import pathlib; pathlib.Path({marker!r}).write_text('fired')"


@pytest.fixture(scope="module")
def files(tmp_path_factory, keras):
    """A small model saved both ways, plus the pieces the hostile variants are made of."""
    folder = tmp_path_factory.mktemp("formats")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="d1"), keras.layers.Dense(3, name="d2")])
    model.save(folder / "model.keras")
    model.save(folder / "model.h5")
    x = np.random.default_rng(0).random((4, 6), dtype="float32")
    return {"dir": folder, "x": x, "y": np.asarray(model(x))}


def _load(path):
    import kmemopt

    return kmemopt.load_model(path)


# --------------------------------------------------------------------------------------------
# A valid model under the wrong name loads by its content


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("model.keras", "zip_named.h5"),
        ("model.keras", "zip_named.model"),
        ("model.h5", "hdf5_named.keras"),
        ("model.h5", "hdf5_named.bin"),
    ],
)
def test_wrong_suffix_loads_by_content(files, source, name):
    path = files["dir"] / name
    shutil.copy(files["dir"] / source, path)
    model = _load(path)
    np.testing.assert_allclose(np.asarray(model(files["x"])), files["y"], rtol=1e-6)


def test_wrong_suffix_profiles_by_content(files, cli):
    path = files["dir"] / "profile_named.h5"
    shutil.copy(files["dir"] / "model.keras", path)
    result = cli("profile", path, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["params"] == 6 * 5 + 5 + 5 * 3 + 3


# --------------------------------------------------------------------------------------------
# Polyglots: refused, whatever the name


def _lambda_keras(keras, folder: Path, marker: Path) -> bytes:
    """A .keras whose config holds a Lambda with marshalled code that writes `marker` (never loaded here)."""
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="d")])
    path = folder / "payload_src.keras"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(members["config.json"])
    config["config"]["layers"].append(
        {
            "module": "keras.layers",
            "class_name": "Lambda",
            "config": {
                "name": "evil",
                "function": {"class_name": "__lambda__", "config": {"code": "", "defaults": None, "closure": None}},
            },
            "registered_name": None,
            "marker": str(marker),
        }
    )
    members["config.json"] = json.dumps(config).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_hdf5_with_appended_zip_is_refused(files, keras, tmp_path):
    path = tmp_path / "appended.keras"
    path.write_bytes((files["dir"] / "model.h5").read_bytes() + _lambda_keras(keras, tmp_path, tmp_path / "fired"))
    assert zipfile.is_zipfile(path)  # what Keras would read for a .keras name
    before = path.read_bytes()
    with pytest.raises(UnsafeModelError) as info:
        _load(path)
    assert info.value.rule == "FORMAT-AMBIGUOUS"
    assert path.read_bytes() == before
    assert not (tmp_path / "fired").exists()


def test_zip_in_hdf5_user_block_is_refused(files, keras, tmp_path):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    payload = _lambda_keras(keras, tmp_path, tmp_path / "fired")
    block = 1 << max(9, (len(payload) - 1).bit_length())
    path = tmp_path / "userblock.h5"
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="d")])
    with h5py.File(path, "w", userblock_size=block) as h5:
        legacy_h5_format.save_model_to_hdf5(model, h5)
    with open(path, "r+b") as fh:
        fh.write(payload)  # the zip sits in the block HDF5 skips; the file now starts with a zip header
    with h5py.File(path, "r") as h5:
        assert "model_config" in h5.attrs  # still a valid legacy model for Keras's .h5 loader
    for name in ("userblock.h5", "userblock.keras"):
        target = tmp_path / name
        if target != path:
            shutil.copy(path, target)
        with pytest.raises(UnsafeModelError) as info:
            _load(target)
        assert info.value.rule == "FORMAT-AMBIGUOUS"


def test_hdf5_signature_inside_a_zip_is_refused(files, tmp_path):
    """A zip carrying an HDF5 superblock at 1024 (inside a stored asset): h5py would open it."""
    legacy = (files["dir"] / "model.h5").read_bytes()
    with zipfile.ZipFile(files["dir"] / "model.keras") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    path = tmp_path / "hidden_h5.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", members["metadata.json"])
        # pad so that the asset's data starts exactly at 1024
        header = 30 + len("assets/x.h5")
        pad_name = "assets/pad"
        pad_len = 1024 - header - (30 + len(pad_name)) - len(members["metadata.json"]) - 30 - len("metadata.json")
        zf.writestr(pad_name, b"\0" * pad_len)
        zf.writestr("assets/x.h5", legacy)
        zf.writestr("config.json", members["config.json"])
        zf.writestr("model.weights.h5", members["model.weights.h5"])
    data = path.read_bytes()
    assert data[1024:1032] == b"\x89HDF\r\n\x1a\n"
    with pytest.raises(UnsafeModelError) as info:
        _load(path)
    assert info.value.rule == "FORMAT-AMBIGUOUS"


def test_weights_member_holding_a_model_is_refused(files, tmp_path):
    with zipfile.ZipFile(files["dir"] / "model.keras") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    path = tmp_path / "two_models.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", members["metadata.json"])
        zf.writestr("config.json", members["config.json"])
        zf.writestr("model.weights.h5", (files["dir"] / "model.h5").read_bytes())
    with pytest.raises(UnsafeModelError) as info:
        _load(path)
    assert info.value.rule == "FORMAT-AMBIGUOUS"


def test_zip_after_other_bytes_is_refused(files, tmp_path):
    path = tmp_path / "prefixed.keras"
    path.write_bytes(b"#!/bin/sh\nexit 0\n" + (files["dir"] / "model.keras").read_bytes())
    assert zipfile.is_zipfile(path)
    with pytest.raises(MalformedModelError):
        _load(path)


def test_file_replaced_after_the_checks_is_refused(files, tmp_path, monkeypatch):
    """The loader reopens the file and compares it with what was checked."""
    import kmemopt.api as api
    from kmemopt.load import archive

    path = tmp_path / "swapped.keras"
    shutil.copy(files["dir"] / "model.keras", path)
    real = archive.read_model_file

    def read_then_swap(p, *args, **kwargs):
        checked = real(p, *args, **kwargs)
        replacement = tmp_path / "replacement.keras"
        shutil.copy(files["dir"] / "model.keras", replacement)
        replacement.replace(path)  # same bytes, another file: what an attacker's rename would do
        return checked

    monkeypatch.setattr(api, "read_model_file", read_then_swap)
    with pytest.raises(UnsafeModelError) as info:
        _load(path)
    assert info.value.rule == "FILE-CHANGED"


def test_polyglot_through_the_cli(files, keras, tmp_path, cli):
    path = tmp_path / "cli_poly.keras"
    path.write_bytes((files["dir"] / "model.h5").read_bytes() + _lambda_keras(keras, tmp_path, tmp_path / "fired"))
    result = cli("profile", path)
    assert result.exit_code == 3
    assert "FORMAT-AMBIGUOUS" in result.stderr
    assert result.stderr.count("error:") == 1


# --------------------------------------------------------------------------------------------
# Weights declared behind HDF5 filters but never written


def _rewrite_weights(source: Path, target: Path, *, units: int | None = None, layout: str, shape=None):
    """Copy a .keras or legacy .h5 file with its `d2` kernel replaced by a dataset of `layout`.

    layout: "unwritten" (gzip, no chunk written), "lzf-unwritten", "partial" (some chunks written),
    "zeros-bomb" (every chunk written, all zeros, gzip), "decoy" (the kernel removed, and a small
    unwritten gzip dataset declaring the missing bytes put elsewhere).
    """
    import h5py

    def transform(h5, kernel_path: str, config: dict) -> dict:
        old = h5[kernel_path]
        new_shape = shape or old.shape
        del h5[kernel_path]
        kwargs = {
            "chunks": tuple(min(64 if layout != "zeros-bomb" else 262144, d) for d in new_shape),
            "dtype": "float32",
        }
        if layout == "lzf-unwritten":
            h5.create_dataset(kernel_path, shape=new_shape, compression="lzf", **kwargs)
        elif layout == "decoy":
            h5.create_dataset("decoy/vars/0", shape=new_shape, compression="gzip", **kwargs)
        else:
            ds = h5.create_dataset(kernel_path, shape=new_shape, compression="gzip", **kwargs)
            if layout == "partial":
                ds[:1, :1] = 1.0
            elif layout == "zeros-bomb":
                block = np.zeros((min(4096, new_shape[0]), new_shape[1]), dtype="float32")
                for start in range(0, new_shape[0], block.shape[0]):
                    ds[start : start + block.shape[0]] = block[: new_shape[0] - start]
        return config

    def edit_config(config: dict) -> dict:
        if units is None:
            return config
        for layer in config["config"]["layers"]:
            if layer["config"].get("name") == "d2":
                layer["config"]["units"] = units
                if "build_config" in layer:
                    pass
        return config

    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        weights = target.with_suffix(".weights.tmp")
        weights.write_bytes(members["model.weights.h5"])
        with h5py.File(weights, "r+") as h5:
            transform(h5, "layers/dense_1/vars/0", {})
        config = edit_config(json.loads(members["config.json"]))
        with zipfile.ZipFile(target, "w") as zf:
            zf.writestr("metadata.json", members["metadata.json"])
            zf.writestr("config.json", json.dumps(config))
            zf.write(weights, "model.weights.h5")
        weights.unlink()
        return target
    shutil.copy(source, target)
    with h5py.File(target, "r+") as h5:
        kernel = next(k for k in _datasets(h5["model_weights/d2"]) if k.endswith("kernel"))
        transform(h5, f"model_weights/d2/{kernel}", {})
        if units is not None:
            config = json.loads(h5.attrs["model_config"])
            h5.attrs["model_config"] = json.dumps(edit_config(config))
    return target


def _datasets(group, prefix=""):
    import h5py

    for name, obj in group.items():
        if isinstance(obj, h5py.Dataset):
            yield f"{prefix}{name}"
        else:
            yield from _datasets(obj, f"{prefix}{name}/")


BIG = (5, 40_000_000)  # 800 MB of float32 declared; the files are a few KB


@pytest.mark.parametrize("source", ["model.keras", "model.h5"])
@pytest.mark.parametrize("layout", ["unwritten", "lzf-unwritten", "partial"])
def test_unwritten_chunks_are_refused_before_allocation(files, tmp_path, source, layout):
    import resource

    path = _rewrite_weights(
        files["dir"] / source, tmp_path / f"{layout}{Path(source).suffix}", units=BIG[1], layout=layout, shape=BIG
    )
    assert path.stat().st_size < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UnsafeModelError) as info:
        _load(path)
    assert info.value.rule == "HDF5-SHAPE-BOMB"
    assert "chunks" in info.value.message
    # nothing near the 800 MB declared was allocated (ru_maxrss is in KiB on Linux)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024


def test_decoy_dataset_hiding_missing_weights_is_refused(files, tmp_path):
    path = _rewrite_weights(
        files["dir"] / "model.keras", tmp_path / "decoy.keras", units=BIG[1], layout="decoy", shape=BIG
    )
    with pytest.raises(UnsafeModelError) as info:
        _load(path)
    assert info.value.rule == "HDF5-SHAPE-BOMB"


def test_compression_bomb_is_refused(files, tmp_path):
    shape = (5, 2_000_000)  # 40 MB of zeros in a few tens of KB
    path = _rewrite_weights(
        files["dir"] / "model.keras", tmp_path / "bomb.keras", units=shape[1], layout="zeros-bomb", shape=shape
    )
    assert path.stat().st_size < 200_000
    with pytest.raises(UnsafeModelError) as info:
        _load(path)
    assert info.value.rule == "HDF5-RATIO"


def test_profile_still_reports_unwritten_weights_statically(files, tmp_path, cli):
    path = _rewrite_weights(
        files["dir"] / "model.keras", tmp_path / "static.keras", units=BIG[1], layout="unwritten", shape=BIG
    )
    result = cli("profile", path, "--format", "json", "-b", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["params"] == 6 * 5 + 5 + 5 * BIG[1] + BIG[1]


def test_fully_written_gzip_weights_load(files, tmp_path, keras):
    """No false refusal: a legitimately compressed, fully written dataset loads with its values."""
    import h5py

    with zipfile.ZipFile(files["dir"] / "model.keras") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    weights = tmp_path / "w.h5"
    weights.write_bytes(members["model.weights.h5"])
    with h5py.File(weights, "r+") as h5:
        value = h5["layers/dense_1/vars/0"][()]
        del h5["layers/dense_1/vars/0"]
        h5.create_dataset("layers/dense_1/vars/0", data=value, chunks=(2, 3), compression="gzip")
    path = tmp_path / "gzip_ok.keras"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            if name == "model.weights.h5":
                zf.write(weights, name)
            else:
                zf.writestr(name, data)
    model = _load(path)
    np.testing.assert_allclose(np.asarray(model(files["x"])), files["y"], rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Keras's own errors on a file that passed the checks are kmemopt errors


def test_weights_of_the_wrong_shape_are_a_kmemopt_error(files, tmp_path):
    import h5py

    with zipfile.ZipFile(files["dir"] / "model.keras") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    weights = tmp_path / "w.h5"
    weights.write_bytes(members["model.weights.h5"])
    with h5py.File(weights, "r+") as h5:
        del h5["layers/dense_1/vars/0"]
        h5.create_dataset("layers/dense_1/vars/0", data=np.zeros((3, 5), dtype="float32"))  # transposed
    path = tmp_path / "wrong_shape.keras"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            if name == "model.weights.h5":
                zf.write(weights, name)
            else:
                zf.writestr(name, data)
    with pytest.raises(KmemoptError) as info:
        _load(path)
    assert int(info.value.exit_code) == 3
    assert "\n" not in str(info.value)
