"""Load a `.keras` archive with about one copy of its weights in memory.

Keras 3.15's loader reads the whole `model.weights.h5` member into an `io.BytesIO` before it assigns
the weights: a full extra copy on top of the model's own variables. For a member stored without
compression (what `model.save` writes) the bytes are already plain in the file, so this loader opens
them through `archive._open_member`'s seekable window and lets h5py read each dataset from there; a
deflated member is inflated once into an unnamed temp file (disk, not memory) and read from there.

The model is built unallocated and each variable allocated once, straight from the file's value
(`build.assign_initializes`; `lean=False` keeps Keras's own allocation for `--measure`).

Everything else is Keras's own: the model comes from `config.json` through Keras's deserialization
(`safe_mode=True`), the weights through Keras's own traversal (`saving_lib._load_state`), so the model
is the one `keras.models.load_model` returns, bit for bit (tested). The caller runs kmemopt's safety
checks first; a file this loader does not handle (a legacy .h5, a deflated member with no room in the
temp folder) answers None, and the caller falls back to Keras's own loader (`load_checked_file`).

Keras internals: `keras.src.saving.saving_lib` (contract "load_in_place": `_safe_zip_read`,
`_model_from_config`, `_reject_zip_bomb`, `_load_state`, `_raise_loading_failure`, `H5IOStore`,
`DiskIOStore`, `safe_get_h5_dataset` and the member-name constants; "load_file_object":
`saving_lib.load_model` and `legacy_h5_format.load_model_from_hdf5` on an open file; "write_through_disk":
`saving_lib.is_memory_sufficient` and `saving_lib.save_model`; "linear_rebuild": `Sequential.from_config`,
`add(rebuild=False)`, `_maybe_rebuild`, `serialization_lib` and the legacy `saving_utils`).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

import numpy as np

from kmemopt.keras_compat.contracts import usable
from kmemopt.keras_compat.variables import allocate_rest, assign_initializes, lean_build_available, unallocated
from kmemopt.load.archive import ModelFile, _open_member, open_verified
from kmemopt.load.model_size import ModelSize


def load_stored_keras(
    path: str | Path, *, custom_objects: dict[str, Any] | None, compile: bool, lean: bool = True
) -> Any | None:
    """The model of a `.keras` zip whose weights member is stored; None when it is not such a file.

    Keras internals: contract "load_in_place" (see the module docstring); None when it does not hold.

    `lean` (the default) allocates each variable once, straight from the file (about 1x the weights at
    any time). Without it the variables are allocated as Keras's own loader does (initializers first,
    then the file's values through TensorFlow), which is what `--measure` needs: the memory a user's
    `keras.models.load_model` leaves behind."""
    stored = open_stored_keras(path, custom_objects=custom_objects, compile=compile, lean=lean)
    if stored is None:
        return None
    stored.close()
    return stored.model


def open_stored_keras(
    path: str | Path, *, custom_objects: dict[str, Any] | None, compile: bool, lean: bool = True, model_file=None
) -> StoredKeras | None:
    """As `load_stored_keras`, with the file kept open so layers can be read again (`StoredKeras.reload`).

    With `model_file` (what `archive.read_model_file` checked), the file is the one that was checked
    (`archive.open_verified`) and read as a zip whatever its name; without it, only a `.keras` zip is."""
    path = Path(path)
    if model_file is not None:
        if model_file.format != "keras":
            return None
    elif path.suffix != ".keras" or not zipfile.is_zipfile(path):
        return None
    import h5py

    from kmemopt._keras import import_keras

    import_keras()  # Keras's environment set up as everywhere else in kmemopt
    if not usable("load_in_place"):
        return None  # Keras's own loader then reads it (weights into memory first)
    lean = lean and lean_build_available()
    from keras.src.saving import saving_lib as lib

    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open_verified(model_file) if model_file is not None else open(path, "rb"))
        zf = stack.enter_context(zipfile.ZipFile(raw, "r"))
        names = zf.namelist()
        if lib._VARS_FNAME_H5 not in names:
            return None
        info = zf.getinfo(lib._VARS_FNAME_H5)
        if info.compress_type != zipfile.ZIP_STORED and not _room_to_inflate(info):
            return None  # plain Keras then reads it (into memory)
        # As Keras's own _load_model_from_fileobj, with the weights store swapped and the model built
        # unallocated: each variable is then allocated from the file's value as Keras assigns it,
        # instead of from its initializer first (random values computed only to be overwritten).
        # Not with compile: TensorFlow's optimizer build needs its model's variables allocated.
        config_json = lib._safe_zip_read(zf, lib._CONFIG_FILENAME)
        scope: contextlib.AbstractContextManager[list[Any]] = (
            unallocated() if lean and not compile else contextlib.nullcontext([])
        )
        with scope as deferred:
            model = lib._model_from_config(config_json, custom_objects, compile, True)
        lib._reject_zip_bomb(zf, lib._VARS_FNAME_H5)
        member = stack.enter_context(_member_stream(zf, info, path, raw))
        weights_store = _MemberH5Store(member, h5py, lazy=lean)
        stack.callback(weights_store.close)
        asset_store = lib.DiskIOStore(lib._ASSETS_DIRNAME, archive=zf, mode="r") if len(names) > 3 else None
        if asset_store is not None:
            stack.callback(asset_store.close)
        stored = StoredKeras(model, weights_store, lib)
        failed_saveables: set = set()
        error_msgs: dict = {}
        with assign_initializes() if deferred else contextlib.nullcontext(), stored._recording_paths():
            lib._load_state(
                model,
                weights_store=weights_store,
                assets_store=asset_store,
                inner_path="",
                visited_saveables=set(),
                failed_saveables=failed_saveables,
                error_msgs=error_msgs,
            )
        allocate_rest(deferred)  # state the file does not store (seed generators) starts as Keras would
        if failed_saveables:
            lib._raise_loading_failure(error_msgs)
        stored._stack = stack.pop_all()  # the file stays open until `close`
    return stored


INFLATE_HEADROOM_BYTES = 256 * 2**20  # free space left in the temp folder after inflating


def _room_to_inflate(info: zipfile.ZipInfo) -> bool:
    return shutil.disk_usage(tempfile.gettempdir()).free >= info.file_size + INFLATE_HEADROOM_BYTES


@contextlib.contextmanager
def _member_stream(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, raw=None):
    """A seekable stream of the weights member. A stored member is read in place; a deflated one (what
    `kmemopt shrink --compress` writes) is inflated once into an unnamed temp file, which HDF5 can seek
    in (zipfile's stream re-inflates from the start on every backward seek) and which never sits in
    memory. The archive checks already capped its size and ratio; zipfile stops at the declared size
    and checks the CRC."""
    if info.compress_type == zipfile.ZIP_STORED:
        with _open_member(zf, info, path, raw) as member:
            yield member
        return
    with tempfile.TemporaryFile(prefix="kmemopt-weights-") as scratch:
        with zf.open(info) as source:
            shutil.copyfileobj(source, scratch, 1 << 20)
        scratch.seek(0)
        yield scratch


class StoredKeras:
    """A model loaded from a stored `.keras` file that stays open, so any layer's weights can be read
    from the file again after they were freed (`reload`): shrink frees the original model before
    building the rewritten one and reads each layer back, one at a time, as it copies it."""

    def __init__(self, model, weights_store, lib):
        self.model = model
        self._store = weights_store
        self._lib = lib
        self._paths: dict[int, str] = {}  # id(saveable) -> its path in the weights file
        self._stack: contextlib.ExitStack | None = None

    @contextlib.contextmanager
    def _recording_paths(self):
        """Note where Keras's own traversal finds each object's weights (its recursion goes through the
        module attribute, so every level is seen)."""
        lib, original = self._lib, self._lib._load_state

        def recording(saveable, weights_store, assets_store, inner_path, *args, **kwargs):
            self._paths.setdefault(id(saveable), inner_path)
            return original(saveable, weights_store, assets_store, inner_path, *args, **kwargs)

        lib._load_state = recording
        try:
            yield
        finally:
            lib._load_state = original

    def can_reload(self, layer) -> bool:
        return self._stack is not None and id(layer) in self._paths

    def reload(self, layer) -> None:
        """Allocate `layer`'s (freed) variables again from the file, through Keras's own traversal
        (`saving_lib._load_state`, `_raise_loading_failure`)."""
        failed: set = set()
        errors: dict = {}
        with assign_initializes():
            self._lib._load_state(
                layer,
                weights_store=self._store,
                assets_store=None,
                inner_path=self._paths[id(layer)],
                visited_saveables=set(),
                failed_saveables=failed,
                error_msgs=errors,
            )
        if failed:
            self._lib._raise_loading_failure(errors)

    def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()


def _store_class():
    from keras.src.saving.saving_lib import H5IOStore

    class MemberH5Store(H5IOStore):
        """Keras's read-only HDF5 store over an already open, seekable stream (no copy of it)."""

        def __init__(self, stream, h5py, lazy):
            self._stream, self._h5py, self._lazy = stream, h5py, lazy
            super().__init__("model.weights.h5", archive=None, mode="r")

        def _get_h5_file(self, path_or_io, mode=None):
            return self._h5py.File(self._stream, mode="r")

        def close(self):
            self.h5_file.close()  # the stream belongs to the caller

        def __getitem__(self, key):
            if not self._lazy:
                return super().__getitem__(key)
            from keras.src.saving.saving_lib import safe_get_h5_dataset

            dataset = safe_get_h5_dataset(self._h5_entry_group, key)  # Keras's own checks (links, external)
            if (
                isinstance(dataset, self._h5py.Dataset)
                and dataset.ndim >= 1
                and dataset.size * dataset.dtype.itemsize >= LAZY_FROM_BYTES
                and dataset.dtype.kind in "fiub"
                and "dtype" not in dataset.attrs  # bfloat16 is stored with a marker Keras converts
            ):
                return LazyDataset(dataset)
            return super().__getitem__(key)

    return MemberH5Store


LAZY_FROM_BYTES = 1 * 2**20  # datasets this large are read straight into their variable's buffer


class LazyDataset:
    """A weights dataset that `build.assign_initializes` reads straight into the new variable's own buffer
    (`read_into`), so the file's array and a framework copy never both exist; anything else reads it
    whole through `__array__`."""

    def __init__(self, dataset):
        self._dataset = dataset
        self.shape = tuple(dataset.shape)
        self.dtype = dataset.dtype
        self.ndim = len(self.shape)

    def __array__(self, dtype=None, copy=None):
        value = self._dataset[()]
        return value if dtype is None else value.astype(dtype)

    # What a layer's own load_own_variables may do with a stored value besides assigning it.
    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        return self._dataset[key]

    def astype(self, dtype):
        return np.asarray(self).astype(dtype)

    def read_into(self, out: np.ndarray) -> None:
        if out.dtype != self.dtype:  # a conversion: Keras's own path decides how
            raise TypeError(f"stored {self.dtype}, variable {out.dtype}")
        self._dataset.read_direct(out)


def _MemberH5Store(stream, h5py, lazy=True):  # noqa: N802  (built lazily: importing kmemopt must not import Keras)
    return _store_class()(stream, h5py, lazy)


@contextlib.contextmanager
def keras_room(size: ModelSize) -> Iterator[None]:
    """Inside, Keras rebuilds a model within `kmemopt.load.model_size`'s limits in linear time, without RecursionError.

    Keras's `Sequential.from_config` rebuilds the whole model after adding each layer (quadratic: a
    400-layer Sequential took minutes); here each Sequential is built once, after its last layer, which
    gives the same model. Keras walks a functional graph (a Sequential's too) recursively, one frame a
    layer call on the path it follows, and deserializes nested models recursively: the recursion limit
    is raised for the graph depth and nesting the config declares (both capped by the limits, so the
    stack stays small; Python 3.11 runs Python-to-Python calls without growing the C stack).

    Without the "linear_rebuild" contract Keras's own `Sequential.from_config` runs (same model, slower)."""
    limit = sys.getrecursionlimit()
    needed = _stack_depth() + FRAMES_PER_CALL * size.graph_depth + FRAMES_PER_NESTING * (size.nesting + 1) + 200
    patch = usable("linear_rebuild")
    if patch:
        from keras.src.models.sequential import Sequential

        original = Sequential.__dict__["from_config"]
        Sequential.from_config = classmethod(_sequential_from_config)
    sys.setrecursionlimit(max(limit, needed))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)
        if patch:
            Sequential.from_config = original


