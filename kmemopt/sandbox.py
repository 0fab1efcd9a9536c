"""One runner for kmemopt's child processes: spawn, memory limit, timeout, parent death, errors by type.

Three kinds of work run in a child, all through `run_child`:

- the metadata reader (`kmemopt.load.archive`): h5py and zipfile parse a hostile file's bytes in C,
  where a crafted file can loop forever, crash or allocate without bound; the child imports neither
  Keras nor TensorFlow, so it starts in a fraction of a second;
- shrink's reload check (`kmemopt.write.save`): the written file loaded with plain
  `keras.models.load_model` in a fresh interpreter;
- `profile --measure` (`kmemopt.profiling._child`): the model run for real, its peaks measured.

The child is always a fresh interpreter (`python -m kmemopt.sandbox MODULE:FUNCTION`, fork+exec in C
by `subprocess`), never a `fork()` of this process: a fork copies a process whose other threads
(TensorFlow's, once Keras is imported) may hold locks the copy can never release.

- **Memory.** The parent watches the child's resident memory (`/proc/<pid>/status`, every 20 ms) and
  kills it past `max_memory_bytes`. `RLIMIT_AS` cannot be the limit: TensorFlow and CUDA reserve far
  more address space than they use (tens of GiB on a GPU machine). `RLIMIT_DATA` (private writable
  memory; set in the child to the limit plus `DATA_SLACK`) is the backstop for the moment between two
  looks, and the one limit left if the parent dies: an allocation past it fails with MemoryError or
  TensorFlow's ResourceExhaustedError instead of taking the machine (not on a GPU, where the driver
  maps host memory of its own).
- **Time.** Past `timeout_s` the child's process group (it has its own session) is killed.
- **Parent death.** The child asks the kernel for SIGTERM when the parent dies (`PR_SET_PDEATHSIG`),
  removes its scratch folder and exits; a thread watching `getppid()` does the same if the interpreter
  is busy in C code. Nothing outlives a SIGKILLed kmemopt.
- **Scratch.** Each child gets a private folder (`scratch_dir()`, also its TMPDIR), removed by the child
  and again by the parent however the child ended.
- **Data.** The request and the result travel through pipes (a JSON header line, then NumPy arrays in
  `.npy` format, never pickles); the child's stdout is kept for the result only (what libraries print
  goes to stderr).
- **Errors.** A failure in the child comes back as its type, never guessed from its message: a
  `KmemoptError` is sent as its class (module and name), exit code, rule and place, and raised again in
  the parent as that same class; MemoryError (or TensorFlow's ResourceExhaustedError) under the limit
  is `RunLimitExceeded` (RUN-MEMORY); anything else is `ChildFailed` (exit 4, a bug), as is a child
  killed by a signal from outside (`ChildFailed.signal`). The child's traceback is chained
  (`raise ... from ChildTraceback(text)`), so `--debug` shows it.

The function a child runs takes `(request, arrays)` and returns `(result, arrays)`; only modules of
kmemopt itself can be named, and the child imports nothing a model file names, nor anything from the
folder it was started in.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmemopt.errors import ExitCode, KmemoptError, UnsafeModelError

# The default memory limit: half of the machine's physical memory. A fixed share of what is installed
# (not of what is free at this moment) gives the same verdict on the same machine every time, and the
# other half stays for the operating system, the framework itself (about 0.7 GiB of TensorFlow that the
# static estimate does not count), the parent process and the estimate's own error.
DEFAULT_MEMORY_FRACTION = 0.5
# The default time one child may run: generous for a CPU train step of a large model (ResNet50 at batch
# 32 takes about 31 s here) and short enough that a stuck child does not hold a CI job for hours.
DEFAULT_TIMEOUT_S = 900.0
# RLIMIT_DATA is the backstop above the watched limit: room for what the framework maps without
# touching it (malloc arenas, thread stacks) so that only a real excess trips it.
DATA_SLACK = 2 * 1024**3
POLL_S = 0.02
RULE_MEMORY = "RUN-MEMORY"
RULE_TIME = "RUN-TIME"
PHASE_PREFIX = "kmemopt-phase "
ENV_PARENT = "KMEMOPT_SANDBOX_PARENT"
ENV_SCRATCH = "KMEMOPT_SANDBOX_SCRATCH"
ENV_DATA_LIMIT = "KMEMOPT_SANDBOX_DATA_LIMIT"
STDERR_TAIL = 64 * 1024
# How a child starts; the target ("module:function") is appended. Not `python -m`, which puts the
# current folder first on sys.path: a `numpy.py` or `h5py.py` in the folder kmemopt is run from (say,
# beside a model that came with it) would be imported by the child. The bootstrap drops that entry.
_BOOTSTRAP = (
    "import sys\n"
    "if sys.path[:1] == ['']: del sys.path[0]\n"
    "from kmemopt.sandbox import child_main\n"
    "child_main(sys.argv[1])"
)
CHILD_COMMAND = (sys.executable, "-c", _BOOTSTRAP)


class ChildFailed(KmemoptError):
    """The child process failed in a way that is not the model's fault (exit 4, a bug)."""

    exit_code = ExitCode.INTERNAL
    # The signal that ended the child, when one did (a crash in C code, the out-of-memory killer, a user).
    signal: int | None = None


