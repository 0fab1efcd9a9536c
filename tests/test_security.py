"""The hostile corpus (tests/hostile.py) against the real CLI, each run in its own subprocess.

For every case and command: the documented exit code (with the rule id for refusals), no canary
fired, no traceback, no secret in the output, the input unchanged, no output or temp file left by a
refused `shrink`, and a bounded peak RSS (the child's own high-water mark, measured by a tiny launcher
so the test process's memory does not count). A command the corpus runs that is missing from the installed
CLI (or from its --help) fails every one of its cases: it never skips them.
"""

from __future__ import annotations

import hashlib
import json
import os
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
from hostile import CASE_NAMES, SECRET, Case, Corpus, build_corpus

ROOT = Path(__file__).resolve().parent.parent
KMEMOPT = ROOT / ".venv" / "bin" / "kmemopt"
if not KMEMOPT.exists():  # an install outside the repository's .venv
    KMEMOPT = Path(sys.executable).with_name("kmemopt")

# A hang guard, not a speed assertion: far above what any case needs, far below "forever".
TIMEOUT_S = 300
# Peak RSS of one process of the command tree. Keras + TensorFlow alone take about 0.8 GB here; the
# corpus's bombs would take 4 GiB (zip bomb) to terabytes (2**40 units) if anything were allocated.
MAX_RSS_BYTES = int(2.5 * 1024**3)

COMMANDS = ("profile", "measure", "shrink")
# profile runs the whole corpus. profile --measure and shrink run the cases where they get further than
# profile (the clean model and the bombs profile accepts) plus one case of each family: their refusals
# are the same checks, and each of their runs that reaches Keras costs 10-25 s on a loaded 2-core machine.
# KMEMOPT_FULL_CORPUS=1 runs all three commands on every case.
LOAD_CASES = {
    "measure": frozenset(
        {
            "clean",
            "shape_bomb",
            "dense_units_2pow40",
            "lambda_nested",
            "lambda_legacy_h5",
            "popen_in_compile_config",
            "import_on_path",
            "zip_bomb_weights",
            "h5_external_link",
            "truncated_keras",
            "savedmodel_folder",
        }
    ),
    "shrink": frozenset(
        {
            "clean",
            "shape_bomb",
            "dense_units_2pow40",
            "lambda_nested",
            "zip_bomb_weights",
            "h5_external_link",
        }
    ),
}
FULL_CORPUS = bool(os.environ.get("KMEMOPT_FULL_CORPUS"))


def selected(command: str, name: str) -> bool:
    return command == "profile" or FULL_CORPUS or name in LOAD_CASES[command]


# The fast tier (-m "not slow") runs `profile` on one case of each rule and on every case refused as
# malformed, accepted, or a usage error; `make test` runs every case with all three commands. Left out:
# - `profile --measure` and `shrink` (each a CLI process; on the models that get past every check, the
#   clean one and the bombs `profile` accepts with weights not stored, a TensorFlow import, 7-10 CPU-s):
#   they refuse a file with the checks `profile` runs; the refusal of a model too large to run, made
#   before either runs it, is in test_run_limits' fast tier, and their run of a clean model in
#   test_measure's and test_shrink's;
# - the other cases of a rule (test_security_rules checks the rules in this process, nested places
#   included); of the allowlist's own refusals (TRUST-UNKNOWN, a TensorFlow import each), test_escaping's
#   fast tier runs one through the CLI.
OTHER_CASES_OF_A_RULE = frozenset(
    {
        # TRUST-CODE (lambda_nested and lambda_legacy_h5 stay)
        "lambda_top",
        "lambda_in_wrapper",
        "lambda_keras2_h5",
        "tfsm_layer",
        "typespec_marker",
        # TRUST-FUNCTION (os_system_activation stays)
        "builtins_eval_activation",
        "keras_get_file_activation",
        "keras_unsafe_toggle",
        # TRUST-MODULE (subprocess_popen_layer and import_on_path stay)
        "os_system_class",
        "popen_initializer",
        "popen_constraint",
        "popen_dtype_policy",
        "popen_in_bidirectional",
        "popen_in_compile_config",
        "import_keras_cv_on_path",
        "deep_hidden_object",
        # accepted with no weights stored, as dense_units_2pow40 (which stays): a TensorFlow import
        "input_shape_2pow40",
        # TRUST-UNKNOWN
        "eval_regularizer",
        "keras_private_module_class",
        "registered_function_as_class",
        # ARCHIVE-NAME, CONFIG-JSON, HDF5-LINK, HDF5-EXTERNAL (the first of each stays)
        "zip_absolute",
        "zip_assets_traversal",
        "deep_json_objects",
        "deep_json_legacy_h5",
        "h5_soft_link",
        "h5_external_link_legacy",
        "h5_virtual_dataset",
    }
)


