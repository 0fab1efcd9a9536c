"""Writing files atomically: a temp file in the target folder, fsync, then rename. Never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kmemopt.errors import UsageError


def check_writable_dir(target: Path) -> Path:
    folder = target.resolve().parent
    if not folder.is_dir():
        raise UsageError(f"The output folder {folder} does not exist; create it first.")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"The output folder {folder} is not writable.")
    return folder


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it is renamed onto `target`, else removed."""
    target = Path(target)
    if target.exists() and not target.is_file():
        # Renaming onto a device or a pipe would replace it (as root, /dev/null itself).
        raise UsageError(f"{target} exists and is not a regular file; kmemopt writes files only.")
    folder = check_writable_dir(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=(suffix or target.suffix) + ".tmp", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write text atomically; a device or pipe (/dev/stdout, /dev/null, a FIFO) is written in place."""
    path = Path(target)
    if path.exists() and not path.is_file() and not path.is_dir():
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
