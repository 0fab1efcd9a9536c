"""kmemopt.sandbox's runner, on its own: errors come back by type, the time and memory limits stop a
child and leave nothing behind, and the metadata reader runs in a spawned child (never a fork).

The children here run small functions of this file's `TARGETS`, loaded into the child as the module
`kmemopt._test_targets` by a prefix to the runner's own bootstrap: they start in well under a second.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import psutil
import pytest

from kmemopt import sandbox
from kmemopt.errors import UnsafeModelError, UsageError
from kmemopt.load import archive

MiB = 1024**2
GiB = 1024**3

TARGETS = """
import sys
import time

import numpy as np

from kmemopt.errors import UnsafeModelError, UsageError
from kmemopt.write.save import ReloadFailed


def echo(request, arrays):
    return {"request": request}, [a * 2 for a in arrays]


def raise_usage(request, arrays):
    # A message that names another class and a rule: the parent must not read it.
    raise UsageError("UnsafeModelError [RUN-MEMORY] ran out of memory: only the type counts.")


def raise_unsafe(request, arrays):
    raise UnsafeModelError("The file names a module.", rule="TRUST-CODE", where="layers/dense")


def raise_reload_failed(request, arrays):
    raise ReloadFailed("The written model did not reload.")


def raise_value_error(request, arrays):
    raise ValueError("a bug in kmemopt")


def raise_memory_error(request, arrays):
    raise MemoryError


def sleep(request, arrays):
    time.sleep(request["seconds"])
    return {}, []


