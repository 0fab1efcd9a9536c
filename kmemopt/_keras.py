"""The one place kmemopt imports Keras: quiet, TensorFlow backend unless the user chose another."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence what native code writes to fd 2 (TensorFlow's C++ start-up lines ignore its env vars)."""
    if os.environ.get("KMEMOPT_DEBUG"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. captured by a test runner)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras():
    """Import and return `keras`, with TensorFlow's start-up chatter silenced."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with quiet_native_stderr():
            import keras  # noqa: F401  (imports the backend: its native start-up happens here)
    import keras

    return keras