class ChildTraceback(Exception):
    """The child's traceback text, chained under the error the parent raises (shown by --debug)."""


class RunLimitExceeded(UnsafeModelError):
    """The child passed its memory limit or its timeout and was stopped (exit 3)."""

    peak_rss_bytes: int = 0

    def __init__(self, message: str, *, rule: str, peak_rss_bytes: int = 0):
        super().__init__(message, rule=rule)
        self.peak_rss_bytes = peak_rss_bytes


@dataclass(frozen=True)
class ChildResult:
    value: dict[str, Any]
    arrays: list[Any]
    peak_rss_bytes: int
    seconds: float


# --------------------------------------------------------------------------------------------- limits


def default_max_memory() -> int:
    """The memory limit when none is given: DEFAULT_MEMORY_FRACTION of physical memory."""
    import psutil

    return int(psutil.virtual_memory().total * DEFAULT_MEMORY_FRACTION)


def resolve_max_memory(value: int | str | None) -> int:
    """Bytes from `--max-memory` (a size such as "8GiB" or an int), else the default."""
    if value is None:
        return default_max_memory()
    from kmemopt.units import parse_size

    limit = parse_size(value) if isinstance(value, str) else int(value)
    if limit <= 0:
        from kmemopt.errors import UsageError

        raise UsageError(f"--max-memory must be a positive size such as 8GiB. Received: {value!r}.")
    return limit


def refuse_over_limit(estimate_bytes: int, limit_bytes: int, what: str, hint: str) -> None:
    """Exit 3 (RUN-MEMORY) before anything runs when the static estimate is over the limit."""
    if estimate_bytes > limit_bytes:
        from kmemopt.units import format_bytes

        raise UnsafeModelError(
            f"Running the model ({what}) needs about {format_bytes(estimate_bytes)} by the static estimate, "
            f"over the memory limit of {format_bytes(limit_bytes)}; nothing was run. {hint}",
            rule=RULE_MEMORY,
        )


# --------------------------------------------------------------------------------------------- framing


def write_message(stream, header: dict[str, Any], arrays: Sequence[Any] = ()) -> None:
    """One JSON header line, then each array in .npy format (no pickles)."""
    import numpy as np

    head = dict(header, arrays=len(arrays))
    stream.write(json.dumps(head).encode() + b"\n")
    writer = _Writer(stream)
    for a in arrays:
        np.lib.format.write_array(writer, np.ascontiguousarray(a), allow_pickle=False)
    stream.flush()


class _Writer(io.RawIOBase):
    """A plain `write` interface: NumPy then writes a pipe in chunks instead of asking its position."""

    def __init__(self, raw):
        super().__init__()
        self._raw = raw

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._raw.write(b)
        return len(b)


class _Reader(io.RawIOBase):
    """A plain `read` interface: NumPy then reads a pipe in chunks instead of trying to seek it."""

    def __init__(self, raw):
        super().__init__()
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._raw.read(len(b))
        b[: len(data)] = data
        return len(data)


def read_message(stream) -> tuple[dict[str, Any], list[Any]]:
    import numpy as np

    line = stream.readline()
    if not line:
        raise EOFError("no message")
    header = json.loads(line)
    reader = _Reader(stream)
    arrays = [np.lib.format.read_array(reader, allow_pickle=False) for _ in range(int(header.pop("arrays", 0)))]
    return header, arrays


