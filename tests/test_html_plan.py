"""The plan's HTML page: built from `PlanResult.to_dict()` alone, names kept as text, checked in Chromium.

One tiny model a module, with a hostile layer name, planned once; the browser helpers are
test_html_report.py's (no console error, no request, a chart that is not one colour).
"""

from __future__ import annotations

import copy
import re

import pytest
from test_html_report import _clean, _data_values, browser, load  # noqa: F401 - fixtures

from kmemopt.report.html import plan_html

EVIL = '<img src=x onerror="console.error(1)">\x1b[31m\nFAKE'


@pytest.fixture(scope="module")
def planned(keras, tmp_path_factory):
    """(PlanResult, its to_dict()) for a two-Dense model whose first layer's name is markup."""
    import kmemopt

    inp = keras.Input((4,), name="inp")
    h = keras.layers.Dense(8, name=EVIL)(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(h), name="<b>m")
    model.compile(optimizer="adam", loss="mse")
    path = tmp_path_factory.mktemp("plan-html") / "evil.keras"
    model.save(path)
    result = kmemopt.plan(path, budget="1GiB", batch_size=4, only=["batch_size", "optimizer", "freeze"], train_last=1)
    return result, result.to_dict()


@pytest.fixture(scope="module")
def plan_data(planned) -> dict:
    return planned[1]


def _measured(data: dict) -> dict:
    """The plan's dict with a `measured` block shaped as kmemopt.plan.run writes it (--measure)."""
    data = copy.deepcopy(data)
    base, plan = data["baseline"]["training_peak_bytes"], data["plan"]["predicted_peak_bytes"]
    data["measured"] = {
        "phase": "train",
        "device": "cpu",
        "baseline": {
            "batch_size": 4,
            "predicted_peak_bytes": base,
            "measured_peak_bytes": base + 1000,
            "error_pct": 1.5,
            "status": "ok",
            "measurement": {},
        },
        "plan": {
            "batch_size": data["plan"]["strategies"][0]["settings"].get("batch_size", 4),
            "predicted_peak_bytes": plan,
            "measured_peak_bytes": plan - 2000,
            "error_pct": -0.5,
            "status": "ok",
            "measurement": {},
            "file": None,
            "not_measured": [],
            "fits_measured": True,
        },
    }
    return data


def test_plan_page_numbers_are_the_json_numbers(plan_data):
    page = plan_html(plan_data)
    values = _data_values(page)
    plan = plan_data["plan"]
    assert plan is not None and plan["fits"]
    assert values["plan-peak"] == values["bar-plan"] == str(plan["predicted_peak_bytes"])
    assert values["baseline-peak"] == values["bar-baseline"] == str(plan_data["baseline"]["training_peak_bytes"])
    assert values["budget"] == values["plan-budget"] == str(plan_data["budget_bytes"]) == str(2**30)
    for i, s in enumerate(plan_data["strategies"]):
        assert values[f"bar-strategy-{i}"] == str(s["predicted_peak_bytes"])
    # the strategies table: one row a strategy, its peak and saving as the JSON has them
    rows = re.findall(r'<tr class="strategy">(.*?)</tr>', page)
    assert len(rows) == len(plan_data["strategies"]) >= 3
    for row, s in zip(rows, plan_data["strategies"]):
        sorts = re.findall(r'data-sort="(-?\d+)"', row)
        assert sorts == [str(s["predicted_peak_bytes"]), str(s["saving_bytes"])]
    for key, value in plan["breakdown"].items():
        if key != "estimated_terms":
            assert re.search(rf'<tr id="plan-breakdown-{key}">.*?data-sort="{value}"', page)
    assert "Keras code" in page and 'id="plan-command"' in page
    for kind in ("exact", "estimated"):
        assert f'class="kind {kind}"' in page
    assert 'class="kind measured"' not in page.split("<footer>")[0]  # nothing measured: no measured label
    assert "default-src 'none'" in page and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)


def test_plan_page_escapes_the_files_names(plan_data):
    page = plan_html(plan_data)
    assert "<img" not in page and "<b>m" not in page
    assert "\x1b" not in page and "\nFAKE" not in page
    # the freezing strategy's pattern holds the layer's path: shown as text in the settings column
    (freeze,) = [s for s in plan_data["strategies"] if s["name"] == "freeze"]
    assert "<img" in freeze["settings"]["pattern"] and "\x1b" in freeze["settings"]["pattern"]
    assert "&lt;img\\ src=x\\ onerror=&quot;console\\.error\\(1\\)&quot;&gt;\\x1b" in page
    code = re.search(r'<pre id="plan-code"><code>(.*?)</code></pre>', page, re.S).group(1)
    assert code.count("\n") == plan_data["plan"]["keras_code"].count("\n")  # a name adds no line


def test_measured_peaks_stand_beside_the_predicted(plan_data):
    data = _measured(plan_data)
    page = plan_html(data)
    values = _data_values(page)
    m = data["measured"]
    assert values["bar-baseline-measured"] == values["measured-baseline"] == str(m["baseline"]["measured_peak_bytes"])
    assert values["bar-plan-measured"] == values["measured-plan"] == str(m["plan"]["measured_peak_bytes"])
    assert values["bar-plan"] == str(m["plan"]["predicted_peak_bytes"])
    assert 'class="kind measured"' in page.split("<footer>")[0]
    assert re.search(r'<tr id="measured-row-plan">.*?\+?-0\.5%', page)


def test_cli_writes_the_page_with_report(cli, planned, tmp_path, monkeypatch):
    """`plan -f html --report FILE` writes plan_html of the result's to_dict() (the planner is not rerun)."""
    import kmemopt.plan.run

    result, data = planned
    monkeypatch.setattr(kmemopt.plan.run, "run", lambda *a, **kw: result)
    out = tmp_path / "plan.html"
    r = cli("plan", tmp_path / "model.keras", "--budget", "1GiB", "-f", "html", "--report", out)
    assert r.exit_code == 0, r.output
    assert out.read_text(encoding="utf-8") == plan_html(data)


def test_plan_page_in_the_browser(load, plan_data):  # noqa: F811 - the fixture imported above
    loaded = load(plan_html(_measured(plan_data)), "plan.html")
    _clean(loaded, "plan.html")
    page = loaded.page
    assert loaded.value("#plan-peak") == plan_data["plan"]["predicted_peak_bytes"] == loaded.value("#bar-plan")
    assert loaded.value("#plan-budget") == plan_data["budget_bytes"]
    assert page.locator("svg#plan-chart rect.peak-bar").count() == len(plan_data["strategies"]) + 4
    assert page.locator("table#strategies tbody tr").count() == len(plan_data["strategies"])
    assert page.locator("img").count() == 0 and page.locator("script").count() == 1
    (i,) = [i for i, s in enumerate(plan_data["strategies"]) if s["name"] == "freeze"]
    shown = page.locator("table#strategies tbody tr").nth(i).locator("td").nth(2).inner_text()
    assert '<img\\ src=x\\ onerror="console\\.error\\(1\\)">\\x1b' in shown  # the name, as text
    from kmemopt.units import format_bytes

    assert page.inner_text("#plan-peak .value") == format_bytes(plan_data["plan"]["predicted_peak_bytes"])
    assert page.locator("svg#plan-chart").bounding_box()["width"] > 600
    assert loaded.screenshot_colours("svg#plan-chart") >= 4
