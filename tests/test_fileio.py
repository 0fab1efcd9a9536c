import os
import stat
import threading

import pytest

from kmemopt.errors import UsageError
from kmemopt.write.fileio import atomic_path, atomic_write_text


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


def test_sigkill_while_writing_leaves_nothing(tmp_path):
    """The temp file is unnamed until the final rename: a killed writer leaves no file at all."""
    import signal
    import subprocess
    import sys

    target = tmp_path / "model.keras"
    code = (
        "import sys, time\n"
        "from kmemopt.write.fileio import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    with open(tmp, 'wb') as fh:\n"
        "        fh.write(b'x' * 1_000_000)\n"
        "    print('written', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(tmp_path.iterdir()) == []


def test_a_child_process_can_read_the_temp_before_it_is_committed(tmp_path):
    """shrink reloads the written temp file in a fresh process before committing it."""
    import subprocess
    import sys

    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"payload")
        read = subprocess.run(
            [sys.executable, "-c", f"print(open({str(tmp)!r}, 'rb').read().decode())"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert read.stdout.strip() == "payload"
        assert not target.exists()
    assert target.read_bytes() == b"payload"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
