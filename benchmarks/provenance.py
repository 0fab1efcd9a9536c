"""Where every benchmark row comes from: the commit, date and machine it was measured on.

`make bench` stamps each row a suite returns with `measured_at = {commit, dirty, date, machine}`
unless the row already carries one (a suite that keeps rows from an earlier run returns them as they
were, stamp included). Machines are described once, in results.json's `machines`, under a short id.
BENCHMARKS.md marks every row that the suite's latest run did not measure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARRIED_MARK = " †"


def git_commit() -> tuple[str | None, bool]:
    """HEAD's commit and whether the code a benchmark runs (kmemopt/, benchmarks/) differs from it."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "kmemopt", "benchmarks/suite_*.py", "pyproject.toml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return sha, bool(status.strip())


def machine_id(machine: dict) -> str:
    return hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:12]


def current(machine: dict) -> dict:
    sha, dirty = git_commit()
    return {
        "commit": sha,
        "dirty": dirty,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_id(machine),
    }


def stamp(rows: list[dict], provenance: dict) -> tuple[int, int]:
    """Stamp the rows measured now; return (measured now, carried from earlier runs).

    A row the suite stamped itself as it measured it (a stamp of this commit, dated at or after this
    run's start: suites that stamp each child as it starts) was measured now, as `run_of` says."""
    fresh = carried = 0
    for row in rows:
        at = row.get("measured_at")
        if at is None:
            row["measured_at"] = dict(provenance)
            fresh += 1
        elif at.get("commit") == provenance["commit"] and at.get("date", "") >= provenance["date"]:
            fresh += 1
        else:
            carried += 1
    return fresh, carried


def run_of(rows: list[dict], run: dict | None) -> list[bool]:
    """For each row, whether the suite's latest run (`runs[suite]` in results.json) measured it."""
    commit, date = (run or {}).get("commit"), (run or {}).get("started")
    out = []
    for row in rows:
        at = row.get("measured_at") or {}
        out.append(bool(commit) and at.get("commit") == commit and bool(date) and at.get("date", "") >= date)
    return out


def marked(rows: list[dict], run: dict | None) -> list[dict]:
    """Copies of the rows for display, the model of each row the latest run did not measure marked †."""
    out = []
    for row, fresh in zip(rows, run_of(rows, run), strict=True):
        row = dict(row)
        if not fresh and "model" in row:
            row["model"] = f"{row['model']}{CARRIED_MARK}"
        out.append(row)
    return out


def describe(rows: list[dict], run: dict | None, machines: dict) -> list[str]:
    """The lines under a suite's title: what its latest run measured, and where the other rows come from."""
    fresh = run_of(rows, run)
    lines = []
    if run and not run.get("commit"):
        lines.append(
            f"Command: `{run['command']}` · its last recorded run ({run.get('date', '?')}, {run.get('seconds', 0):.0f} s) "
            "predates per-row provenance: which rows it measured is not recorded."
        )
    elif run:
        code = f"`{run['commit'][:10]}`" if run.get("commit") else "an unknown commit"
        if run.get("dirty"):
            code += " plus uncommitted changes"
        lines.append(
            f"Command: `{run['command']}` · last run {run.get('started', run.get('date', '?'))[:10]} on {code} · "
            f"{run.get('seconds', 0):.0f} s · it measured {sum(fresh)} of the {len(rows)} rows below."
        )
    older: dict[tuple, int] = {}
    for row, is_fresh in zip(rows, fresh, strict=True):
        if not is_fresh:
            at = row.get("measured_at") or {}
            key = (at.get("commit") or "unknown", (at.get("date") or "unknown")[:10], "note" in at)
            older[key] = older.get(key, 0) + 1
    if older:
        parts = [
            f"{n} {'first recorded in' if legacy else 'measured on'} `{c[:10]}` ({d})"
            for (c, d, legacy), n in sorted(older.items(), key=lambda kv: kv[0][1] + kv[0][0])
        ]
        line = "Rows marked † were carried from earlier runs: " + "; ".join(parts) + "."
        if any(legacy for _, _, legacy in older):
            line += (
                ' Rows "first recorded in" a commit predate per-row provenance: they were measured on the'
                " working tree that commit recorded."
            )
        lines.append(line)
    return lines
