"""The write stage: the output path's checks, Keras's save streamed into an unnamed temp file, and the
reload check (plain `keras.models.load_model` in a fresh, limited process) before the file is named."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from kmemopt.errors import ExitCode, KmemoptError, UsageError

# Outputs of the reloaded model may differ from the in-process ones by float noise only (the same
# batches run in both, but kernels may still pick different code paths): tolerance relative to the
# largest output magnitude.
RELOAD_RTOL = 1e-3
RELOAD_ATOL = 1e-6


class ReloadFailed(KmemoptError):
    """The written model did not load, or did not reproduce its outputs, in a fresh process (exit 4)."""

    exit_code = ExitCode.INTERNAL


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}.slim.keras")


def check_output(src: Path | None, out: Path, force: bool) -> Path:
    from kmemopt.write.fileio import check_writable_dir, refuse_same_file

    if out.suffix != ".keras":
        raise UsageError(f"The output must be a .keras file. Received: {out}.")
    refuse_same_file(out, src)
    if out.exists() and not force:
        raise UsageError(f"{out} already exists; pass --force to overwrite it, or choose another -o.")
    if out.exists() and out.is_dir():
        raise UsageError(f"{out} is a directory.")
    check_writable_dir(out)
    return out


# --------------------------------------------------------------------------------------------
# writing and verifying


class _NamedStream(io.RawIOBase):
    """`fh` with a `name` in the system temp folder: Keras puts its temp weights file beside
    `fileobj.name`.

    The output is an unnamed temp file (`/proc/self/fd/N`), where Keras cannot create a file and would
    quietly go back to building the weights in memory. Keras's temp file is a named one that a killed
    process would leave behind, so it goes to the system temp folder, never the user's output folder.
    """

    def __init__(self, fh, target: Path):
        super().__init__()
        self._fh = fh
        del target  # the output's folder is deliberately not used (see above)
        self.name = str(Path(tempfile.gettempdir()) / "model.keras")

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b) -> int:
        return self._fh.write(b)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def flush(self) -> None:
        self._fh.flush()


def save_container(model, target: Path, *, compress: bool) -> None:
    """Save with Keras straight into `target` (a temp file); on request, deflated.

    Keras writes `.keras` zips uncompressed; for `compress`, its zip goes to an unnamed scratch file
    and is streamed member by member, deflated, into `target`.
    """
    from kmemopt.keras_compat.saving import save_keras_zip

    if not compress:
        with open(target, "wb") as fh:
            save_keras_zip(model, _NamedStream(fh, target), through_disk=True)
    else:
        # An unnamed scratch file (freed by the kernel however the process ends) holds Keras's
        # uncompressed zip while it is deflated member by member into `target`.
        with tempfile.TemporaryFile() as scratch:
            save_keras_zip(model, scratch, through_disk=False)
            scratch.seek(0)
            with zipfile.ZipFile(scratch) as src, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as dst:
                for info in src.infolist():
                    item = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                    item.compress_type = zipfile.ZIP_DEFLATED
                    item.external_attr = info.external_attr
                    with src.open(info) as reader, dst.open(item, "w", force_zip64=info.file_size > 2**31) as writer:
                        shutil.copyfileobj(reader, writer, 1 << 20)
    # A named temp file (platforms without unnamed ones) is created 0600; give the output the
    # permissions a normal save would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(target, 0o666 & ~umask)


RELOAD_TARGET = "kmemopt.write.save:reload_in_child"


def reload_in_child(request: dict[str, Any], arrays: list[np.ndarray]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The reload check's child (run by `kmemopt.sandbox`): plain `keras.models.load_model`, then predict.

    The written file is the parent's unnamed temp file, reachable as /proc/<pid>/fd/<n>; Keras wants a
    name ending in `.keras`, so a symlink in the child's scratch folder points at it for as long as
    `load_model` runs, and is removed right after (the folder also goes if either process dies).
    """
    import sys

    from kmemopt import sandbox

    if not request["import_kmemopt"]:
        # `python -m kmemopt.sandbox` imported kmemopt, whose hook would register kmemopt's layers as
        # Keras is imported: without it, the load below is what a user's plain Keras does.
        from kmemopt._layers_hook import KerasImportHook

        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, KerasImportHook)]
    import keras

    custom_objects = None
    if request.get("custom_objects"):
        from kmemopt.load.trust import load_custom_objects

        custom_objects = load_custom_objects(request["custom_objects"])
    link = sandbox.scratch_dir() / "model.keras"
    os.symlink(request["model"], link)  # not resolved: an unnamed temp is only reachable via /proc
    try:
        model = keras.models.load_model(link, custom_objects=custom_objects)
    finally:
        shutil.rmtree(link.parent, ignore_errors=True)
    feed = arrays[0] if len(arrays) == 1 else list(arrays)
    from kmemopt.keras_compat.layers import inputs_struct

    struct = inputs_struct(model)  # dict-input models (keras-hub backbones) take a dict
    if struct is not None and len(keras.tree.flatten(struct)) == len(arrays):
        feed = keras.tree.pack_sequence_as(struct, list(arrays))
    out = model.predict(feed, batch_size=int(request["batch_size"]), verbose=0)
    if isinstance(out, dict):
        out = list(out.values())
    if not isinstance(out, (list, tuple)):
        out = [out]
    return {}, [np.asarray(o, dtype="float32") for o in out]


