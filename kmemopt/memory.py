"""Handing freed memory back to the operating system between the stages of a long job."""

from __future__ import annotations

import gc


def release_memory() -> None:
    """Collect freed objects (models hold reference cycles) and return glibc's free heap to the OS."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
