"""Estimate vs measured on JAX (CPU): kmemopt's static peaks and XLA's own accounting, against real peaks.

The TensorFlow suite's models (benchmarks/suite_estimate.py: the six architectures the runtime
constants are fitted to, and some of its held-out ones) are saved to .keras files, then each is run
through `kmemopt profile MODEL -b B -f json --measure` in a child process with `KERAS_BACKEND=jax
JAX_PLATFORMS=cpu` (this process may have imported Keras on TensorFlow). From that one profile:

- kmemopt's estimate: `totals.inference_peak_bytes` / `totals.training_peak_bytes`. Its runtime
  terms (`runtime_*_bytes`) are TensorFlow's (the profile warns so on JAX): the rows show by how much
  they miss JAX's runtime.
- XLA's estimate: `xla_estimate.inference_bytes` / `training_bytes`, the compiled steps' buffers by
  XLA's buffer assignment (no process, framework or compiler memory).
- The measured peak: `measured.inference_peak_bytes` / `training_peak_bytes`, the CPU high-water mark
  above the framework baseline (`kmemopt.profiling.measure`, its children on JAX too).

Batch 8 only (BATCH_SIZES): on a loaded 2-core machine one JAX child takes minutes (it compiles every
step twice, once for XLA's analysis and once to run it). Nothing is carried from an earlier run.
KMEMOPT_BENCH_MODELS=DIR keeps the saved .keras files; KMEMOPT_BENCH_JOBS=N runs N children at a
time; KMEMOPT_BENCH_DEADLINE=HH:MM (UTC) records the children not started by then as not run;
KMEMOPT_BENCH_TIMEOUT=S bounds each measuring child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import suite_estimate as tf_suite

KEY = "estimate_vs_measured_jax"
TITLE = "Estimated vs measured peak memory on JAX (CPU), with XLA's own accounting"
BATCH_SIZES = (8,)
MODELS = tf_suite.MODELS  # the six the (TensorFlow) runtime constants were fitted on
# Held out on JAX: a subset of the TensorFlow suite's held-out models, the cheaper ones to run.
HELD_OUT = ("Xception96", "GRUTextClassifier", "MultiInputOutput", "MixedFloat16CNN", "BertSmall", "ViTSmall")
ESTIMATORS = ("kmemopt", "xla")
BAND = tf_suite.BAND
ROOT = Path(__file__).resolve().parent.parent


def jax_env() -> dict[str, str]:
    return {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def profile_command(path: Path, name: str, b: int, timeout_s: float) -> list[str]:
    command = [sys.executable, "-m", "kmemopt", "profile", str(path), "-b", str(b), "-f", "json", "--measure"]
    command += ["--timeout", str(int(timeout_s))]
    if name in tf_suite.SEQ_LEN:
        command += ["--seq-len", str(tf_suite.SEQ_LEN[name])]
    return command


def _ratio(estimate, measured) -> float | None:
    return round(estimate / measured, 3) if estimate and measured else None


def _error(estimate, measured) -> float | None:
    return round(100 * (estimate - measured) / measured, 1) if estimate and measured else None


def rows_from_profile(name: str, b: int, profile: dict | None, failure: str | None = None) -> list[dict]:
    """Two rows (inference, training) from one JAX profile's JSON: kmemopt's and XLA's estimates beside
    the measured peak. `failure` (the child's one-line error) when there is no profile."""
    profile = profile or {}
    totals = profile.get("totals") or {}
    xla = profile.get("xla_estimate") or {}
    measured = profile.get("measured") or {}
    runs = measured.get("runs") or [{}]
    rows = []
    for phase in ("inference", "training"):
        truth = measured.get(f"{phase}_peak_bytes")
        kmemopt = totals.get(f"{phase}_peak_bytes")
        xla_bytes = xla.get(f"{phase}_bytes")
        row = {
            "model": name,
            "batch_size": b,
            "phase": phase,
            "held_out": name in HELD_OUT,
            "backend": profile.get("backend", "jax"),
            "measured_bytes": truth,
            "kmemopt_bytes": kmemopt,
            "kmemopt_runtime_bytes": totals.get(f"runtime_{phase}_bytes"),
            "kmemopt_ratio": _ratio(kmemopt, truth),
            "kmemopt_error_pct": _error(kmemopt, truth),
            "xla_bytes": xla_bytes,
            "xla_ratio": _ratio(xla_bytes, truth),
            "xla_error_pct": _error(xla_bytes, truth),
            "method": measured.get("method"),
            "status": measured.get("status") or ("failed" if failure else None),
            "measure_seconds": runs[0].get("seconds"),
            "xla_seconds": xla.get("seconds"),
        }
        message = failure or runs[0].get("message")
        if message:
            row["message"] = str(message)[:300]
        rows.append(row)
    return rows


def _one(name: str, path: Path, b: int, deadline: float | None, log) -> list[dict]:
    if deadline is not None and time.time() > deadline:
        rows = rows_from_profile(name, b, None, "not run: the run's deadline (KMEMOPT_BENCH_DEADLINE) had passed")
        for r in rows:
            r["status"] = "not_run"
        return rows
    timeout_s = float(os.environ.get("KMEMOPT_BENCH_TIMEOUT", 1200))
    log(f"  profiling and measuring {name} at batch {b} on JAX")
    started = time.time()
    try:
        done = subprocess.run(
            profile_command(path, name, b, timeout_s),
            env=jax_env(),
            capture_output=True,
            text=True,
            timeout=timeout_s + 600,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return rows_from_profile(name, b, None, "the profile child ran past its time limit")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        log(f"  {name} at batch {b}: exit {done.returncode}: {last}")
        return rows_from_profile(name, b, None, f"exit {done.returncode}: {last}")
    log(f"  {name} at batch {b}: done in {time.time() - started:.0f} s")
    return rows_from_profile(name, b, json.loads(done.stdout))


def run(log) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    import provenance
    from run import machine

    names = MODELS + HELD_OUT
    workdir = Path(os.environ.get("KMEMOPT_BENCH_MODELS") or tempfile.mkdtemp(prefix="kmemopt-bench-jax-"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = tf_suite.save_models(workdir, log, names)
    this_machine = machine()
    deadline = tf_suite._deadline()
    # The fitted six first (the CNNs at 224x224 the longest), then the held-out models.
    order = [(n, b) for n in names for b in BATCH_SIZES]

    def work(key):
        name, b = key
        stamp = {"measured_at": provenance.current(this_machine)}
        return key, [{**r, **stamp} for r in _one(name, paths[name], b, deadline, log)]

    got = {}
    with ThreadPoolExecutor(max_workers=int(os.environ.get("KMEMOPT_BENCH_JOBS", "1"))) as pool:
        for key, rows in pool.map(work, order):
            got[key] = rows
    return [r for key in order for r in got[key]]


# --------------------------------------------------------------------------------------------- report


def _mib(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1024**2:,.1f}" if n < 10 * 1024**2 else f"{n / 1024**2:,.0f}"


def _pct(e) -> str:
    return "-" if e is None else f"{e:+.0f}%"


def summary(rows: list[dict], estimator: str) -> dict:
    """One estimator's figures over the rows with a measurement: in band, under (all, below 0.8x), over 1.25x."""
    rs = [r for r in rows if r.get(f"{estimator}_ratio")]
    under = [r for r in rs if r[f"{estimator}_ratio"] < 1]
    errs = sorted(r[f"{estimator}_error_pct"] for r in rs)
    return {
        "rows": len(rs),
        "in_band": sum(BAND[0] <= r[f"{estimator}_ratio"] <= BAND[1] for r in rs),
        "under": len(under),
        "under_band": sum(r[f"{estimator}_ratio"] < BAND[0] for r in rs),
        "over_band": sum(r[f"{estimator}_ratio"] > BAND[1] for r in rs),
        "worst_under": min(under, key=lambda r: r[f"{estimator}_ratio"]) if under else None,
        "median_error": errs[len(errs) // 2] if errs else None,
    }


def _figures(label: str, rows: list[dict], estimator: str) -> str:
    s = summary(rows, estimator)
    if not s["rows"]:
        return f"{label}: no row measured."
    text = (
        f"{label}: {s['in_band']} of {s['rows']} rows within {BAND[0]}-{BAND[1]}x, {s['under_band']} below "
        f"{BAND[0]}x (under-estimates), {s['over_band']} above {BAND[1]}x; median error {s['median_error']:+.0f}%"
    )
    if s["worst_under"]:
        w = s["worst_under"]
        text += (
            f"; the worst under-estimate {w[f'{estimator}_ratio']:.2f}x ({w['model']} b={w['batch_size']} "
            f"{w['phase']}: {_mib(w[f'{estimator}_bytes'])} MiB estimated, {_mib(w['measured_bytes'])} MiB measured)"
        )
    return text + "."


def _table(rows: list[dict]) -> list[str]:
    out = [
        "| Model | Batch | Phase | Measured (MiB) | kmemopt (MiB) | kmemopt error | of which TF runtime terms (MiB) "
        "| XLA (MiB) | XLA error |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        measured = _mib(r["measured_bytes"]) if r.get("measured_bytes") else (r.get("status") or "failed")
        out.append(
            f"| {r['model']} | {r['batch_size']} | {r['phase']} | {measured} | {_mib(r.get('kmemopt_bytes'))} | "
            f"**{_pct(r.get('kmemopt_error_pct'))}** | {_mib(r.get('kmemopt_runtime_bytes'))} | "
            f"{_mib(r.get('xla_bytes'))} | {_pct(r.get('xla_error_pct'))} |"
        )
    return out


def markdown(rows: list[dict]) -> str:
    fitted = [r for r in rows if not r.get("held_out")]
    held = [r for r in rows if r.get("held_out")]
    out = [
        "The same models as above on Keras's JAX backend (CPU), batch 8: each row is one",
        "`KERAS_BACKEND=jax JAX_PLATFORMS=cpu kmemopt profile MODEL -b 8 -f json --measure`. Measured: the CPU",
        "high-water mark above the framework baseline (the measuring children run on JAX). kmemopt: the static",
        "estimate on JAX, whose runtime terms (the column after its error) are TensorFlow's, calibrated on",
        "TensorFlow's CPU runtime and not on JAX's. XLA: `xla_estimate`, the compiled step's buffers by XLA's",
        "buffer assignment (weights, optimizer state, batch, activations, gradients), not the process, the",
        "framework or the compiler. Error = (estimate - measured) / measured, signed: negative is an",
        "under-estimate, the dangerous side. Reproduce: `make bench SUITE=estimate_jax`. See docs/backends.md.",
        "",
        "**Fitted on TensorFlow** (the six architectures the runtime constants were fitted to, on TensorFlow):",
        "",
        *_table(fitted),
        "",
        "**Held out** (a subset of the TensorFlow suite's held-out models):",
        "",
        *_table(held),
        "",
        _figures("kmemopt, fitted-on-TensorFlow models", fitted, "kmemopt"),
        "",
        _figures("kmemopt, held-out models", held, "kmemopt"),
        "",
        _figures("XLA, all models", rows, "xla"),
    ]
    out += tf_suite.unmeasured_lines(rows)
    secs = {(r["model"], r["batch_size"]): r.get("measure_seconds") or 0 for r in rows}
    out += [
        "",
        f"Measuring took {sum(secs.values()) / 60:.0f} min of child processes in all (one a model, inference and",
        "training in the same child), besides XLA's compiles in each static profile.",
    ]
    return "\n".join(out) + "\n"
