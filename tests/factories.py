"""Model files made at test time, including files whose weights are declared but never stored."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path


def write_declared_model(path: Path, model, *, store_values: bool = False) -> Path:
    """Save `model`'s config with an HDF5 weights file whose datasets are declared but not written.

    Works for models built unallocated (billions of parameters): only shapes and dtypes are used.
    Dataset paths follow Keras's layout for top-level layers: layers/<name>/vars/<i>.
    """
    import h5py
    import numpy as np
    from keras.saving import serialize_keras_object

    from kmemopt.profiling.dtypes import itemsize

    config = serialize_keras_object(model)
    weights_tmp = path.with_suffix(".weights.tmp")
    with h5py.File(weights_tmp, "w") as h5:
        for layer in model.layers:
            for i, v in enumerate(layer.weights):
                dtype = np.dtype("float32") if itemsize(v.dtype) == 4 else np.dtype(str(v.dtype))
                ds = h5.create_dataset(f"layers/{layer.name}/vars/{i}", shape=tuple(v.shape), dtype=dtype)
                if store_values:
                    ds[...] = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        zf.writestr("config.json", json.dumps(config))
        zf.write(weights_tmp, "model.weights.h5")
    weights_tmp.unlink()
    return path


def dense_stack(keras, widths: list[int], name: str = "declared"):
    """A Sequential Dense stack built unallocated (no memory for its weights)."""
    from kmemopt.keras_compat.variables import unallocated

    with unallocated():
        model = keras.Sequential(
            [keras.Input((widths[0],))] + [keras.layers.Dense(w, name=f"dense_{i}") for i, w in enumerate(widths[1:])],
            name=name,
        )
    return model
