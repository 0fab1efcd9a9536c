"""Writing files atomically: a temp file in the target folder, fsync, then rename. Never half-written."""

from __future__ import annotations

import contextlib
import os
import secrets
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


def _anonymous_file(folder: Path) -> int | None:
    """An unnamed file in `folder` (Linux O_TMPFILE): if the process dies, even by SIGKILL, the
    kernel frees it and nothing is left behind. None where the platform or filesystem lacks it."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        return os.open(folder, flag | os.O_RDWR, 0o666)  # the umask applies, as for a normal file
    except OSError:
        return None


def _name_anonymous(fd: int, name: Path) -> None:
    """linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/<fd>: the documented way to name an O_TMPFILE file.

    Python's os.link calls plain link(2), which would link the /proc symlink itself, unless a
    directory fd is given; an fd of "/" (ignored for absolute paths) makes it use linkat.
    """
    root = os.open("/", os.O_RDONLY)
    try:
        os.link(f"/proc/self/fd/{fd}", name, src_dir_fd=root, follow_symlinks=True)
    finally:
        os.close(root)


def refuse_same_file(output: str | os.PathLike | None, source: str | os.PathLike | None, what: str = "output") -> None:
    """Usage error (exit 2) when `output` is `source` itself: the same path, or the same file reached
    through a symlink or a hard link (same device and inode)."""
    if output is None or source is None:
        return
    out, src = Path(output), Path(source)
    same = out.resolve() == src.resolve()
    if not same and out.exists() and src.exists():
        try:
            same = os.path.samefile(out, src)
        except OSError:
            same = False
    if same:
        raise UsageError(
            f"The {what} {out} is the input file; kmemopt never overwrites its input. Choose another path."
        )


def _exists_error(target: Path) -> UsageError:
    return UsageError(
        f"{target} appeared while kmemopt was writing it (another process?); it was left alone. "
        "Pass --force to replace it, or choose another output."
    )


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "", *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `target` in one rename, else vanishes.

    With `replace=False` the finished file is linked to `target` exclusively (link(2) fails if the
    name exists): a file that appeared meanwhile, such as another kmemopt's output, is never replaced
    (UsageError, exit 2).

    On Linux the temporary is an unnamed file in the target's folder, reachable through
    /proc/<pid>/fd/<n> (also from a child process of ours): a crash, Ctrl-C or SIGKILL leaves neither a
    partial output nor a temp file. It gets a name only at the end, just before the rename. Elsewhere a
    named temp file beside the target is used and removed on any error.
    """
    target = Path(target)
    if target.exists() and not target.is_file():
        # Renaming onto a device or a pipe would replace it (as root, /dev/null itself).
        raise UsageError(f"{target} exists and is not a regular file; kmemopt writes files only.")
    folder = check_writable_dir(target)
    fd = _anonymous_file(folder)
    if fd is not None:
        named = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            yield Path(f"/proc/{os.getpid()}/fd/{fd}")
            os.fsync(fd)
            if not replace:
                try:
                    _name_anonymous(fd, target)  # exclusive: fails if the name exists
                except FileExistsError:
                    raise _exists_error(target) from None
                return
            _name_anonymous(fd, named)
            os.replace(named, target)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                named.unlink()
        return
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=(suffix or target.suffix) + ".tmp", dir=folder)
    os.close(handle)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        if not replace:
            try:
                os.link(tmp_path, target)  # exclusive: fails if the name exists
            except FileExistsError:
                raise _exists_error(target) from None
            return
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