FRAMES_PER_CALL = 2  # Keras's graph walk: one frame a layer call (2 leaves room for wrappers)
FRAMES_PER_NESTING = 60  # deserializing and building one nested model (measured: about 30)


def _stack_depth() -> int:
    frame: FrameType | None = sys._getframe()
    depth = 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def _sequential_from_config(cls, config, custom_objects=None):
    """Keras 3.15's `Sequential.from_config`, building the model once instead of after every layer."""
    from keras.src.legacy.saving import saving_utils
    from keras.src.saving import serialization_lib

    if "name" not in config:
        raise ValueError(
            "A Sequential model configuration must be a dictionary containing the 'name' and 'layers' keys. "
            f"Received: config keys={sorted(config)[:10]}"
        )
    build_input_shape = config.get("build_input_shape")
    model = cls(name=config["name"])
    for layer_config in config["layers"]:
        if "module" not in layer_config:  # legacy (h5) layer configs
            layer = saving_utils.model_from_config(layer_config, custom_objects=custom_objects)
        else:
            layer = serialization_lib.deserialize_keras_object(layer_config, custom_objects=custom_objects)
        model.add(layer, rebuild=False)
    if model._layers:
        model._maybe_rebuild()  # what Keras's last `add` does, the earlier rebuilds being overwritten
    if not model._functional and build_input_shape and isinstance(build_input_shape, (tuple, list)):
        model.build(build_input_shape)
    return model


