"""`make bench`: run the benchmark suites, merge their rows into benchmarks/results.json, and
regenerate BENCHMARKS.md from it.

Each suite is a module `benchmarks/suite_<name>.py` with:
    KEY: str                       # top-level key in results.json (e.g. "speed", "estimate_vs_measured")
    TITLE: str                     # section title in BENCHMARKS.md
    def run(log) -> list[dict]     # measure; `log(str)` prints progress
    def markdown(rows) -> str      # the section body (tables, notes)
Run one with `make bench SUITE=name` (or `python benchmarks/run.py --suite name`); the other suites'
committed rows are kept.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"
REPORT = ROOT / "BENCHMARKS.md"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

import provenance  # noqa: E402  (benchmarks/provenance.py, found through the path set above)
import readme_figures  # noqa: E402

SUITE_ORDER = ["estimate", "estimate_jax", "shrink", "speed"]


def available_suites() -> list[str]:
    found = sorted(p.stem.removeprefix("suite_") for p in HERE.glob("suite_*.py"))
    return [s for s in SUITE_ORDER if s in found] + [s for s in found if s not in SUITE_ORDER]


def machine() -> dict:
    import psutil

    versions = {"python": platform.python_version()}
    for pkg in ("keras", "tensorflow", "numpy", "h5py"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:
            pass
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def render(results: dict) -> str:
    machines = results.get("machines", {})
    out = [
        "# Benchmarks",
        "",
        "Every figure below is measured by `make bench` (all suites) or `make bench SUITE=<name>`; the same",
        "numbers are in `benchmarks/results.json`, where each row carries the commit, date and machine it was",
        "measured on (`measured_at`). Not run in CI. Under each title: what the suite's latest run measured;",
        "rows it did not measure are marked † with where they come from.",
        "",
    ]
    for mid, m in sorted(machines.items()):
        out.append(
            f"- Machine `{mid}`: {m.get('cores')} cores, {m.get('memory_bytes', 0) / 1024**3:.0f} GiB, {m.get('cpu')}, "
            f"{m.get('os')}; " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
        )
    out.append("")
    for name in available_suites():
        mod = importlib.import_module(f"suite_{name}")
        meta = results.get("runs", {}).get(name)
        if mod.KEY not in results:
            continue
        rows = results[mod.KEY]
        out += [f"## {mod.TITLE}", ""]
        described = provenance.describe(rows, meta, machines)
        if described:
            out += described + [""]
        out += [mod.markdown(provenance.marked(rows, meta)).rstrip(), ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="all", help="all, or one of: " + ", ".join(available_suites()))
    parser.add_argument("--render-only", action="store_true", help="regenerate BENCHMARKS.md from results.json")
    args = parser.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.render_only:
        suites = available_suites() if args.suite == "all" else [args.suite]
        for name in suites:
            if name not in available_suites():
                parser.error(f"unknown suite {name!r}; choose from {available_suites()}")
            mod = importlib.import_module(f"suite_{name}")
            log(f"suite {name}: start")
            started = time.time()
            this_machine = machine()
            stamp = provenance.current(this_machine)
            rows = mod.run(log)
            seconds = time.time() - started
            fresh, carried = provenance.stamp(rows, stamp)
            # Merge into the file as it is now, not as it was when this (possibly hour-long) suite
            # started: another suite run meanwhile keeps its rows.
            results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            results[mod.KEY] = rows
            results.setdefault("runs", {})[name] = {
                # with the KMEMOPT_BENCH_* settings that shaped the run (which models, carried rows, ...)
                "command": " ".join(
                    [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("KMEMOPT_BENCH_")]
                    + [f"make bench SUITE={name}"]
                ),
                "started": stamp["date"],
                "commit": stamp["commit"],
                "dirty": stamp["dirty"],
                "machine": stamp["machine"],
                "seconds": round(seconds, 1),
                "rows_measured": fresh,
                "rows_carried": carried,
            }
            results.setdefault("machines", {})[stamp["machine"]] = this_machine
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
            log(f"suite {name}: done in {seconds:.0f} s ({fresh} rows measured, {carried} carried from earlier runs)")
    REPORT.write_text(render(results))
    readme = ROOT / "README.md"
    readme.write_text(readme_figures.replace_block(readme.read_text(), readme_figures.generate(results)))
    log(f"wrote {REPORT.relative_to(ROOT)}, the README's figures and {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
