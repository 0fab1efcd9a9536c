"""Benchmark rows say when, on what code and on what machine they were measured (issue 18)."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import provenance  # noqa: E402
import readme_figures  # noqa: E402
import run as bench  # noqa: E402

RUN = {"command": "make bench SUITE=x", "started": "2026-12-03T10:00:00Z", "commit": "c" * 40, "dirty": False}
NOW = {"commit": "c" * 40, "dirty": False, "date": "2026-12-03T10:05:00Z", "machine": "m1"}
OLD = {"commit": "a" * 40, "dirty": False, "date": "2026-11-20T09:00:00Z", "machine": "m1"}


def test_stamp_keeps_the_stamp_of_rows_carried_from_an_earlier_run():
    carried = {"model": "A", "measured_at": dict(OLD)}
    fresh = {"model": "B"}
    assert provenance.stamp([carried, fresh], NOW) == (1, 1)
    assert carried["measured_at"] == OLD and fresh["measured_at"] == NOW


def test_rows_a_suite_stamped_itself_during_the_run_count_as_measured():
    """A suite that stamps each row as its child starts (same commit, after the run began) measured it;
    a row of the same commit stamped before the run began was carried."""
    during = {"model": "A", "measured_at": {**NOW, "date": "2026-12-03T10:07:00Z"}}
    before = {"model": "B", "measured_at": {**NOW, "date": "2026-12-03T09:00:00Z"}}
    assert provenance.stamp([during, before], NOW) == (1, 1)


def test_rows_the_latest_run_did_not_measure_are_marked_and_counted():
    rows = [{"model": "A", "measured_at": dict(OLD)}, {"model": "B", "measured_at": dict(NOW)}]
    shown = provenance.marked(rows, RUN)
    assert [r["model"] for r in shown] == ["A †", "B"]
    assert rows[0]["model"] == "A"  # the results themselves are not changed
    lines = provenance.describe(rows, RUN, {})
    assert "it measured 1 of the 2 rows below" in lines[0] and "`cccccccccc`" in lines[0]
    assert lines[1] == "Rows marked † were carried from earlier runs: 1 measured on `aaaaaaaaaa` (2026-11-20)."


def test_a_row_from_the_same_commit_but_an_earlier_run_is_still_carried():
    earlier = {"model": "A", "measured_at": {**NOW, "date": "2026-12-03T09:00:00Z"}}
    assert provenance.run_of([earlier], RUN) == [False]


def test_a_dirty_tree_is_said():
    lines = provenance.describe([{"model": "A", "measured_at": dict(NOW)}], {**RUN, "dirty": True, "seconds": 5}, {})
    assert "plus uncommitted changes" in lines[0] and "it measured 1 of the 1 rows" in lines[0]


def test_every_committed_row_carries_its_commit_date_and_machine():
    import json

    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    for key in ("shrink", "estimate_vs_measured", "speed"):
        for row in results[key]:
            at = row["measured_at"]
            assert len(at["commit"]) == 40 and at["date"][:4] == "2026" and at["machine"] in results["machines"]


def test_benchmarks_md_is_what_results_json_renders_to():
    import json

    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    assert bench.render(results) == (ROOT / "BENCHMARKS.md").read_text()


def test_the_readme_figures_are_what_results_json_says():
    import json

    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert readme_figures.generate(results) in readme


def test_readme_figures_say_in_sample_vs_held_out_and_put_fidelity_beside_size():
    rows = [
        {"model": "A", "estimator": "kmemopt", "ratio": 0.7, "error_pct": -30.0, "batch_size": 8, "phase": "training"},
        {
            "model": "B",
            "estimator": "kmemopt",
            "ratio": 1.0,
            "error_pct": 0.0,
            "batch_size": 1,
            "phase": "inference",
            "held_out": True,
        },
    ]
    shrink = [
        {"model": "M", "method": "float32 reference (plain Keras, no optimizer)", "ratio": 1.0},
        {
            "model": "M",
            "method": "kmemopt int8 (portable)",
            "ratio": 0.25,
            "top1_agreement": 0.5,
            "relative_l2_error": 0.2,
            "fidelity_samples": 8,
            "fidelity_source": "synthetic",
        },
    ]
    text = readme_figures.generate({"estimate_vs_measured": rows, "shrink": shrink})
    assert "(in-sample) (A; batch 1, 8, 32; inference and training): 0 of 1 rows" in text
    assert "1 under-estimates (the lowest 0.70x: A, b=8, training)" in text
    assert "held-out models it was not fitted on (B;" in text and "1 of 1 rows" in text
    assert "0.250x (50.0% top-1 agreement, relative L2 0.2 on 8 synthetic inputs, random weights)" in text


def test_the_speed_rows_are_read_against_the_frameworks_own_start_up():
    """The speed suite's first row is a process that only imports Keras: the table and the README say
    how much of a row it is, and a row without a model renders without one."""
    import suite_speed

    mib = 1024**2
    rows = [
        {"model": suite_speed.FRAMEWORK, "tool": "import keras", "file_bytes": None, "params": None,
         "seconds": 7.9, "peak_rss_bytes": 600 * mib, "measured_at": NOW},
        {"model": "Llama 7B (declared, unstored)", "tool": "kmemopt profile", "file_bytes": 2_000_000,
         "params": 6_738_415_616, "seconds": 13.9, "peak_rss_bytes": 921 * mib, "measured_at": NOW},
    ]  # fmt: skip
    text = suite_speed.markdown(rows)
    assert f"| {suite_speed.FRAMEWORK} | - | - | `import keras` | 7.90 | 600 MiB |" in text
    assert "`import keras` (TensorFlow backend) alone takes 7.90 s and 600 MiB" in text
    (line,) = readme_figures._speed(rows)
    assert "profiles in 13.9 s (7.9 s of it the framework's start-up alone) with 921 MiB peak RSS" in line