def deserialize_model(config: dict[str, Any], *, legacy: bool, custom_objects: dict[str, Any] | None) -> Any:
    """The object a (checked) config describes, through Keras's own deserialization with `safe_mode`.

    `legacy` configs (from a `.h5` file) go through Keras's legacy `saving_utils.model_from_config`,
    others through `serialization_lib.deserialize_keras_object` in an `ObjectSharingScope`, as Keras's
    loaders do. Keras internals: `keras.src.saving.serialization_lib`, `keras.src.legacy.saving.saving_utils`
    (contract "deserialize", required: no public path deserializes a legacy config)."""
    from kmemopt.keras_compat.contracts import require

    require("deserialize")
    from keras.src.saving import serialization_lib

    if legacy:
        from keras.src.legacy.saving import saving_utils

        return saving_utils.model_from_config(config, custom_objects=custom_objects)
    with serialization_lib.ObjectSharingScope():
        return serialization_lib.deserialize_keras_object(config, custom_objects=custom_objects, safe_mode=True)


def load_checked_file(model_file: ModelFile, custom_objects: dict[str, Any] | None, *, compile: bool) -> Any:
    """The model of a checked file, read by Keras's own loader for its format (by content, never by name).

    Keras internals (contract "load_file_object"): `saving_lib.load_model` on the open, verified file
    (`archive.open_verified`) for a zip; `legacy_h5_format.load_model_from_hdf5` on an `h5py.File` over
    it for HDF5. Without them, Keras's public `keras.saving.load_model` loads the same bytes through a
    link named for the format the content has (`_format_named_link`)."""
    if not usable("load_file_object"):
        return _load_through_link(model_file, custom_objects, compile=compile)
    with open_verified(model_file) as fh:
        if model_file.format == "keras":
            from keras.src.saving import saving_lib

            return saving_lib.load_model(fh, custom_objects=custom_objects, compile=compile, safe_mode=True)
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(fh, "r") as h5:
            return legacy_h5_format.load_model_from_hdf5(
                h5, custom_objects=custom_objects, compile=compile, safe_mode=True
            )


