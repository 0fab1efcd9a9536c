"""The library behind the CLI: each function takes paths or models and returns typed results."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from kmemopt.load.archive import ModelFile, read_model_file
from kmemopt.units import parse_size


def resolve_custom_objects(custom_objects: dict[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    if custom_objects is None:
        return {}
    if isinstance(custom_objects, dict):
        return dict(custom_objects)
    from kmemopt.load.trust import load_custom_objects

    return load_custom_objects(custom_objects)


def open_checked(path: str | os.PathLike, custom_objects=None):
    """Read a model file's metadata, check it against the allowlist, build it unallocated."""
    from kmemopt.load.trust import build_allowlist, mentions_keras_hub, precheck_file

    model_file = read_model_file(path)
    precheck_file(model_file, custom_objects=custom_objects is not None)  # before Keras is imported
    from kmemopt.load.build import build_from_file  # NumPy and the Keras boundary: after the refusals

    allow = build_allowlist(resolve_custom_objects(custom_objects), keras_hub=mentions_keras_hub(model_file.config))
    model = build_from_file(model_file, allow=allow)
    return model_file, model, allow


def profile(
    path_or_model,
    *,
    batch_size=32,
    optimizer=None,
    input_shapes=None,
    seq_len=None,
    budget=None,
    custom_objects=None,
    xla: bool | None = False,
):
    budget_bytes = parse_size(budget) if budget is not None else None
    if isinstance(path_or_model, (str, os.PathLike)):
        model_file, model, _ = open_checked(path_or_model, custom_objects)
    else:
        model_file, model = None, path_or_model
        from kmemopt._keras import import_keras

        if not isinstance(model, import_keras().Model):
            from kmemopt.errors import UsageError

            raise UsageError(f"profile() takes a path or a keras.Model. Received: {type(model).__name__}.")
    from kmemopt.profiling.static import profile_model

    return profile_model(
        model,
        model_file=model_file,
        batch_size=batch_size,
        optimizer=optimizer,
        input_shapes=input_shapes,
        seq_len=seq_len,
        budget_bytes=budget_bytes,
        xla=xla,
    )


def load_model(path, *, custom_objects=None, compile=False, lean=True):
    """Full load with weights, after the static checks (allowlist, archive rules, stored weights).

    `lean=False` allocates the weights as Keras's own loader does (see `keras_compat.saving.load_stored_keras`)."""
    model, stored = open_model(path, custom_objects=custom_objects, compile=compile, lean=lean)
    if stored is not None:
        stored.close()
    return model


def open_model(path, *, custom_objects=None, compile=False, lean=True):
    """`load_model`, also answering the open `keras_compat.saving.StoredKeras` (to be closed by the caller) when the
    weights were read in place, so they can be read again; None for other files.

    The model is loaded from exactly the bytes that were checked, by the format of those bytes (never
    by the file's name, which is how Keras's own `load_model` picks a loader): a zip is read as a
    `.keras` archive and an HDF5 file as a legacy model, through the handle `archive.open_verified`
    gives. Anything Keras or h5py raises on a file that passed the checks is a malformed file (exit 3)."""
    model_file: ModelFile = read_model_file(path)
    from kmemopt.load.build import build_from_file
    from kmemopt.load.trust import build_allowlist, check_loadable, mentions_keras_hub, precheck_file

    precheck_file(model_file, custom_objects=custom_objects is not None)  # before Keras is imported
    allow = build_allowlist(resolve_custom_objects(custom_objects), keras_hub=mentions_keras_hub(model_file.config))
    # The allowlist check, then the architecture built unallocated: refuse weights the file does not
    # store (HDF5 shape bombs, Dense(units=2**40) over small weights) before Keras allocates them.
    check_loadable(model_file, build_from_file(model_file, allow=allow, require_built=False))
    custom = allow.custom_objects or None
    from kmemopt.keras_compat.saving import keras_room
    from kmemopt.load.model_size import model_size

    # Keras's own deserialization, with the room the structure needs (linear Sequential rebuild, enough
    # recursion for the graph's depth: both bounded by the MODEL-SIZE limits checked while reading).
    with loading_errors(model_file), keras_room(model_size(model_file.config)):
        return _load_checked(model_file, custom, compile=compile, lean=lean)


def _load_checked(model_file: ModelFile, custom, *, compile: bool, lean: bool):
    from kmemopt._keras import import_keras
    from kmemopt.keras_compat.saving import load_checked_file, open_stored_keras

    import_keras()
    # A .keras file's weights are read in place (about 1x the weights in memory instead of Keras's 2x+);
    # a deflated member with no room in the temp folder to inflate it goes through Keras's own reader.
    stored = open_stored_keras(
        model_file.path, custom_objects=custom, compile=compile, lean=lean, model_file=model_file
    )
    if stored is not None:
        return stored.model, stored
    return load_checked_file(model_file, custom, compile=compile), None


@contextlib.contextmanager
def loading_errors(model_file: ModelFile):
    """Keras's and h5py's own errors while loading a checked file, as one kmemopt error (exit 3)."""
    from kmemopt.errors import KmemoptError, MalformedModelError
    from kmemopt.load.archive import RULE_LOAD_FAILED

    try:
        yield
    except KmemoptError:
        raise
    except MemoryError:
        from kmemopt.errors import UnsafeModelError

        raise UnsafeModelError(
            f"Loading {model_file.path} ran out of memory; kmemopt refuses it.", rule="RUN-MEMORY"
        ) from None
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OSError,
        RuntimeError,
        NotImplementedError,
        OverflowError,
        RecursionError,
        UnicodeError,
        ZeroDivisionError,
        AssertionError,
    ) as exc:
        from kmemopt.errors import clip

        raise MalformedModelError(
            f"Keras could not load {model_file.path} ({type(exc).__name__}: {clip(str(exc), 200)}); the file is damaged "
            "or not a model this Keras can read.",
            rule=RULE_LOAD_FAILED,
        ) from exc