def _slow(command: str, name: str) -> bool:
    return command != "profile" or name in OTHER_CASES_OF_A_RULE


def _case_params():
    for name in CASE_NAMES:
        for command in COMMANDS:
            marks = [pytest.mark.slow] if _slow(command, name) else []
            yield pytest.param(command, name, id=f"{command}-{name}", marks=marks)


# The launcher runs the CLI and reports wait4()'s peak RSS for it (its own and its reaped children's).
# Spawning the CLI straight from pytest would count pytest's own pages (the high-water mark survives
# fork+exec), so the launcher, a small process, does the spawning.
LAUNCHER = """
import json, os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, fh)
"""


@dataclass(frozen=True)
class Run:
    rc: int
    stdout: str
    stderr: str
    maxrss_bytes: int
    elapsed_s: float
    timed_out: bool
    out_dir: Path | None


def command_line(command: str, case: Case, out_dir: Path) -> list[str]:
    if command == "profile":
        return [str(KMEMOPT), "profile", str(case.path)]
    if command == "measure":
        return [str(KMEMOPT), "profile", str(case.path), "--measure", "--batch-size", "2", "--timeout", "240"]
    return [str(KMEMOPT), "shrink", str(case.path), "-o", str(out_dir / "out.keras")]


def run_case(corpus: Corpus, command: str, case: Case) -> Run:
    out_dir = corpus.root / "out" / f"{command}-{case.name}"
    out_dir.mkdir(parents=True)
    report = out_dir.parent / f"{command}-{case.name}.rusage.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KMEMOPT_DEBUG")}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="200", NO_COLOR="1")
    env["KMEMOPT_MAX_READ_SECONDS"] = "5"  # the looping HDF5 case spins this long (the default is 120 s)
    env["PYTHONPATH"] = str(case.pythonpath) if case.pythonpath else ""
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(report), *command_line(command, case, out_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=out_dir,
        start_new_session=True,
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        os.killpg(proc.pid, signal.SIGKILL)

    started = time.monotonic()
    timer = threading.Timer(TIMEOUT_S, kill)
    timer.start()
    try:
        stdout, stderr = proc.communicate()
    finally:
        timer.cancel()
    usage = json.loads(report.read_text()) if report.exists() else {"rc": proc.returncode, "maxrss_kb": 0}
    return Run(
        usage["rc"],
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
        usage["maxrss_kb"] * 1024,
        time.monotonic() - started,
        timed_out.is_set(),
        out_dir,
    )


# What each command of the corpus needs to find in the installed CLI's help.
HELP_NEEDLES = {
    "profile": (["--help"], "profile"),
    "measure": (["profile", "--help"], "--measure"),
    "shrink": (["--help"], "shrink"),
}


def _help_text(args: list[str]) -> str:
    try:
        done = subprocess.run(
            [str(KMEMOPT), *args], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"}
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<{KMEMOPT} {' '.join(args)} did not run: {exc}>"
    return done.stdout + done.stderr


@pytest.fixture(scope="session")
def available() -> dict[str, str | None]:
    """For each command of the corpus: None when the installed CLI has it, else why its cases fail.

    A command missing here fails its cases (a renamed option or a broken install must not turn the whole
    corpus into skips that nobody reads)."""
    if not KMEMOPT.exists():
        return {c: f"{KMEMOPT} is not installed: run `make install`" for c in COMMANDS}
    missing = {}
    for command, (args, needle) in HELP_NEEDLES.items():
        text = _help_text(args)
        missing[command] = (
            None
            if needle in text
            else f"`kmemopt {' '.join(args)}` no longer mentions {needle!r}, so the hostile corpus cannot run "
            f"`{command}`: update HELP_NEEDLES and command_line() in tests/test_security.py.\n{text[-1500:]}"
        )
    return missing


def test_every_command_of_the_corpus_is_in_the_cli(available):
    assert available == dict.fromkeys(COMMANDS), "\n".join(v for v in available.values() if v)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, keras) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("hostile"), keras)