# --------------------------------------------------------------------------------------------- parent


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def _tree_rss(pid: int) -> int:
    """The child's resident memory plus its own children's (a library may start helpers)."""
    total = _rss(pid)
    try:
        import psutil

        for kid in psutil.Process(pid).children(recursive=True):
            total += _rss(kid.pid)
    except Exception:  # noqa: BLE001 - the child may be gone between two looks
        pass
    return total


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def run_child(
    target: str,
    request: dict[str, Any],
    arrays: Sequence[Any] = (),
    *,
    max_memory_bytes: int,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    what: str = "the model",
    env: dict[str, str] | None = None,
    on_phase: Callable[[str], None] | None = None,
    data_limit: bool = True,
    private_keras_home: bool = False,
) -> ChildResult:
    """Run `target` ("module:function") in a child under the limits; return its result or raise its error.

    Past `max_memory_bytes` of resident memory or `timeout_s` seconds the child is killed and
    `RunLimitExceeded` (exit 3, rules RUN-MEMORY / RUN-TIME) is raised, with the peak seen.
    `private_keras_home` gives the child a KERAS_HOME in its scratch folder (Keras writes keras.json there).
    `data_limit=False` leaves RLIMIT_DATA unset (on a GPU the driver maps host memory of its own).
    """
    scratch = Path(tempfile.gettempdir()) / f"kmemopt-{os.getpid()}-{secrets.token_hex(4)}"
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env.setdefault("KERAS_BACKEND", "tensorflow")
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    child_env[ENV_PARENT] = str(os.getpid())
    child_env[ENV_SCRATCH] = str(scratch)
    # The child's temp files (TensorFlow's autograph writes generated source there and removes it only
    # at an interpreter exit the child skips) go in its scratch folder, which the parent removes.
    scratch.mkdir(mode=0o700)
    child_env["TMPDIR"] = str(scratch)
    child_env[ENV_DATA_LIMIT] = str(max_memory_bytes + DATA_SLACK) if data_limit else "0"
    if private_keras_home:
        child_env["KERAS_HOME"] = str(scratch / "keras_home")
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*CHILD_COMMAND, target],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            start_new_session=True,  # its own process group: a timeout kills whatever it started too
        )
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    # Popen sets all three pipes when asked for them; the assert tells the type checker so.
    child_in, child_out, child_err = proc.stdin, proc.stdout, proc.stderr
    assert child_in is not None and child_out is not None and child_err is not None
    out = bytearray()
    err_tail = bytearray()

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            write_message(child_in, request, arrays)
        with contextlib.suppress(BrokenPipeError, OSError):
            child_in.close()

    def collect() -> None:
        while chunk := child_out.read(1 << 16):
            out.extend(chunk)

    def watch_stderr() -> None:
        for line in child_err:
            text = line.decode(errors="replace")
            if text.startswith(PHASE_PREFIX):
                if on_phase is not None:
                    on_phase(text[len(PHASE_PREFIX) :].strip())
                continue
            err_tail.extend(line)
            if len(err_tail) > STDERR_TAIL:
                del err_tail[: len(err_tail) - STDERR_TAIL]

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, collect, watch_stderr)]
    for t in threads:
        t.start()
    peak = 0
    verdict: RunLimitExceeded | None = None
    try:
        while proc.poll() is None:
            rss = _tree_rss(proc.pid)
            peak = max(peak, rss)
            if rss > max_memory_bytes:
                verdict = RunLimitExceeded(
                    f"Running {what} used {rss:,} bytes of memory, over the limit of {max_memory_bytes:,}; "
                    "it was stopped. Raise --max-memory, or lower the batch size.",
                    rule=RULE_MEMORY,
                    peak_rss_bytes=peak,
                )
            elif time.monotonic() - started > timeout_s:
                verdict = RunLimitExceeded(
                    f"Running {what} took longer than {timeout_s:g} s; it was stopped. Raise --timeout.",
                    rule=RULE_TIME,
                    peak_rss_bytes=peak,
                )
            if verdict is not None:
                break
            time.sleep(POLL_S)
    finally:
        # Whatever ends the wait (a verdict, Ctrl-C, an error here), no child outlives it.
        if proc.poll() is None:
            _kill_group(proc)
        for t in threads:
            t.join(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)
    if verdict is not None:
        raise verdict
    seconds = time.monotonic() - started
    stderr = bytes(err_tail).decode(errors="replace")
    try:
        header, result_arrays = read_message(io.BytesIO(bytes(out)))
    except (EOFError, ValueError):
        rc = proc.returncode
        if rc is not None and rc < 0:
            # Killed from outside the limits above (the out-of-memory killer, a user) or crashed in C.
            killed = ChildFailed(
                f"The child process running {what} was killed by signal {-rc} (a crash, the system's "
                "out-of-memory killer, or a user); nothing it did is used."
            )
            killed.signal = -rc
            raise killed from ChildTraceback(stderr)
        last = _last_line(stderr) or f"exit status {rc}"
        raise ChildFailed(f"Running {what} in a child process failed ({_clip(last)}).") from ChildTraceback(stderr)
    if not header.get("ok"):
        raise _error_from(header.get("error") or {}, what, peak)
    return ChildResult(header.get("value") or {}, result_arrays, peak, seconds)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _clip(text: str, limit: int = 240) -> str:
    from kmemopt.errors import clip

    return clip(text, limit)


