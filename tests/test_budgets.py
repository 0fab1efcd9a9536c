"""The pure budget logic: parsing budgets, verdicts, baselines and deltas. No Keras, no files."""

from __future__ import annotations

import pytest

from kmemopt.errors import UsageError
from kmemopt.gate import budgets as bg
from kmemopt.gate.budgets import Budget, Level, Metric, Status


def entry(**kw):
    return {"model": "models/*.keras", "metric": "training_memory", "max": "6 GiB", **kw}


# --- parsing ---------------------------------------------------------------------------------


def test_entry_parses_sizes_counts_and_percents():
    b = bg.budget_from_entry(entry(batch_size=64, max_increase="5%", min_increase="1MB"), 1, "pyproject.toml")
    assert b.metric is Metric.training_memory and b.max == 6 * 1024**3 and b.batch_size == 64
    assert b.max_increase == pytest.approx(0.05) and b.min_increase == 1_000_000
    assert b.level is Level.error and b.source == "pyproject.toml budget #1" and b.limit_text == "6 GiB"
    p = bg.budget_from_entry({"model": "m.keras", "metric": "params", "max": "25M", "level": "warn"}, 2, "x.toml")
    assert p.max == 25_000_000 and p.level is Level.warn and p.batch_size == bg.DEFAULT_BATCH_SIZE
    raw = bg.budget_from_entry({"model": "m.keras", "metric": "file_size", "max": 4096}, 3, "x.toml")
    assert raw.max == 4096


@pytest.mark.parametrize(
    "bad, words",
    [
        (entry(max="12 parsecs"), ["budget #4", "max", "12 parsecs"]),
        (entry(max="lots"), ["budget #4", "lots"]),
        (entry(metric="gpu_memory"), ["budget #4", "gpu_memory", "file_size"]),
        (entry(max_increase="five"), ["budget #4", "max_increase", "five"]),
        (entry(level="fatal"), ["budget #4", "fatal"]),
        (entry(batch_size=0), ["budget #4", "batch_size"]),
        (entry(maxx="1GB"), ["budget #4", "maxx"]),
        ({"metric": "params", "max": 1}, ["budget #4", "model"]),
        ({"model": "a.keras", "metric": "params"}, ["budget #4", "max_increase"]),
        ({"model": "a.keras", "metric": "params", "max": "1 GiB"}, ["budget #4", "1 GiB"]),
        ("not a table", ["budget #4"]),
    ],
)
def test_malformed_entries_are_usage_errors_naming_the_entry_and_value(bad, words):
    with pytest.raises(UsageError) as info:
        bg.budget_from_entry(bad, 4, "pyproject.toml")
    assert info.value.exit_code == 2
    for word in words:
        assert word in str(info.value)


def test_config_table():
    cfg = bg.config_from_table(
        {"budget": [entry(), entry(metric="params", max="1M")], "baseline": "b.json"}, "p.toml", "/x"
    )
    assert [b.metric for b in cfg.budgets] == [Metric.training_memory, Metric.params]
    assert cfg.baseline == "b.json" and all(b.base == "/x" for b in cfg.budgets)
    with pytest.raises(UsageError, match="budgets"):
        bg.config_from_table({"budgets": []}, "p.toml", "/x")


def test_flags_name_themselves_when_malformed_and_override_the_config():
    assert bg.parse_limit_flags({Metric.params: "2.5M", Metric.file_size: None}) == (
        (Metric.params, 2_500_000, "2.5M"),
    )
    with pytest.raises(UsageError, match=r"--max-file-size.*'50 MBs'"):
        bg.parse_limit_flags({Metric.file_size: "50 MBs"})
    o = bg.Overrides(batch_size=8, optimizer="sgd", max_increase=0.1, min_increase_bytes=1000)
    b = bg.apply_overrides(bg.budget_from_entry(entry(), 1, "p"), o)
    assert (b.batch_size, b.optimizer, b.max_increase, b.min_increase) == (8, "sgd", 0.1, 1000)
    # The byte floor does not apply to a count metric.
    p = bg.apply_overrides(Budget("m", Metric.params, 10), o)
    assert p.min_increase is None and p.max_increase == 0.1


# --- evaluation ------------------------------------------------------------------------------


def test_limit_is_inclusive_and_excess_is_reported():
    b = Budget("m", Metric.file_size, max=1000)
    assert bg.evaluate(b, "m", 1000, None).status is Status.passed
    r = bg.evaluate(b, "m", 1001, None)
    assert r.status is Status.failed and not r.passed and "by 1 B" in r.reasons[0]


def test_warn_level_is_reported_but_never_fails():
    b = Budget("m", Metric.params, max=10, level=Level.warn)
    r = bg.evaluate(b, "m", 11, None)
    assert r.status is Status.warned
    report = bg.CheckReport(results=(r,))
    assert report.passed and report.verdict == "pass" and report.exit_code() == 0


def test_increase_against_baseline_with_floor():
    b = Budget("m", Metric.inference_memory, max=None, max_increase=0.05, min_increase=1_000_000)
    # +10% but only 100 kB: under the noise floor.
    small = bg.evaluate(b, "m", 1_100_000, 1_000_000)
    assert small.status is Status.passed and small.delta == 100_000 and small.delta_percent == 10.0
    # +10% and 10 MB: fails.
    big = bg.evaluate(b, "m", 110_000_000, 100_000_000)
    assert big.status is Status.failed and big.delta == 10_000_000 and "+10.0%" in big.reasons[0]
    # Exactly +5% passes; a shrink passes with a negative delta.
    no_floor = Budget("m", Metric.params, max_increase=0.05)
    assert bg.evaluate(no_floor, "m", 105, 100).status is Status.passed
    assert bg.evaluate(no_floor, "m", 106, 100).status is Status.failed
    shrunk = bg.evaluate(no_floor, "m", 50, 100)
    assert shrunk.passed and shrunk.delta == -50 and shrunk.delta_percent == -50.0
    # Both the limit and the increase can fail: both reasons are given.
    both = bg.evaluate(Budget("m", Metric.params, max=100, max_increase=0.05), "m", 200, 100)
    assert len(both.reasons) == 2


