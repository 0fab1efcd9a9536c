"""The plan benchmark suite's own arithmetic and report (benchmarks/suite_plan.py), on fixed rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import suite_plan  # noqa: E402

MIB = 2**20


def _plan(model, fits, error=None):
    row = {
        "kind": "plan",
        "model": model,
        "params": 1_500_000,
        "baseline_measured_bytes": 400 * MIB,
        "baseline_remeasured_bytes": 404 * MIB,
        "budget_bytes": 200 * MIB,
        "plan": "batch 8 x 4 accumulation steps",
        "predicted_peak_bytes": 180 * MIB,
        "measured_peak_bytes": (190 if fits else 230) * MIB,
        "fits_measured": fits,
        "written": True,
    }
    if error:
        row = {"kind": "plan", "model": model, "error": error}
    return row


def _single(model, strategy, predicted_mib, measured_mib):
    return {
        "kind": "strategy",
        "model": model,
        "strategy": strategy,
        "setting": "SGD (momentum 0.9)",
        "predicted_peak_bytes": (400 - predicted_mib) * MIB,
        "measured_peak_bytes": (400 - measured_mib) * MIB,
        "predicted_saving_bytes": predicted_mib * MIB,
        "measured_saving_bytes": measured_mib * MIB,
        "ratio": suite_plan.saving_ratio(predicted_mib * MIB, measured_mib * MIB),
        "within_goal": suite_plan.within_goal(predicted_mib * MIB, measured_mib * MIB),
    }


def test_saving_ratio_and_the_20_percent_goal():
    assert suite_plan.saving_ratio(120, 100) == 1.2
    assert suite_plan.saving_ratio(50, 200) == 0.25
    assert suite_plan.saving_ratio(10, 0) is None and suite_plan.saving_ratio(None, 5) is None
    assert suite_plan.within_goal(120, 100) is True  # exactly 20 % off
    assert suite_plan.within_goal(121, 100) is False
    assert suite_plan.within_goal(79, 100) is False
    assert suite_plan.within_goal(-10, -9) is True  # a measured cost predicted as a cost
    assert suite_plan.within_goal(None, 100) is None


def test_summary_counts_failed_rows_as_not_met():
    rows = [_plan(f"m{i}", True) for i in range(9)] + [_plan("m9", False)]
    rows += [_single("m0", "optimizer", 100, 90), _single("m1", "optimizer", 100, 50)]
    rows.append({"kind": "strategy", "model": "m2", "strategy": "freeze", "error": "RuntimeError: boom"})
    rows.append({"kind": "plan_time", "model": "Llama 7B", "exit_code": 0, "seconds": 42.0})
    s = suite_plan.summary(rows)
    assert (s["plans"], s["plans_under_budget"], s["fit_goal_met"]) == (10, 9, True)
    assert (s["strategies"], s["strategies_within"], s["saving_goal_met"]) == (3, 1, False)
    assert (s["plan_7b_seconds"], s["time_goal_met"]) == (42.0, True)
    rows[-1] = {"kind": "plan_time", "model": "Llama 7B", "exit_code": 0, "seconds": 75.0}
    rows[0] = _plan("m0", None, error="baseline not measured (timeout)")
    s = suite_plan.summary(rows)
    assert (s["plans_under_budget"], s["fit_goal_met"], s["time_goal_met"]) == (8, False, False)
    rows[1] = dict(rows[1], written=False)  # no plan predicted to fit: nothing applied, not counted
    assert suite_plan.summary(rows)["plans_under_budget"] == 7


def test_markdown_lists_every_row_and_failures():
    rows = [
        _plan("SmallCNN", True),
        _plan("ResNet50", None, error="baseline not measured (timeout)"),
        _single("SmallCNN", "optimizer", 100, 90),
        _single("SmallCNN", "freeze", 100, 50),
        {"kind": "strategy", "model": "ResNet50", "strategy": "optimizer", "error": "baseline not measured (timeout)"},
        {
            "kind": "large",
            "model": "Llama 1.1B (declared, unstored)",
            "params": 1_100_048_384,
            "batch_size": 8,
            "seq_len": 2048,
            "budget_bytes": 24 * 2**30,
            "baseline_predicted_bytes": 60 * 2**30,
            "plan": "mixed_bfloat16",
            "predicted_peak_bytes": 20 * 2**30,
            "fits_predicted": True,
            "seconds": 12.0,
        },
    ]
    md = suite_plan.markdown(rows)
    assert "in 1 of 2 models (goal ≥ 90%): **not met**" in md
    assert "in 1 of 3 cases (goal: all): **not met**" in md  # the failed row counts
    assert "7 B declared model did not answer (stopped after 900 s, or failed: see below)" in md
    assert "| SmallCNN | 1.5 M | 400 | 404 | 200 | batch 8 x 4 accumulation steps | 180 | 190 | yes |" in md
    assert "| ResNet50 | - | - | - | - | - | - | - | error |" in md
    assert "| optimizer | 100 / 90 (1.11) | error |" in md
    assert "| freeze | **100 / 50 (2.00)** | - |" in md
    assert "| Llama 1.1B (declared, unstored) | 1.10 B | 8 x 2048 | 24.0 | 60.0 | mixed_bfloat16 | 20.0 | yes |" in md
    assert "not measured" in md
    assert "- ResNet50 (plan): baseline not measured (timeout)" in md
    assert "- ResNet50 (optimizer): baseline not measured (timeout)" in md


def test_selected_models(monkeypatch):
    monkeypatch.delenv("KMEMOPT_BENCH_PLAN_MODELS", raising=False)
    assert suite_plan.selected_models() == list(suite_plan.MODELS)
    monkeypatch.setenv("KMEMOPT_BENCH_PLAN_MODELS", "ResNet50, SmallCNN")
    assert suite_plan.selected_models() == ["ResNet50", "SmallCNN"]
    monkeypatch.setenv("KMEMOPT_BENCH_PLAN_MODELS", "VGG99")
    with pytest.raises(SystemExit):
        suite_plan.selected_models()


def test_small_cnn_is_built_compiled_and_seeded(keras):
    a = suite_plan.build("SmallCNN", keras)
    b = suite_plan.build("SmallCNN", keras)
    assert a.count_params() == 2_193_866
    assert a.loss == "sparse_categorical_crossentropy" and type(a.optimizer).__name__ == "Adam"
    assert (a.get_weights()[0] == b.get_weights()[0]).all()