def _error_from(err: dict[str, Any], what: str, peak: int) -> KmemoptError:
    """The parent's exception for the child's: by type, never by reading the message."""
    kind, message = err.get("type", ""), err.get("message", "")
    cause = ChildTraceback(err.get("traceback", ""))
    exc: KmemoptError
    if err.get("kmemopt"):
        cls = _kmemopt_class(err.get("module", ""), kind) or _class_for_exit_code(err.get("exit_code"))
        exc = cls.__new__(cls)
        # The base initializer only: a subclass's own may take other arguments, and the message,
        # rule and place are all the child's error carried.
        KmemoptError.__init__(exc, message, rule=err.get("rule"), where=err.get("where"))
    elif err.get("memory"):
        exc = RunLimitExceeded(
            f"Running {what} ran out of memory under the limit ({kind}); raise --max-memory or lower the batch size.",
            rule=RULE_MEMORY,
            peak_rss_bytes=peak,
        )
    else:
        exc = ChildFailed(f"Running {what} failed in its child process: {kind}: {_clip(message)}")
    exc.__cause__ = cause
    exc.child_type = kind
    exc.child_traceback = err.get("traceback", "")
    return exc


def _kmemopt_class(module: str, qualname: str) -> type[KmemoptError] | None:
    """The KmemoptError subclass the child named (module and qualified name), if kmemopt defines it."""
    if module != "kmemopt" and not module.startswith("kmemopt."):
        return None
    import importlib

    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) and issubclass(found, KmemoptError) else None


def _class_for_exit_code(code: Any) -> type[KmemoptError]:
    """A class this kmemopt cannot find (a version mismatch): the base class of the same exit code."""
    from kmemopt import errors

    for cls in (errors.UsageError, errors.UnsafeModelError, errors.GateFailed):
        if cls.exit_code == code:
            return cls
    return ChildFailed


# --------------------------------------------------------------------------------------------- child


_CLEANUPS: list[Callable[[], None]] = []


def scratch_dir() -> Path:
    """The child's scratch folder (made on first use): removed at exit, on SIGTERM, and by the parent."""
    path = Path(os.environ.get(ENV_SCRATCH) or tempfile.mkdtemp(prefix="kmemopt-"))
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def phase(name: str) -> None:
    """Tell the parent which phase runs (progress for the user)."""
    sys.stderr.write(f"{PHASE_PREFIX}{name}\n")
    sys.stderr.flush()


def _cleanup_and_exit(code: int) -> None:
    scratch = os.environ.get(ENV_SCRATCH)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    os._exit(code)


def _die_with_parent(parent: int) -> None:
    """The kernel sends SIGTERM when the parent dies; a thread watching getppid() backs it up."""
    signal.signal(signal.SIGTERM, lambda *_: _cleanup_and_exit(143))
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        _cleanup_and_exit(143)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                _cleanup_and_exit(143)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True, name="kmemopt-parent-watch").start()


def _limit_data() -> None:
    limit = int(os.environ.get(ENV_DATA_LIMIT) or 0)
    if limit <= 0:
        return
    import resource

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _is_memory_error(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError"


def _describe(exc: BaseException) -> dict[str, Any]:
    import traceback

    err: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": getattr(exc, "message", None) or str(exc),
        "traceback": "".join(traceback.format_exception(exc))[-16000:],
    }
    if isinstance(exc, KmemoptError):
        err.update(
            kmemopt=True,
            module=type(exc).__module__,
            type=type(exc).__qualname__,
            exit_code=int(exc.exit_code),
            rule=exc.rule,
            where=exc.where,
        )
    elif _is_memory_error(exc):
        err["memory"] = True
    return err


def child_main(target: str) -> int:
    parent = int(os.environ.get(ENV_PARENT) or 0)
    if parent:
        _die_with_parent(parent)
    _limit_data()
    # The result goes to the real stdout; anything a library prints goes to stderr instead.
    result_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    status = 0
    try:
        import importlib

        module_name, _, func_name = target.partition(":")
        if not module_name.startswith("kmemopt."):
            raise ValueError(f"not a kmemopt target: {target!r}")
        func = getattr(importlib.import_module(module_name), func_name)
        request, arrays = read_message(sys.stdin.buffer)
        value, out_arrays = func(request, arrays)
        message: tuple[dict[str, Any], Sequence[Any]] = ({"ok": True, "value": value}, out_arrays)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent as data
        message, status = ({"ok": False, "error": _describe(exc)}, ()), 1
    try:
        write_message(result_out, *message)
        result_out.close()
    finally:
        scratch = os.environ.get(ENV_SCRATCH)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    # os._exit: no interpreter teardown (TensorFlow's can take seconds or crash after the work is done).
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    child_main(sys.argv[1])
