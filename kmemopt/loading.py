"""Load a `.keras` archive with about one copy of its weights in memory.

Keras 3.15's loader reads the whole `model.weights.h5` member into an `io.BytesIO` before it assigns
the weights: a full extra copy on top of the model's own variables. For a member stored without
compression (what `model.save` writes) the bytes are already plain in the file, so this loader opens
them through `archive._open_member`'s seekable window and lets h5py read each dataset from there.

Everything else is Keras's own: the model comes from `config.json` through Keras's deserialization
(`safe_mode=True`), the weights through Keras's own traversal (`saving_lib._load_state`), so the model
is the one `keras.models.load_model` returns. The caller runs kmemopt's safety checks first; a member
that is compressed (or anything else this loader does not handle) answers None, and the caller falls
back to plain `keras.models.load_model`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from kmemopt.archive import _open_member


def load_stored_keras(path: str | Path, *, custom_objects: dict[str, Any] | None, compile: bool) -> Any | None:
    """The model of a `.keras` zip whose weights member is stored; None when it is not such a file."""
    path = Path(path)
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        return None
    import h5py

    from kmemopt._keras import import_keras

    import_keras()  # Keras's environment set up as everywhere else in kmemopt
    from keras.src.saving import saving_lib as lib

    with open(path, "rb") as fh, zipfile.ZipFile(fh, "r") as zf:
        names = zf.namelist()
        if lib._VARS_FNAME_H5 not in names:
            return None
        info = zf.getinfo(lib._VARS_FNAME_H5)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        # As Keras's own _load_model_from_fileobj, with the weights store swapped.
        config_json = lib._safe_zip_read(zf, lib._CONFIG_FILENAME)
        model = lib._model_from_config(config_json, custom_objects, compile, True)
        lib._reject_zip_bomb(zf, lib._VARS_FNAME_H5)
        failed_saveables: set = set()
        error_msgs: dict = {}
        with _open_member(zf, info, path) as member:
            weights_store = _MemberH5Store(member, h5py)
            asset_store = lib.DiskIOStore(lib._ASSETS_DIRNAME, archive=zf, mode="r") if len(names) > 3 else None
            try:
                lib._load_state(
                    model,
                    weights_store=weights_store,
                    assets_store=asset_store,
                    inner_path="",
                    visited_saveables=set(),
                    failed_saveables=failed_saveables,
                    error_msgs=error_msgs,
                )
            finally:
                weights_store.close()
                if asset_store:
                    asset_store.close()
        if failed_saveables:
            lib._raise_loading_failure(error_msgs)
    return model


def _store_class():
    from keras.src.saving.saving_lib import H5IOStore

    class MemberH5Store(H5IOStore):
        """Keras's read-only HDF5 store over an already open, seekable stream (no copy of it)."""

        def __init__(self, stream, h5py):
            self._stream, self._h5py = stream, h5py
            super().__init__("model.weights.h5", archive=None, mode="r")

        def _get_h5_file(self, path_or_io, mode=None):
            return self._h5py.File(self._stream, mode="r")

        def close(self):
            self.h5_file.close()  # the stream belongs to the caller

    return MemberH5Store


def _MemberH5Store(stream, h5py):  # noqa: N802  (built lazily: importing kmemopt must not import Keras)
    return _store_class()(stream, h5py)
