"""Round 2 of the hostile corpus (tests/hostile.py, `build_round2`) against all four entry points.

Each case runs, in its own process tree, `kmemopt profile`, `kmemopt profile --measure`, `kmemopt shrink`
and `kmemopt.load_model` (a fresh interpreter that turns a KmemoptError into its exit code, and anything
else into exit 4). Every run asserts: no canary fired, nothing secret printed, the expected exit code (never
4) with the expected rule id, one `error:` line and no traceback on a refusal, no terminal escape byte in the
output, the peak RSS of every process of the tree under 3 GiB (tighter for `profile` where the issue says
so), under 60 s, the input unchanged, nothing left in the output folder, in the run's own TMPDIR, or
alive in the run's process group.

Positive controls prove the corpus is live: the format-confusion files' twins run their canary under plain
Keras, and the valid files kmemopt must not refuse are loaded by plain Keras.

Fast tier: `profile` on every case, the three commands that load weights on one case a class. The full
cross product is marked slow (each run that reaches Keras costs 10-25 s on a loaded 2-core machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import RunPool, selected_params, whole_module_runs_here
from hostile import ROUND2_CASE_NAMES, ROUND2_COMMANDS, SECRET, Case2, Corpus2, build_round2
from test_security import KMEMOPT, LAUNCHER

MAX_RSS_BYTES = 3 * 1024**3
MAX_SECONDS = 60  # a guard from the issue, not a speed assertion
HANG_S = 300  # the run is killed past this
# A run whose process group holds more than this is killed at once: the test has failed already, and the
# machine (shared, 24 GiB) must not be pushed into swap by a model kmemopt failed to refuse.
KILL_RSS_BYTES = 4 * 1024**3
# One case a class for the commands that load weights in the fast tier; the others are marked slow.
FAST = frozenset(
    {
        "h5_then_zip_keras",
        "unwritten_lzf_h5",
        "numpy_marker_bytes",
        "input_1e6_by_4",
        "json_escaped_quotes_keras",
        "activation_deserialize_h5",
    }
)

# `profile` in the fast tier: the refusals that cost no framework import (format, config markers: a
# second each), and one case of every other family (each run that reaches Keras costs a TensorFlow
# import). `make test` runs `profile` on every case.
FAST_PROFILE = FAST | frozenset(
    {
        "zip_in_userblock_h5",
        "zip_hdf5_at_512_h5",
        "zip_hdf5_at_1024_h5",
        "zip_named_h5",
        "gzip_zeros_ratio_keras",
        "tensor_marker_bytes",
        "numpy_marker_unicode",
        "long_list_ints",
        "sequential_20k_layers",
        "markup_layer_name",
        "markup_class_name",
        "bom_config",
    }
)

# kmemopt.load_model in a fresh interpreter, its errors mapped to exit codes as the CLI maps them; anything
# that is not a KmemoptError (a raw Keras or h5py exception) is exit 4, which no case accepts.
API = """
import sys
try:
    import kmemopt
    from kmemopt.errors import KmemoptError
    kmemopt.load_model(sys.argv[1])
except KmemoptError as exc:
    print("error: " + str(exc), file=sys.stderr)
    sys.exit(int(exc.exit_code))
except Exception as exc:
    print("error: not a KmemoptError: " + type(exc).__module__ + "." + type(exc).__name__ + ": "
          + ascii(str(exc)[:300]), file=sys.stderr)
    sys.exit(4)