@pytest.fixture(scope="session")
def digests(corpus) -> dict[str, str]:
    return {c.name: _digest(c.path) for c in corpus.cases if c.path.is_file() and not c.path.is_fifo()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def runs(request, corpus, available):
    """Every selected (command, case) run started at once on a small pool; each test waits for its own.

    The runs are independent processes, so overlapping them cuts the wall time of the module. Where this
    process does not run the whole module (xdist handing out single tests), each run starts lazily.
    """
    by_name = {c.name: c for c in corpus.cases}
    pool = RunPool(lambda command, name: run_case(corpus, command, by_name[name]))
    if whole_module_runs_here(request.config):
        pairs = [(p["command"], p["case_name"]) for p in selected_params(request.session, "test_hostile_case")]
        # The slow runs first (those that reach Keras), so the pool does not end on a long tail.
        pairs.sort(key=lambda p: (p[1] not in LOAD_CASES["shrink"], p[0] == "profile"))
        pool.submit_all(
            (command, name)
            for command, name in pairs
            if available.get(command) is None and name in by_name and selected(command, name)
        )
    yield pool.result
    pool.close()


def test_case_names_match_corpus(corpus):
    assert [c.name for c in corpus.cases] == list(CASE_NAMES)


@pytest.mark.parametrize(("command", "case_name"), list(_case_params()))
def test_hostile_case(command, case_name, corpus, runs, available, digests):
    if available[command] is not None:
        pytest.fail(available[command])
    if not selected(command, case_name):
        pytest.skip(f"{command} runs the cases profile accepts and one of each family (KMEMOPT_FULL_CORPUS=1: all)")
    case = next(c for c in corpus.cases if c.name == case_name)
    run = runs(command, case_name)
    with open(corpus.root / "runs.jsonl", "a") as log:  # peak RSS and time of every run, for the docs
        log.write(
            json.dumps(
                {
                    "command": command,
                    "case": case_name,
                    "rc": run.rc,
                    "maxrss_bytes": run.maxrss_bytes,
                    "elapsed_s": round(run.elapsed_s, 2),
                }
            )
            + "\n"
        )
    expected = case.profile if command == "profile" else case.load
    output = run.stdout + run.stderr
    context = f"{command} {case.name}: rc={run.rc}\n--- stdout\n{run.stdout[-2000:]}\n--- stderr\n{run.stderr[-3000:]}"

    assert not run.timed_out, context
    assert corpus.fired() == [], f"code from the file ran: {corpus.fired()}\n{context}"
    assert run.rc == expected, context
    assert "Traceback (most recent call last)" not in output, context
    assert SECRET not in output, context
    assert run.maxrss_bytes < MAX_RSS_BYTES, f"peak RSS {run.maxrss_bytes:,} B\n{context}"
    if expected != 0:
        lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"not one sentence\n{context}"
        assert case.rule is None or f"[{case.rule}]" in run.stderr, context
        assert run.stdout.strip() == "", context
    if case.name in digests:
        assert _digest(case.path) == digests[case.name], f"the input was modified\n{context}"
    leftovers = sorted(p.name for p in run.out_dir.iterdir())
    if command == "shrink" and expected == 0:
        assert leftovers == ["out.keras"], context
    else:
        assert leftovers == [], f"left behind: {leftovers}\n{context}"


def test_shape_bomb_profile_says_weights_not_stored(corpus, runs):
    run = runs("profile", "shape_bomb")
    assert run.rc == 0, run.stderr
    assert "not all stored" in " ".join((run.stdout + run.stderr).split())


def _load_unsafe(path: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys, keras\n"
        "try:\n    keras.models.load_model(sys.argv[1], safe_mode=False)\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=TIMEOUT_S, env=env
    )


@pytest.mark.slow  # a positive control (plain Keras runs each planted canary): `make test` runs it
def test_lambda_canaries_are_live(corpus):
    """Positive control: plain Keras with safe_mode=False runs the planted code, so the corpus is live."""
    fired = corpus.controls / "canaries"
    with ThreadPoolExecutor(max_workers=len(corpus.lambda_controls)) as pool:
        done = dict(zip(corpus.lambda_controls, pool.map(_load_unsafe, corpus.lambda_controls.values()), strict=True))
    assert sorted(p.name for p in fired.iterdir()) == sorted(corpus.lambda_controls), {
        k: v.stdout[-500:] + v.stderr[-500:] for k, v in done.items()
    }


def test_zip_bomb_is_cheap_and_real(corpus):
    """The bomb is a few MB on disk, declares 4 GiB and its stream really inflates (first 64 MiB checked)."""
    import zipfile

    path = next(c.path for c in corpus.cases if c.name == "zip_bomb_weights")
    assert path.stat().st_size < 8 * 1024**2
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.weights.h5")
        assert info.file_size == 4 * 1024**3
        with zf.open(info) as fh:
            total = 0
            while total < 64 * 1024**2:
                chunk = fh.read(1024**2)
                assert chunk == bytes(len(chunk)) and chunk
                total += len(chunk)
