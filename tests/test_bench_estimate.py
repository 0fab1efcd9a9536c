"""benchmarks/suite_estimate.py: the refit from the committed calibration data, and the figures it reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import suite_estimate  # noqa: E402  (benchmarks/suite_estimate.py)

MiB = 1024**2


def test_the_refit_on_the_committed_calibration_reproduces_internals_constants():
    """`python benchmarks/suite_estimate.py --refit` on benchmarks/calibration.json gives the fitted
    constants of kmemopt/profiling/internals.py, each at the precision it is written there. No skip:
    a missing file or missing rows for the fitted six is a failure."""
    assert suite_estimate.CALIBRATION.exists(), "benchmarks/calibration.json is not committed"
    rows = json.loads(suite_estimate.CALIBRATION.read_text())["rows"]
    measured = {(r["model"], r["batch_size"]) for r in rows if r.get("status") == "ok"}
    wanted = {(m, b) for m in suite_estimate.MODELS for b in suite_estimate.BATCH_SIZES}
    assert wanted <= measured, f"calibration.json lacks the fitted rows {sorted(wanted - measured)}"
    table = suite_estimate.refit_table()
    assert [name for name, _, _ in table] == [name for name, _, _ in suite_estimate.FITTED]
    for name, refitted, in_code in table:
        assert refitted == in_code, f"{name}: the refit gives {refitted}, internals.py holds {in_code}"


def _synthetic_rows(frac=0.2, big=1.5, per_layer=0.1 * MiB, g_inf=0.125 * MiB, g_train=2.0 * MiB):
    """Calibration rows generated from known constants (exactly, no noise)."""
    models = {
        "MobileNetV2": (14_000_000, 5_000_000, 150, 150, 40_000_000, 200_000_000),
        "ResNet50": (100_000_000, 8_000_000, 170, 170, 90_000_000, 500_000_000),
        "EfficientNetB0": (21_000_000, 5_100_000, 240, 230, 60_000_000, 300_000_000),
        "DenseNet121": (32_000_000, 4_000_000, 420, 420, 70_000_000, 600_000_000),
        "LSTMTextClassifier": (11_000_000, 10_240_000, 5, 30, 3_000_000, 20_000_000),
        "TransformerEncoder": (12_000_000, 8_192_000, 30, 60, 10_000_000, 90_000_000),
    }
    rows = []
    for name, (w, largest, calls, units, inf, train) in models.items():
        for b in (1, 8, 32):
            loader = frac * w + big * largest + per_layer * calls
            s_inf, s_train = inf + b * 1_000_000, train + b * 7_000_000
            rows.append(
                {
                    "model": name,
                    "batch_size": b,
                    "status": "ok",
                    "param_bytes": w,
                    "largest_weight_bytes": largest,
                    "layer_calls": calls,
                    "op_units": units,
                    "load_bytes": w + loader,
                    "static_inference_bytes": s_inf,
                    "static_training_bytes": s_train,
                    "inference_peak_bytes": s_inf + loader + g_inf * units,
                    "training_peak_bytes": s_train + loader + g_train * units,
                }
            )
    return rows


def test_the_refit_recovers_the_constants_the_data_was_made_with(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"rows": _synthetic_rows()}))
    got = suite_estimate.fit_constants(path)
    assert got["LOADER_WEIGHT_FRACTION"] == pytest.approx(0.2, rel=1e-9)
    assert got["LOADER_LARGEST_WEIGHT_FACTOR"] == pytest.approx(1.5, rel=1e-9)
    assert got["LOADER_BYTES_PER_LAYER"] == pytest.approx(0.1 * MiB, rel=1e-9)
    assert got["GRAPH_BYTES_PER_UNIT_INFERENCE"] == pytest.approx(0.125 * MiB, rel=1e-9)
    assert got["GRAPH_BYTES_PER_UNIT_TRAINING"] == pytest.approx(2.0 * MiB, rel=1e-9)


def test_held_out_and_failed_rows_are_not_fitted(tmp_path):
    rows = _synthetic_rows()
    # A held-out model far off the constants, and a failed row: neither may move the fit.
    rows.append({**rows[0], "model": "MobileNet", "load_bytes": 10**10, "inference_peak_bytes": 1})
    rows.append({**rows[1], "status": "failed", "load_bytes": 10**10})
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"rows": rows}))
    assert suite_estimate.fit_constants(path)["LOADER_WEIGHT_FRACTION"] == pytest.approx(0.2, rel=1e-9)


def test_the_refit_refuses_data_missing_a_fitted_row(tmp_path):
    rows = [r for r in _synthetic_rows() if not (r["model"] == "ResNet50" and r["batch_size"] == 32)]
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"rows": rows}))
    with pytest.raises(ValueError, match=r"ResNet50', 32"):
        suite_estimate.fit_constants(path)


def _row(model, b, phase, est_mib, measured_mib, held_out=True):
    return {
        "model": model,
        "batch_size": b,
        "phase": phase,
        "estimator": "kmemopt",
        "estimated_bytes": est_mib * MiB,
        "measured_bytes": measured_mib * MiB,
        "ratio": round(est_mib / measured_mib, 3),
        "error_pct": round(100 * (est_mib - measured_mib) / measured_mib, 1),
        "held_out": held_out,
    }


def test_summary_counts_signed_errors_and_under_estimates():
    rows = [
        _row("A", 8, "inference", 70, 100),  # 0.70x: under, outside the band
        _row("A", 8, "training", 90, 100),  # 0.90x: under, in band
        _row("B", 8, "inference", 110, 100),  # 1.10x
        _row("B", 8, "training", 130, 100),  # 1.30x: over, outside the band
        {**_row("C", 8, "training", 10, 10), "measured_bytes": None, "ratio": None, "error_pct": None},
    ]
    s = suite_estimate.summary(rows)
    assert (s["rows"], s["in_band"], s["under"], s["under_band"]) == (4, 2, 2, 1)
    assert s["worst_under"]["model"] == "A" and s["worst_under"]["phase"] == "inference"
    # Signed errors -30, -10, +10, +30: the upper median is +10; absolute 10, 10, 30, 30: 30.
    assert (s["median_error"], s["median_abs_error"]) == (10.0, 30.0)


def test_markdown_reports_fitted_and_held_out_apart_and_lists_unmeasured_rows():
    rows = []
    for est in suite_estimate.ESTIMATORS:
        for r in (
            _row("MobileNetV2", 8, "inference", 100, 100, held_out=False),
            _row("GPT2Small", 8, "inference", 50, 100),
        ):
            rows.append({**r, "estimator": est})
    rows.append(
        {
            **_row("ViTSmall", 32, "training", 1, 1),
            "measured_bytes": None,
            "ratio": None,
            "error_pct": None,
            "status": "timeout",
            "message": "ran past 1800 s",
        }
    )
    md = suite_estimate.markdown(rows)
    assert "In-sample (kmemopt): 1 of 1 rows within 0.8-1.25x; median error +0%" in md
    assert "Held out (kmemopt): 0 of 1 rows within 0.8-1.25x; median error -50%" in md
    assert "the worst 0.50x, GPT2Small b=8 inference: 50 MiB estimated, 100 MiB measured" in md
    assert "- ViTSmall b=32: timeout (ran past 1800 s)" in md
    in_sample, held = md.split("**Held out**")
    assert "| MobileNetV2 | 8 |" in in_sample and "GPT2Small" not in in_sample
    assert "| GPT2Small | 8 |" in held


def test_in_band_by_model_compares_todays_estimates_with_the_committed_ones():
    def row(model, phase, now, committed, measured=100, held_out=True):
        return {
            "model": model,
            "batch_size": 8,
            "phase": phase,
            "held_out": held_out,
            "measured_bytes": measured,
            "estimated_bytes": now,
            "committed_bytes": committed,
        }

    rows = [
        row("ViTSmall", "inference", 96, 37),  # 0.96x now, 0.37x as committed
        row("ViTSmall", "training", 126, 15),  # 1.26x: just outside the band
        row("MobileNetV2", "inference", 80, 125, held_out=False),  # both ends of the band are in it
        row("GPT2Small", "training", 79, 120),
    ]
    assert suite_estimate.in_band_by_model(rows) == [
        ("MobileNetV2", False, 1, 1, 1),
        ("GPT2Small", True, 0, 1, 1),
        ("ViTSmall", True, 1, 0, 2),
    ]
    table = suite_estimate.reestimate_table(rows)
    assert "  total                  1/1  (committed 1/1)" in table  # in-sample
    assert "  total                  1/3  (committed 1/3)" in table  # held out


def test_a_refit_after_the_run_is_shown_with_the_rows_estimated_by_the_constants_now(tmp_path, monkeypatch):
    """`refit_since_lines`: nothing while each row's committed estimate is what the code's constants
    give; once a constant changes, the same measured rows re-estimated (static part + fitted terms)."""
    import kmemopt.profiling.internals as internals

    rows = _synthetic_rows()
    for r in rows:
        r["model"] = suite_estimate.HELD_OUT[0] if r["model"] == "ResNet50" else r["model"]
        for phase in ("inference", "training"):
            r[f"estimated_{phase}_bytes"] = suite_estimate.estimate_now(r, phase)
            r[f"{phase}_peak_bytes"] = r[f"estimated_{phase}_bytes"]  # every row exact: 1.00x
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"rows": rows}))
    assert suite_estimate.refit_since_lines(path) == []
    monkeypatch.setattr(internals, "GRAPH_BYTES_PER_UNIT_TRAINING", internals.GRAPH_BYTES_PER_UNIT_TRAINING + 50 * MiB)
    lines = suite_estimate.refit_since_lines(path)
    assert lines[1].startswith("**The runtime constants were refit after this run**")
    # inference rows unchanged (in the band); every training row over by 50 MiB x its op units (at least 5):
    # more than its whole synthetic peak, so out of the band
    assert "in-sample 15 of 30 within 0.8-1.25x, 0 under-estimates" in lines[1]
    assert "held-out 3 of 6 within 0.8-1.25x, 0 under-estimates" in lines[1]
