"""`kmemopt check --baseline`: a baseline alone gates (every metric it holds), and `--why` says which layers
changed, in every format. The pure diff is tested on hand-made layers; the command on the tiny models."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from kmemopt.gate import budgets as bg
from kmemopt.gate.budgets import Metric


def _layers(*rows, batch=8) -> bg.ModelLayers:
    return bg.ModelLayers("m.keras", batch, tuple(bg.LayerBytes(*r) for r in rows))


# --- the pure diff --------------------------------------------------------------------------------------


def test_layer_diff_names_grown_shrunk_new_and_removed_layers_largest_first():
    before = _layers(
        ("a", "Dense", 400, 400, 800, 80, 10), ("b", "Dense", 100, 100, 200, 0, 0), ("gone", "Conv2D", 50, 0, 0, 8, 1)
    )
    after = _layers(
        ("a", "Dense", 800, 800, 1600, 80, 10), ("b", "Dense", 40, 40, 80, 0, 0), ("new", "Dense", 10, 10, 20, 16, 2)
    )
    diff = bg.layer_diff(before, after, "m.keras")
    assert [(r["layer"], r["change"], r["delta_bytes"]) for r in diff["layers"]] == [
        ("a", "grew", 1600),  # 800+800+1600 - (400+400+800); activations unchanged
        ("b", "shrank", -240),
        ("gone", "removed", -58),
        ("new", "new", 56),
    ]
    assert diff["layers"][0]["param_delta_bytes"] == 1600 and diff["layers"][0]["activation_delta_bytes"] == 0
    assert diff["layers"][2]["after_bytes"] is None and diff["layers"][3]["before_bytes"] is None
    assert (diff["grew"], diff["shrank"], diff["new"], diff["removed"]) == (1, 1, 1, 1)
    assert diff["before_bytes"] == 1680 + 400 + 58 and diff["after_bytes"] == 3280 + 160 + 56
    assert diff["delta_bytes"] == diff["after_bytes"] - diff["before_bytes"]


def test_layer_diff_moves_a_baseline_at_another_batch_size_along_its_per_sample_line():
    before = _layers(("a", "Dense", 0, 0, 0, 80, 10), batch=8)  # fixed 0 + 10 per sample
    same = _layers(("a", "Dense", 0, 0, 0, 320, 10), batch=32)
    assert bg.layer_diff(before, same, "m.keras")["layers"] == []  # 10 x 32 on both sides
    grown = _layers(("a", "Dense", 0, 0, 0, 352, 11), batch=32)
    row = bg.layer_diff(before, grown, "m.keras")["layers"][0]
    assert (row["before_bytes"], row["after_bytes"], row["activation_delta_bytes"]) == (320, 352, 32)


def test_a_baseline_value_becomes_a_budget_at_the_baselines_batch_size():
    entry = bg.BaselineEntry("m.keras", Metric.training_memory, 1000, batch_size=16)
    budget = bg.baseline_budget(entry, "models/m.keras", bg.Overrides(max_increase=0.05))
    assert (budget.metric, budget.max, budget.max_increase, budget.batch_size) == (
        Metric.training_memory,
        None,
        0.05,
        16,
    )
    assert bg.baseline_budget(entry, "m", bg.Overrides(batch_size=4)).batch_size == 4
    assert bg.evaluate(budget, "m", 1051, 1000).status is bg.Status.failed
    assert bg.evaluate(budget, "m", 1050, 1000).status is bg.Status.passed
    report_only = bg.baseline_budget(entry, "m", bg.Overrides())
    assert bg.evaluate(report_only, "m", 10**9, 1000).status is bg.Status.passed  # no --max-increase: shown only


def test_baseline_layers_are_read_from_profile_and_check_json():
    profile = {
        "model": {"path": "models/m.keras", "name": "m", "file_bytes": 10},
        "totals": {"params": 1, "param_bytes": 4, "inference_peak_bytes": 5, "training_peak_bytes": 9},
        "batch_size": 8,
        "batch_line": {},
        "layers": [
            {
                "path": "d",
                "class_name": "Dense",
                "param_bytes": 4,
                "gradient_bytes": 4,
                "optimizer_bytes": 8,
                "activation_bytes": 64,
                "activation_bytes_per_sample": 8,
            }
        ],
    }
    base = bg.baseline_from_json(profile, "main.json")
    assert base.layers_for("other/checkout/models/m.keras").layers[0].activations_at(2, 8) == 16
    assert {e.metric for e in base.entries_for("models/m.keras")} == set(Metric)
    check = {"budgets": [], "layers": [{"model": "models/m.keras", "batch_size": 8, "layers": profile["layers"]}]}
    assert bg.baseline_from_json(check, "c.json").layers_for("models/m.keras").batch_size == 8


# --- the command ----------------------------------------------------------------------------------------


@pytest.fixture()
def project(tmp_path, mlp_path, nested_path, monkeypatch) -> Path:
    models = tmp_path / "proj" / "models"
    models.mkdir(parents=True)
    shutil.copy(mlp_path, models / "mlp.keras")
    shutil.copy(nested_path, models / "nested.keras")
    monkeypatch.chdir(tmp_path / "proj")
    return tmp_path / "proj"


@pytest.fixture()
def main_json(cli, project) -> Path:
    """main's baseline: the mlp profiled at batch 8, then made to look smaller (it grew since)."""
    r = cli("profile", "models/mlp.keras", "-b", "8", "-f", "json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"]["path"] == "models/mlp.keras"
    hidden = next(row for row in doc["layers"] if row["path"] == "hidden")
    for key in ("param_bytes", "gradient_bytes"):
        hidden[key] //= 2
        doc["totals"][key] -= hidden[key]
    hidden["optimizer_bytes"] //= 2
    doc["totals"]["training_peak_bytes"] -= 2 * hidden["param_bytes"] + hidden["optimizer_bytes"]
    doc["layers"] = [row for row in doc["layers"] if row["path"] != "out"]  # "out" is new on this branch
    path = project / "main.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_baseline_with_max_increase_gates_with_no_other_budget(cli, main_json):
    r = cli("check", "--baseline", "main.json", "--max-increase", "5%", "-f", "json")
    assert r.exit_code == 1, r.stderr
    data = json.loads(r.stdout)
    rows = {row["metric"]: row for row in data["budgets"]}
    assert set(rows) == {m.value for m in Metric}  # every metric the baseline holds
    assert rows["param_memory"]["status"] == "fail" and rows["param_memory"]["delta_percent"] > 5
    assert rows["training_memory"]["delta"] > 0 and rows["training_memory"]["batch_size"] == 8
    assert rows["params"]["status"] == "pass" and rows["params"]["delta"] == 0
    assert rows["file_size"]["delta"] == 0 and rows["file_size"]["source"] == "--baseline"
    assert rows["param_memory"]["delta"] > 0 and rows["param_memory"]["max_increase"] == 0.05
    # the same with the model named, and with an explicit budget added to the baseline's
    assert cli("check", "models/mlp.keras", "--baseline", "main.json", "--max-increase", "5%").exit_code == 1
    r = cli("check", "models/mlp.keras", "--baseline", "main.json", "--max-params", "1", "-f", "json")
    rows = [row for row in json.loads(r.stdout)["budgets"]]
    assert r.exit_code == 1 and len(rows) == len(Metric)
    assert next(row for row in rows if row["metric"] == "params")["source"] == "--max-params"
    # without --max-increase the baseline's metrics are compared and shown, never failed
    assert cli("check", "--baseline", "main.json").exit_code == 0


