import os
import stat
import threading

import pytest

from kmemopt.errors import UsageError
from kmemopt.fileio import atomic_path, atomic_write_text


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failure_leaves_neither_output_nor_temp(tmp_path):
    target = tmp_path / "model.keras"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_missing_or_read_only_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        atomic_write_text(tmp_path / "nope" / "x.txt", "x")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UsageError, match="not writable"):
            atomic_write_text(locked / "x.txt", "x")


def test_a_pipe_is_written_in_place_never_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo).read()))
    reader.start()
    atomic_write_text(fifo, "report")
    reader.join(timeout=10)
    assert received == ["report"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(UsageError, match="not a regular file"):
        with atomic_path(fifo):
            pass
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