def test_verdict_and_exit_codes():
    ok = bg.evaluate(Budget("a", Metric.params, max=10), "a", 5, None)
    bad = bg.evaluate(Budget("b", Metric.params, max=10), "b", 50, None)
    rejected = bg.not_checked(Budget("c", Metric.params, max=10), "c", "[TRUST-CODE] Lambda")
    assert bg.CheckReport((ok,)).exit_code() == 0
    failing = bg.CheckReport((ok, bad))
    assert failing.verdict == "fail" and failing.exit_code() == 1 and failing.exit_code(exit_zero=True) == 0
    errored = bg.CheckReport((ok, bad, rejected), errors=(bg.ModelError("c", "Lambda", "TRUST-CODE"),))
    # A rejected model outranks a failed budget, and --exit-zero does not hide it.
    assert errored.verdict == "error" and errored.exit_code() == 3 and errored.exit_code(exit_zero=True) == 3
    assert errored.counts() == {"total": 3, "passed": 1, "failed": 1, "warned": 0, "errors": 1}
    row = errored.to_dict()["budgets"][1]
    assert {k: row[k] for k in ("model", "metric", "value", "limit", "passed", "level", "status")} == {
        "model": "b",
        "metric": "params",
        "value": 50,
        "limit": 10,
        "passed": False,
        "level": "error",
        "status": "fail",
    }


# --- baselines -------------------------------------------------------------------------------


def _profile_doc(path="models/net.keras", batch=32, opt="Adam"):
    return {
        "model": {"path": path, "file_bytes": 5000},
        "batch_size": batch,
        "optimizer": {"name": opt},
        "totals": {"params": 100, "param_bytes": 400, "inference_peak_bytes": 1400, "training_peak_bytes": 3600},
        "batch_line": {
            "inference": {"fixed_bytes": 440, "per_sample_bytes": 30},
            "training": {"fixed_bytes": 400, "per_sample_bytes": 100},
        },
    }


def test_baseline_from_profile_json_extrapolates_the_batch_line():
    base = bg.baseline_from_json(_profile_doc(), "main.json")
    assert base.lookup("models/net.keras", Metric.file_size, 32, None) == 5000
    assert base.lookup("models/net.keras", Metric.params, 32, None) == 100
    assert base.lookup("models/net.keras", Metric.training_memory, 32, "Adam") == 3600
    assert base.lookup("models/net.keras", Metric.training_memory, 8, "adam") == 400 + 8 * 100
    assert base.lookup("models/net.keras", Metric.inference_memory, 1, None) == 470
    # Another optimizer's training memory is not comparable.
    assert base.lookup("models/net.keras", Metric.training_memory, 32, "SGD") is None
    # Paths match by their common tail (a baseline written in another checkout).
    assert base.lookup("/ci/work/models/net.keras", Metric.params, 1, None) == 100
    assert base.lookup("models/other.keras", Metric.params, 1, None) is None


def test_baseline_from_check_json_and_ambiguity():
    check_doc = {
        "budgets": [
            {"model": "a/net.keras", "metric": "params", "value": 7, "batch_size": None},
            {"model": "b/net.keras", "metric": "params", "value": 9, "batch_size": None},
            {"model": "a/net.keras", "metric": "inference_memory", "value": 70, "batch_size": 16},
            {"model": "c.keras", "metric": "params", "value": None, "batch_size": None},
        ]
    }
    base = bg.baseline_from_json(check_doc, "check.json")
    assert base.lookup("a/net.keras", Metric.params, 32, None) == 7
    assert base.lookup("b/net.keras", Metric.params, 32, None) == 9
    assert base.lookup("net.keras", Metric.params, 32, None) is None  # two baselines end in net.keras
    assert base.lookup("a/net.keras", Metric.inference_memory, 16, None) == 70
    assert base.lookup("a/net.keras", Metric.inference_memory, 32, None) is None  # a check row is one batch
    assert base.lookup("c.keras", Metric.params, 32, None) is None
    both = bg.baseline_from_json([_profile_doc("x.keras"), _profile_doc("y.keras")], "many.json")
    assert both.lookup("y.keras", Metric.params, 1, None) == 100


@pytest.mark.parametrize(
    "doc", [{"hello": 1}, [3], {"model": {}, "totals": {}}, {"budgets": [{"model": "m", "metric": "nope", "value": 1}]}]
)
def test_unreadable_baselines_are_usage_errors(doc):
    with pytest.raises(UsageError, match="base.json"):
        bg.baseline_from_json(doc, "base.json")


def test_si_limits_show_si_values():
    b = bg.budget_from_entry({"model": "m", "metric": "file_size", "max": "600 KB"}, 1, "p")
    assert b.si and bg.evaluate(b, "m", 637_936, None).reasons == ("over the limit of 600 KB by 37.9 kB",)
    assert not Budget("m", Metric.file_size, max=1, limit_text="1 MiB").si