def allocate(request, arrays):
    block = np.ones(request["bytes"] // 8)  # touched: resident
    time.sleep(request["hold_s"])
    return {"sum": float(block.sum())}, []


def reader_modules(request, arrays):
    from kmemopt.load.archive import read_in_child

    value, _ = read_in_child(request, arrays)
    heavy = [m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules]
    return {"format": value["format"], "heavy": heavy}, []
"""


@pytest.fixture(autouse=True)
def fresh_reads():
    """Every test here reads its files with the reading child: nothing remembered from an earlier test."""
    archive.forget_reads()
    yield
    archive.forget_reads()


@pytest.fixture()
def targets(tmp_path, monkeypatch) -> str:
    """Child processes can run `kmemopt._test_targets:<function>` (the functions of TARGETS)."""
    source = tmp_path / "targets.py"
    source.write_text(TARGETS)
    prefix = (
        "import sys, types\n"
        "import kmemopt\n"
        "module = types.ModuleType('kmemopt._test_targets')\n"
        f"exec(compile(open({str(source)!r}).read(), {str(source)!r}, 'exec'), module.__dict__)\n"
        "sys.modules[module.__name__] = module\n"
    )
    command = sandbox.CHILD_COMMAND
    monkeypatch.setattr(sandbox, "CHILD_COMMAND", (*command[:-1], prefix + command[-1]))
    return "kmemopt._test_targets"


def run(target: str, request: dict | None = None, arrays=(), **limits):
    limits.setdefault("max_memory_bytes", 2 * GiB)
    limits.setdefault("timeout_s", 120)
    return sandbox.run_child(target, request or {}, arrays, **limits)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


# ------------------------------------------------------------------------------------- results and errors


def test_request_and_arrays_travel_both_ways(targets):
    done = run(f"{targets}:echo", {"name": "x", "n": [1, 2]}, [np.arange(6, dtype="int32").reshape(2, 3)])
    assert done.value == {"request": {"name": "x", "n": [1, 2]}}
    (back,) = done.arrays
    assert back.dtype == np.int32 and back.tolist() == [[0, 2, 4], [6, 8, 10]]
    assert done.peak_rss_bytes > 0


def test_usage_error_comes_back_as_usage_error_whatever_its_message_says(targets):
    with pytest.raises(UsageError) as info:
        run(f"{targets}:raise_usage")
    assert type(info.value) is UsageError and info.value.exit_code == 2
    assert info.value.rule is None and info.value.child_type == "UsageError"
    assert info.value.message.startswith("UnsafeModelError [RUN-MEMORY]")
    assert "raise_usage" in str(info.value.__cause__)  # the child's traceback, for --debug


def test_unsafe_model_error_keeps_its_rule_and_place(targets):
    with pytest.raises(UnsafeModelError) as info:
        run(f"{targets}:raise_unsafe")
    assert type(info.value) is UnsafeModelError and info.value.exit_code == 3
    assert (info.value.rule, info.value.where) == ("TRUST-CODE", "layers/dense")


def test_a_kmemopt_error_defined_outside_errors_keeps_its_class(targets):
    from kmemopt.write.save import ReloadFailed

    with pytest.raises(ReloadFailed) as info:
        run(f"{targets}:raise_reload_failed")
    assert info.value.exit_code == 4 and info.value.message == "The written model did not reload."


def test_any_other_error_is_a_bug_exit_4(targets):
    with pytest.raises(sandbox.ChildFailed) as info:
        run(f"{targets}:raise_value_error")
    assert info.value.exit_code == 4 and info.value.child_type == "ValueError" and info.value.signal is None


def test_memory_error_under_the_limit_is_run_memory(targets):
    with pytest.raises(sandbox.RunLimitExceeded) as info:
        run(f"{targets}:raise_memory_error")
    assert info.value.rule == sandbox.RULE_MEMORY and info.value.exit_code == 3


def test_only_kmemopt_modules_can_be_run(targets):
    with pytest.raises(sandbox.ChildFailed) as info:
        run("os:getcwd")
    assert "not a kmemopt target" in info.value.message


# ------------------------------------------------------------------------------------- limits


def test_past_its_timeout_a_child_is_stopped_and_leaves_nothing(targets, tmp_path, monkeypatch):
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    before = _children()
    started = time.monotonic()
    with pytest.raises(sandbox.RunLimitExceeded) as info:
        run(f"{targets}:sleep", {"seconds": 120}, timeout_s=1)
    assert info.value.rule == sandbox.RULE_TIME and info.value.exit_code == 3
    assert time.monotonic() - started < 60
    assert _children() <= before
    assert list(scratch_root.iterdir()) == []


def test_over_its_memory_limit_a_child_is_stopped(targets, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = _children()
    with pytest.raises(sandbox.RunLimitExceeded) as info:
        run(f"{targets}:allocate", {"bytes": 600 * MiB, "hold_s": 60}, max_memory_bytes=200 * MiB)
    assert info.value.rule == sandbox.RULE_MEMORY and info.value.exit_code == 3
    assert 200 * MiB < info.value.peak_rss_bytes < 2 * GiB
    assert _children() <= before
    assert list(tmp_path.iterdir()) == [tmp_path / "targets.py"]


def test_under_its_memory_limit_a_child_reports_its_peak(targets):
    done = run(f"{targets}:allocate", {"bytes": 200 * MiB, "hold_s": 0.5}, max_memory_bytes=1 * GiB)
    assert done.value == {"sum": float(200 * MiB // 8)}
    assert 200 * MiB <= done.peak_rss_bytes < 1 * GiB


# ------------------------------------------------------------------------------------- the metadata reader


def test_the_metadata_reader_never_forks_and_reads_in_a_child(mlp_path, monkeypatch):
    def no_fork():
        raise AssertionError("os.fork called")

    def not_here(*args, **kwargs):
        raise AssertionError("read in the parent")

    in_process = archive.read_model_file(mlp_path, archive.Limits(max_read_seconds=0))
    monkeypatch.delenv("KMEMOPT_MAX_READ_SECONDS", raising=False)
    monkeypatch.setattr(os, "fork", no_fork)
    monkeypatch.setattr(archive, "_read_by_content", not_here)  # the parent's copy only
    assert archive.read_model_file(mlp_path) == in_process


def _count_reading_children(monkeypatch) -> list[str]:
    started: list[str] = []
    real = sandbox.run_child

    def counted(target, *args, **kwargs):
        started.append(target)
        return real(target, *args, **kwargs)

    monkeypatch.setattr(sandbox, "run_child", counted)
    monkeypatch.delenv("KMEMOPT_MAX_READ_SECONDS", raising=False)
    return started


def test_a_file_read_again_unchanged_costs_no_second_child(mlp_path, tmp_path, monkeypatch):
    started = _count_reading_children(monkeypatch)
    link = tmp_path / "same.keras"
    link.symlink_to(mlp_path)
    first = archive.read_model_file(mlp_path)
    first.config["config"]["name"] = "edited by a caller"  # a caller's edit is its own copy
    again = archive.read_model_file(link)
    assert started == [archive.READ_TARGET]
    assert again.path == link  # named as this caller named it
    assert again.config == archive.read_model_file(mlp_path, archive.Limits(max_read_seconds=0)).config
    assert again.weights == first.weights and again.identity == first.identity


def test_a_file_rewritten_in_place_is_read_again(mlp_path, tmp_path, monkeypatch):
    """Same size and modification time put back: the status-change time still tells the bytes apart."""
    started = _count_reading_children(monkeypatch)
    path = tmp_path / "m.keras"
    path.write_bytes(mlp_path.read_bytes())
    archive.read_model_file(path)
    before = path.stat()
    with open(path, "r+b") as fh:  # the same bytes written again: a rewrite all the same
        fh.write(fh.read())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    archive.read_model_file(path)
    assert started == [archive.READ_TARGET] * 2


def test_a_refused_file_is_read_and_refused_every_time(tmp_path, monkeypatch):
    started = _count_reading_children(monkeypatch)
    path = tmp_path / "junk.keras"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 200)
    for _ in range(2):
        with pytest.raises((UnsafeModelError, archive.MalformedModelError)):
            archive.read_model_file(path)
    assert started == [archive.READ_TARGET] * 2


def test_the_metadata_reader_imports_no_framework(targets, mlp_path):
    import dataclasses

    with open(mlp_path, "rb") as fh:
        identity = archive.file_identity(fh)
    request = {
        "path": str(mlp_path),
        "size": mlp_path.stat().st_size,
        "identity": list(identity),
        "limits": dataclasses.asdict(archive.DEFAULT_LIMITS),
    }
    done = run(f"{targets}:reader_modules", request)
    assert done.value == {"format": "keras", "heavy": []}


def test_a_module_in_the_current_folder_is_not_imported_by_the_child(mlp_path, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "h5py.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KMEMOPT_MAX_READ_SECONDS", raising=False)
    assert archive.read_model_file(mlp_path).format == "keras"
    assert not marker.exists()


def test_a_reader_killed_by_a_signal_is_refused_as_a_crash(mlp_path, monkeypatch):
    kill = "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    monkeypatch.setattr(sandbox, "CHILD_COMMAND", (*sandbox.CHILD_COMMAND[:-1], kill))
    monkeypatch.delenv("KMEMOPT_MAX_READ_SECONDS", raising=False)
    with pytest.raises(UnsafeModelError) as info:
        archive.read_model_file(mlp_path)
    assert info.value.rule == archive.RULE_READ_LIMITS
    assert "crashed the HDF5 reader (signal 11)" in info.value.message