print("ok")
"""
ERROR_RULE = re.compile(r"^error: \[([A-Z0-9-]+)\]")


@dataclass(frozen=True)
class Run:
    rc: int
    stdout: str
    stderr: str
    maxrss_bytes: int
    elapsed_s: float
    timed_out: bool
    out_dir: Path
    tmp_dir: Path
    survivors: bool  # a process of the run's group was still alive after the command returned
    over_memory: bool  # killed because its process group held over KILL_RSS_BYTES

    @property
    def rule(self) -> str | None:
        lines = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        match = ERROR_RULE.match(lines[0]) if lines else None
        return match.group(1) if match else None


def command_line(command: str, case: Case2, out_dir: Path) -> list[str]:
    path = str(case.path)
    if command == "profile":
        return [str(KMEMOPT), "profile", path]
    if command == "measure":
        return [str(KMEMOPT), "profile", path, "--measure", "--batch-size", "2", "--timeout", "240"]
    if command == "shrink":
        return [str(KMEMOPT), "shrink", path, "-o", str(out_dir / "out.keras")]
    return [sys.executable, "-c", API, path]


def _group_rss(pgid: int) -> int:
    """Resident bytes of every process in the group (from /proc; 0 where there is no /proc)."""
    total = 0
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # the fields after the command name: state, ppid, pgrp, ..., rss (22nd)
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return total


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_case(corpus: Corpus2, command: str, case: Case2) -> Run:
    base = corpus.root / "runs" / f"{command}-{case.name}"
    out_dir, tmp_dir = base / "out", base / "tmp"
    out_dir.mkdir(parents=True)
    tmp_dir.mkdir()
    report = base / "rusage.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KMEMOPT_DEBUG")}
    env.update(
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        COLUMNS="200",
        NO_COLOR="1",
        PYTHONPATH="",
        TMPDIR=str(tmp_dir),
        TMP=str(tmp_dir),
        TEMP=str(tmp_dir),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(report), *command_line(command, case, out_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=out_dir,
        start_new_session=True,
    )
    timed_out, over_memory, done = threading.Event(), threading.Event(), threading.Event()

    def watch() -> None:
        while not done.wait(0.25):
            if _group_rss(proc.pid) > KILL_RSS_BYTES:
                over_memory.set()
            elif time.monotonic() - started > HANG_S:
                timed_out.set()
            else:
                continue
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return

    started = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stdout, stderr = proc.communicate()
    finally:
        done.set()
        watcher.join()
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 2  # a child that is exiting gets a moment; one that stays is an orphan
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = _group_alive(proc.pid)
    if survivors:
        os.killpg(proc.pid, signal.SIGKILL)
    usage = json.loads(report.read_text()) if report.exists() else {"rc": proc.returncode, "maxrss_kb": 0}
    return Run(
        usage["rc"],
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
        usage["maxrss_kb"] * 1024,
        elapsed,
        timed_out.is_set(),
        out_dir,
        tmp_dir,
        survivors,
        over_memory.is_set(),
    )


@pytest.fixture(scope="session")
def corpus2(tmp_path_factory, keras) -> Corpus2:
    return build_round2(tmp_path_factory.mktemp("hostile2"), keras)


@pytest.fixture(scope="session")
def digests2(corpus2) -> dict[str, str]:
    return {c.name: _digest(c.path) for c in corpus2.cases}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def runs2(request, corpus2):
    """Every selected run started at once on a small pool (the slow ones first); each test waits for its own."""
    by_name = {c.name: c for c in corpus2.cases}
    pool = RunPool(lambda command, name: run_case(corpus2, command, by_name[name]))
    if whole_module_runs_here(request.config):
        pairs = [(p["command"], p["case_name"]) for p in selected_params(request.session, "test_round2_case")]
        pool.submit_all(sorted(pairs, key=lambda p: p[0] == "profile"))
    yield pool.result
    pool.close()


# The whole cross product (35 cases x 4 entry points, about 30 CPU-minutes) runs with KMEMOPT_FULL_CORPUS=1;
# by default `profile` takes every case and the three commands that load weights take one case a class.
FULL_CORPUS = os.environ.get("KMEMOPT_FULL_CORPUS") == "1"


# Of the runs above, the fast tier leaves out those that get past the checks into Keras (a TensorFlow import,
# 7-10 CPU-seconds each) where it checks the same elsewhere: the commands that load weights on the cases
# that reach Keras keep one run (the library call); of the two markup names `profile` keeps the layer's
# (the class's is test_escaping's); a zip named .h5 is the polyglot family's (h5_then_zip_keras stays),
# a BOM before the config is test_config_safety's, an allocating input test_run_limits', and a compression
# bomb test_format_confusion's (in this process). `make test` runs them all.
SLOW_RUNS = frozenset(
    {
        (command, name)
        for command in ("measure", "shrink", "api")
        for name in ("unwritten_lzf_h5", "input_1e6_by_4", "activation_deserialize_h5")
        if (command, name) != ("api", "activation_deserialize_h5")
    }
    | {
        ("profile", name)
        for name in ("markup_class_name", "zip_named_h5", "bom_config", "input_1e6_by_4", "gzip_zeros_ratio_keras")
    }
)


def _params():
    for name in ROUND2_CASE_NAMES:
        for command in ROUND2_COMMANDS:
            extra = command != "profile" and name not in FAST or name == "convnext_tiny"
            slow = extra or (command == "profile" and name not in FAST_PROFILE) or (command, name) in SLOW_RUNS
            marks = [pytest.mark.slow] if slow else []
            if extra and not FULL_CORPUS:
                marks.append(pytest.mark.skip(reason="one case a class by default; KMEMOPT_FULL_CORPUS=1 runs all"))
            yield pytest.param(command, name, id=f"{command}-{name}", marks=marks)


@pytest.mark.parametrize(("command", "case_name"), list(_params()))
def test_round2_case(command, case_name, corpus2, runs2, digests2):
    case = next(c for c in corpus2.cases if c.name == case_name)
    expect = case.expect[command]
    run = runs2(command, case_name)
    with open(corpus2.root / "runs.jsonl", "a") as log:  # peak RSS and time of every run, for the docs
        log.write(
            json.dumps(
                {
                    "command": command,
                    "case": case_name,
                    "rc": run.rc,
                    "rule": run.rule,
                    "maxrss_bytes": run.maxrss_bytes,
                    "elapsed_s": round(run.elapsed_s, 2),
                }
            )
            + "\n"
        )
    output = run.stdout + run.stderr
    context = (
        f"{command} {case.name} ({case.note}): rc={run.rc} in {run.elapsed_s:.1f} s, peak RSS "
        f"{run.maxrss_bytes / 2**30:.2f} GiB\n--- stdout\n{run.stdout[-2000:]}\n--- stderr\n{run.stderr[-3000:]}"
    )

    assert not run.over_memory, f"killed: its processes held over {KILL_RSS_BYTES / 2**30:.0f} GiB\n{context}"
    assert not run.timed_out, context
    assert corpus2.fired() == [], f"code from the file ran: {corpus2.fired()}\n{context}"
    assert run.rc in expect.codes, f"expected exit {sorted(expect.codes)}\n{context}"
    assert "Traceback (most recent call last)" not in output, context
    assert SECRET not in output, context
    assert "\x1b" not in output and "\x07" not in output, f"a terminal escape reached the output\n{context}"
    limit = case.profile_max_rss if command == "profile" and case.profile_max_rss else MAX_RSS_BYTES
    assert run.maxrss_bytes < limit, f"peak RSS over {limit / 2**30:.2f} GiB\n{context}"
    assert run.elapsed_s < MAX_SECONDS, f"over {MAX_SECONDS} s\n{context}"
    if run.rc != 0:
        lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"not one sentence\n{context}"
        assert expect.rule_ok(run.rule), f"expected rule {expect.rules}, got {run.rule}\n{context}"
        if case.klass == "time":  # the cause, not a guess at one
            assert "HDF5 structures" not in output, context
        assert run.stdout.strip() == "", context
    assert _digest(case.path) == digests2[case.name], f"the input was modified\n{context}"
    leftovers = sorted(p.name for p in run.out_dir.iterdir())
    assert leftovers == (["out.keras"] if command == "shrink" and run.rc == 0 else []), f"left: {leftovers}\n{context}"
    assert sorted(p.name for p in run.tmp_dir.iterdir()) == [], f"left in TMPDIR\n{context}"
    assert not run.survivors, f"a process of the run outlived it\n{context}"


def test_round2_case_names_match(corpus2):
    assert [c.name for c in corpus2.cases] == list(ROUND2_CASE_NAMES)
    assert {c.klass for c in corpus2.cases} == {"format", "weights", "config", "run", "time", "also"}


def _plain_keras(path: Path, safe_mode: bool) -> subprocess.CompletedProcess:
    code = (
        "import sys, keras\n"
        "try:\n    m = keras.models.load_model(sys.argv[1], safe_mode=sys.argv[2] == '1')\n"
        "    print('LOADED', [getattr(getattr(x, 'activation', None), '__name__', None) for x in m.layers])\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", code, str(path), "1" if safe_mode else "0"],
        capture_output=True,
        text=True,
        timeout=HANG_S,
        env=env,
    )


@pytest.mark.slow  # a positive control (plain Keras in a child): `make test` runs it
def test_format_confusion_canaries_are_live(corpus2):
    """Positive control: plain Keras, picking its loader by the file name, runs the part kmemopt must refuse."""
    controls = {c.name: c.control for c in corpus2.cases if c.control is not None}
    assert len(controls) == 4
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(controls, pool.map(lambda p: _plain_keras(p, safe_mode=False), controls.values())))
    fired = sorted(p.name for p in (corpus2.controls / "canaries").iterdir())
    assert fired == sorted(controls), {k: v.stdout[-300:] + v.stderr[-300:] for k, v in done.items()}


@pytest.mark.parametrize(
    "case_name",
    [
        # positive controls (plain Keras in a child, a TensorFlow import each): `make test` runs them
        pytest.param("markup_layer_name", marks=pytest.mark.slow),
        pytest.param("bom_config", marks=pytest.mark.slow),
        pytest.param("bom_config_and_metadata", marks=pytest.mark.slow),
        pytest.param("convnext_tiny", marks=pytest.mark.slow),
    ],
)
def test_plain_keras_loads_what_kmemopt_must_accept(corpus2, case_name):
    """A refusal of these files would be a false one: plain Keras, in safe mode, loads them."""
    case = next(c for c in corpus2.cases if c.name == case_name)
    assert case.keras_loads
    done = _plain_keras(case.path, safe_mode=True)
    assert "LOADED" in done.stdout, done.stdout[-500:] + done.stderr[-500:]


@pytest.mark.slow  # a positive control (plain Keras in a child): `make test` runs it
def test_activation_strings_resolve_under_plain_keras(corpus2):
    """Positive control: plain Keras, in safe mode, turns these strings into non-activation Keras functions."""
    cases = [c for c in corpus2.cases if c.keras_resolves]
    assert len(cases) == 2
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda c: _plain_keras(c.path, safe_mode=True), cases))
    for case, result in zip(cases, done, strict=True):
        assert f"'relu', '{case.keras_resolves}']" in result.stdout, result.stdout[-500:] + result.stderr[-500:]


def test_markup_layer_name_is_shown_as_text(corpus2, runs2, cli):
    """The layer name reaches the table as text (a markup-interpreting printer would eat "[bold"), and the
    JSON report holds it exactly (JSON escapes the control characters)."""
    from hostile import MARKUP_NAME

    run = runs2("profile", "markup_layer_name")
    assert run.rc == 0, run.stderr
    assert "[bold" in run.stdout
    assert "\nok: all good" not in run.stdout  # the newline in the name is shown, not printed
    path = next(c.path for c in corpus2.cases if c.name == "markup_layer_name")
    done = cli("profile", path, "-f", "json")  # in this process: the run above was the one in its own
    assert done.exit_code == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert MARKUP_NAME in [layer["name"] for layer in json.loads(done.stdout)["layers"]]


def test_round2_bombs_are_real(corpus2):
    """The HDF5 cases declare what they say: 3.6 GB kernels storing nothing, one chunk, or 1,000x zeros."""
    import io
    import zipfile

    import h5py

    def weights(name):
        path = next(c.path for c in corpus2.cases if c.name == name)
        if path.suffix == ".h5":
            return h5py.File(path, "r")["model_weights/dense_0/dense_0/kernel"]
        with zipfile.ZipFile(path) as zf:
            return h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r")["layers/dense_0/vars/0"]

    declared = 30_000 * 30_000 * 4
    assert weights("unwritten_gzip_keras").id.get_storage_size() == 0
    assert weights("unwritten_lzf_h5").id.get_storage_size() == 0
    assert weights("unwritten_lzf_h5").compression == "lzf"
    assert weights("decoy_keras").shape == (1,)
    partial = weights("partial_chunks_keras")
    assert partial.id.get_num_chunks() == 1 and 0 < partial.id.get_storage_size() <= 4_000_000
    for name in ("gzip_zeros_ratio_keras", "gzip_zeros_ratio_h5"):
        ds = weights(name)
        assert ds.id.get_num_chunks() == 900 and ds.compression == "gzip"
        assert declared / ds.id.get_storage_size() > 1000
        assert not ds[:1000, :1000].any()
