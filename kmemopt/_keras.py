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
        backend = os.environ["KERAS_BACKEND"]
        try:
            with quiet_native_stderr():
                import keras  # noqa: F401  (imports the backend: its native start-up happens here)
        except ImportError as exc:
            raise _backend_missing(backend, exc) from exc
        except ValueError as exc:  # Keras's "Unable to import backend : NAME" for an unknown name
            sys.modules.pop("keras", None)
            raise _backend_missing(backend, exc) from exc
    import keras

    return keras


# The Python package each Keras backend needs, and the kmemopt extra that installs it.
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}


def _backend_missing(backend: str, exc: BaseException):
    """A usage error (exit 2) for a KERAS_BACKEND that is unknown or whose package is not installed."""
    from kmemopt.errors import UsageError

    for name in [m for m in sys.modules if m == "keras" or m.startswith("keras.")]:
        del sys.modules[name]  # a half-imported Keras must not be found by the next import
    if backend not in BACKEND_PACKAGES:
        return UsageError(
            f"KERAS_BACKEND={backend!r} is not a Keras backend; set it to one of "
            f"{', '.join(sorted(BACKEND_PACKAGES))} (or unset it for TensorFlow)."
        )
    missing = getattr(exc, "name", None) or BACKEND_PACKAGES[backend]
    extra = backend if backend in ("jax", "torch") else None
    how = f'pip install "kmemopt[{extra}]"' if extra else f"pip install {BACKEND_PACKAGES[backend]}"
    return UsageError(
        f"KERAS_BACKEND={backend} needs the {missing!r} package, which is not installed; install it with "
        f"`{how}` or choose another backend."
    )