def verify_reload(
    tmp: Path,
    inputs,
    expected: list[np.ndarray],
    *,
    custom_layers: bool,
    custom_objects: str | os.PathLike | None = None,
    max_memory_bytes: int | None = None,
    timeout_s: float | None = None,
) -> tuple[list[np.ndarray], dict]:
    """Load the written file with `keras.models.load_model` in a fresh process and rerun the inputs.

    The child runs under kmemopt's memory limit and timeout (see `kmemopt.sandbox`) and dies with this
    process; `custom_objects` (the user's file) is run in the child too, so it loads what this one did.
    """
    from kmemopt import sandbox
    from kmemopt.passes import fidelity as fid

    request = {
        "model": os.path.abspath(tmp),
        "import_kmemopt": custom_layers,
        "custom_objects": str(Path(custom_objects).resolve()) if custom_objects is not None else None,
        "batch_size": fid.predict_batch_size(inputs),
    }
    started = time.perf_counter()
    try:
        done = sandbox.run_child(
            RELOAD_TARGET,
            request,
            list(inputs.arrays),
            max_memory_bytes=max_memory_bytes or sandbox.default_max_memory(),
            timeout_s=timeout_s or sandbox.DEFAULT_TIMEOUT_S,
            what="the reload check",
        )
    except sandbox.RunLimitExceeded:
        raise
    except KmemoptError as exc:
        from kmemopt.errors import clip

        failed = ReloadFailed(
            f"The written model did not reload in a fresh process with plain Keras ({clip(exc.message, 300)}); "
            "nothing was written."
        )
        failed.child_type = getattr(exc, "child_type", None)
        raise failed from exc
    got = done.arrays
    seconds = time.perf_counter() - started
    if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected, strict=False)):
        raise ReloadFailed("The reloaded model's outputs do not have the shrunk model's shapes; nothing was written.")
    diff = max((float(np.max(np.abs(g - e))) if g.size else 0.0) for g, e in zip(got, expected, strict=True))
    scale = max((float(np.max(np.abs(e))) if e.size else 0.0) for e in expected) or 1.0
    reproduced = diff <= RELOAD_RTOL * scale + RELOAD_ATOL
    if not reproduced:
        raise ReloadFailed(
            f"The reloaded model's outputs differ from the shrunk model's by {diff:.3g}; nothing was written."
        )
    info = {
        "loaded_with": "keras.models.load_model (fresh process)",
        "imports_kmemopt": custom_layers,
        "max_abs_diff_vs_in_process": diff,
        "reproduced": reproduced,
        "seconds": round(seconds, 3),
        "peak_rss_bytes": done.peak_rss_bytes,
    }
    return got, info