def test_a_baseline_naming_a_missing_model_is_a_usage_error(cli, main_json, project):
    (project / "models" / "mlp.keras").unlink()
    r = cli("check", "--baseline", "main.json", "--max-increase", "5%")
    assert r.exit_code == 2 and "models/mlp.keras" in r.stderr and "not a file" in r.stderr


def test_a_model_the_baseline_does_not_hold_still_needs_a_budget(cli, main_json):
    r = cli("check", "models/nested.keras", "--baseline", "main.json", "--max-increase", "5%")
    assert r.exit_code == 2 and "baseline" in r.stderr


def test_why_lists_the_layers_that_changed_in_every_format(cli, main_json):
    args = ("check", "--baseline", "main.json", "--max-increase", "5%", "--why")
    data = json.loads(cli(*args, "-f", "json").stdout)
    (why,) = data["why"]
    changes = {row["layer"]: row for row in why["layers"]}
    assert set(changes) == {"hidden", "out"} and changes["out"]["change"] == "new"
    assert changes["hidden"]["change"] == "grew" and changes["hidden"]["activation_delta_bytes"] == 0
    assert why["batch_size"] == 8 and (why["grew"], why["new"]) == (1, 1)
    # the check's own JSON holds the per-layer bytes: it can be the next baseline
    assert [m["model"] for m in data["layers"]] == ["models/mlp.keras"]

    table = cli(*args)
    assert table.exit_code == 1 and "why models/mlp.keras" in table.stdout and "hidden" in table.stdout
    md = cli(*args, "-f", "markdown").stdout
    assert "### Why: layers against the baseline" in md and "| `hidden` | Dense | grew |" in md
    assert "<details>" not in md  # two rows: nothing to fold
    gh = cli(*args, "-f", "github").stdout
    assert re.search(r"^::notice file=models/mlp.keras,title=kmemopt%3A layer grew::hidden \(Dense\) grew \+", gh, re.M)
    assert "::group::kmemopt why models/mlp.keras" in gh and gh.rstrip().endswith("::endgroup::")
    page = cli(*args, "-f", "html").stdout
    assert "Why: layers against the baseline" in page and '<td class="name">hidden</td>' in page


def test_why_folds_long_lists_in_details_for_a_pull_request_comment():
    from kmemopt.report.check import why_markdown

    rows = [
        {
            "layer": f"l{i}",
            "class_name": "Dense",
            "change": "grew",
            "before_bytes": 10,
            "after_bytes": 10 + i,
            "delta_bytes": i,
            "param_delta_bytes": i,
            "activation_delta_bytes": 0,
        }
        for i in range(25, 0, -1)
    ]
    why = [
        {
            "model": "m.keras",
            "batch_size": 8,
            "before_bytes": 250,
            "after_bytes": 575,
            "delta_bytes": 325,
            "grew": 25,
            "shrank": 0,
            "new": 0,
            "removed": 0,
            "note": None,
            "layers": rows,
        }
    ]
    md = why_markdown({"why": why})
    shown, folded = md.split("<details>")
    assert shown.count("| `l") == 10 and folded.count("| `l") == 15
    assert "<summary>15 more changed layers</summary>" in folded and folded.rstrip().endswith("</details>")


def test_why_without_per_layer_data_in_the_baseline_says_so(cli, project):
    r = cli("check", "models/mlp.keras", "--max-params", "1M", "-f", "json")
    (project / "main.json").write_text(json.dumps({**json.loads(r.stdout), "layers": []}))
    r = cli("check", "--baseline", "main.json", "--why", "-f", "json")
    assert r.exit_code == 0, r.stderr
    (why,) = json.loads(r.stdout)["why"]
    assert why["layers"] == [] and "no per-layer data" in why["note"]
