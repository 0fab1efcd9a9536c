"""benchmarks/suite_estimate_jax.py: the rows it makes from a JAX profile, its signed counts, its
committed rows and their section in BENCHMARKS.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import run as bench  # noqa: E402  (benchmarks/run.py)
import suite_estimate_jax as S  # noqa: E402

MiB = 1024**2


def _profile(measured_inf=100 * MiB, measured_train=400 * MiB, status="ok") -> dict:
    """The parts of `kmemopt profile -f json --measure` the suite reads, as the JAX backend writes them."""
    return {
        "backend": "jax",
        "totals": {
            "inference_peak_bytes": 90 * MiB,
            "training_peak_bytes": 200 * MiB,
            "runtime_inference_bytes": 30 * MiB,
            "runtime_training_bytes": 60 * MiB,
        },
        "xla_estimate": {"inference_bytes": 50 * MiB, "training_bytes": 500 * MiB, "seconds": 12.5},
        "measured": {
            "method": "vmhwm",
            "status": status,
            "inference_peak_bytes": measured_inf,
            "training_peak_bytes": measured_train,
            "runs": [{"batch_size": 8, "seconds": 95.0}],
        },
    }


def test_rows_from_a_jax_profile_put_both_estimates_beside_the_measured_peak():
    inf, train = S.rows_from_profile("BertSmall", 8, _profile())
    assert (inf["phase"], train["phase"]) == ("inference", "training")
    assert inf["held_out"] is True and inf["backend"] == "jax" and inf["status"] == "ok"
    assert inf["measured_bytes"] == 100 * MiB and inf["kmemopt_bytes"] == 90 * MiB and inf["xla_bytes"] == 50 * MiB
    assert inf["kmemopt_ratio"] == 0.9 and inf["kmemopt_error_pct"] == -10.0
    assert inf["xla_ratio"] == 0.5 and inf["xla_error_pct"] == -50.0
    assert inf["kmemopt_runtime_bytes"] == 30 * MiB and train["kmemopt_runtime_bytes"] == 60 * MiB
    assert train["kmemopt_ratio"] == 0.5 and train["kmemopt_error_pct"] == -50.0
    assert train["xla_ratio"] == 1.25 and train["xla_error_pct"] == 25.0
    assert inf["measure_seconds"] == 95.0 and inf["xla_seconds"] == 12.5 and "message" not in inf
    assert S.rows_from_profile("ResNet50", 8, _profile())[0]["held_out"] is False


def test_a_child_that_failed_gives_rows_without_ratios_and_says_why():
    rows = S.rows_from_profile("ViTSmall", 8, None, "exit 4: something broke")
    assert len(rows) == 2
    for r in rows:
        assert r["status"] == "failed" and r["message"] == "exit 4: something broke"
        assert r["measured_bytes"] is None and r["kmemopt_ratio"] is None and r["xla_ratio"] is None
    text = S.markdown(rows)
    assert "Rows without a measurement:\n- ViTSmall b=8: failed (exit 4: something broke)" in text
    assert "kmemopt, held-out models: no row measured." in text


def test_the_counts_are_signed_and_the_band_edges_are_in():
    def row(ratio):
        return {
            "model": "M",
            "batch_size": 8,
            "phase": "inference",
            "kmemopt_ratio": ratio,
            "kmemopt_error_pct": round(100 * (ratio - 1), 1),
            "kmemopt_bytes": int(ratio * 100 * MiB),
            "measured_bytes": 100 * MiB,
        }

    rows = [row(0.5), row(0.8), row(0.95), row(1.25), row(1.3)]
    s = S.summary(rows, "kmemopt")
    assert (s["rows"], s["in_band"], s["under"], s["under_band"], s["over_band"]) == (5, 3, 3, 1, 1)
    assert s["worst_under"]["kmemopt_ratio"] == 0.5 and s["median_error"] == -5.0
    assert S.summary(rows, "xla")["rows"] == 0  # no XLA figure in these rows: nothing counted


def test_each_child_runs_kmemopt_profile_on_jax_cpu():
    command = S.profile_command(Path("m.keras"), "BertSmall", 8, 700)
    assert command[1:] == [
        "-m",
        "kmemopt",
        "profile",
        "m.keras",
        "-b",
        "8",
        "-f",
        "json",
        "--measure",
        "--timeout",
        "700",
        "--seq-len",
        "128",
    ]
    assert "--seq-len" not in S.profile_command(Path("m.keras"), "ResNet50", 8, 700)
    env = S.jax_env()
    assert env["KERAS_BACKEND"] == "jax" and env["JAX_PLATFORMS"] == "cpu"


def _results() -> dict:
    return json.loads((ROOT / "benchmarks" / "results.json").read_text())


def test_the_committed_rows_are_stamped_and_their_ratios_are_their_bytes():
    results = _results()
    rows = results[S.KEY]
    assert {(r["model"], r["batch_size"]) for r in rows} == {
        (m, b) for m in S.MODELS + S.HELD_OUT for b in S.BATCH_SIZES
    }
    for r in rows:
        at = r["measured_at"]
        assert len(at["commit"]) == 40 and at["date"][:4] == "2026" and at["machine"] in results["machines"]
        assert r["held_out"] == (r["model"] in S.HELD_OUT)
        for estimator in S.ESTIMATORS:
            if r.get(f"{estimator}_ratio") is not None:
                assert r[f"{estimator}_ratio"] == round(r[f"{estimator}_bytes"] / r["measured_bytes"], 3)


def test_benchmarks_md_has_the_section_results_json_renders():
    rendered = bench.render(_results())
    assert f"## {S.TITLE}" in rendered
    section = rendered.split(f"## {S.TITLE}", 1)[1].split("\n## ", 1)[0]
    assert section in (ROOT / "BENCHMARKS.md").read_text()