def _load_through_link(model_file: ModelFile, custom_objects: dict[str, Any] | None, *, compile: bool) -> Any:
    """`keras.saving.load_model` on the verified bytes, under a name that makes Keras pick the loader for
    their format: Keras picks its loader by the file's name (docs/security.md, step 7)."""
    import keras

    with open_verified(model_file) as fh, _format_named_link(fh, model_file.format) as path:
        return keras.saving.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=True)


@contextlib.contextmanager
def _format_named_link(fh: IO[bytes], fmt: str) -> Iterator[str]:
    """A path named `model.keras` (zip) or `model.h5` (HDF5) that reads exactly the open file `fh`:
    a symlink to `/proc/self/fd/N` where there is one (the same open file, so the bytes that were
    checked), otherwise a private copy of them in a new temp folder (0700)."""
    with tempfile.TemporaryDirectory(prefix="kmemopt-load-") as folder:
        path = os.path.join(folder, "model.keras" if fmt == "keras" else "model.h5")
        proc = f"/proc/self/fd/{fh.fileno()}"
        if os.path.exists(proc):
            os.symlink(proc, path)
        else:
            fh.seek(0)
            with open(path, "xb") as out:
                shutil.copyfileobj(fh, out, 1 << 20)
        yield path


@contextlib.contextmanager
def _weights_through_disk(saving_lib: Any) -> Iterator[None]:
    """Make Keras write `model.weights.h5` to a temp file beside the output, then into the zip.

    With enough free memory Keras builds the HDF5 file in an `io.BytesIO` and copies it into the zip
    (two extra copies of the weights at once); its low-memory path writes the same file to disk
    first. The zip it writes is the same either way.
    """
    saved = saving_lib.is_memory_sufficient
    saving_lib.is_memory_sufficient = lambda model: False
    try:
        yield
    finally:
        saving_lib.is_memory_sufficient = saved


def save_keras_zip(model: Any, fileobj: IO[bytes] | io.RawIOBase, *, through_disk: bool) -> None:
    """Keras's own `.keras` zip of `model`, written to the open `fileobj`.

    With `through_disk`, Keras's low-memory path writes the weights to a temp file beside
    `fileobj.name` first instead of building them in memory. Keras internals (contract
    "write_through_disk"): `saving_lib.save_model` on a file object and `saving_lib.is_memory_sufficient`.
    Without them, Keras's public `keras.saving.save_model` writes the same zip (weights built in memory)
    to a private temp folder (it takes only a path named `.keras`), copied from there into `fileobj`."""
    if not usable("write_through_disk"):
        import keras

        with tempfile.TemporaryDirectory(prefix="kmemopt-save-") as folder:
            path = os.path.join(folder, "model.keras")
            keras.saving.save_model(model, path)
            with open(path, "rb") as saved:
                shutil.copyfileobj(saved, fileobj, 1 << 20)
        return
    from keras.src.saving import saving_lib

    with _weights_through_disk(saving_lib) if through_disk else contextlib.nullcontext():
        saving_lib.save_model(model, fileobj)
