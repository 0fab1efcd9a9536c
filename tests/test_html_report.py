"""The HTML reports: built from the JSON alone, self-contained, and checked in a real browser.

The browser tests load each kind of page in headless Chromium (Debian's `chromium`, driven by
playwright without downloading a browser of its own): no console error, no network request, the
charts drawn (elements present, a screenshot that is not one colour), and the figures in the DOM
equal to the JSON's. They skip only where no Chromium is installed outside CI; in CI (CI=true) a
missing Chromium fails them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib

import pytest

from kmemopt.report.html import check_html, profile_html, shrink_html

MiB = 1024**2


def _chromium() -> str | None:
    for name in (os.environ.get("KMEMOPT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _data_values(page: str) -> dict[str, str]:
    """id -> data-value of every element that has both (the page's headline figures)."""
    found = {}
    for tag in re.finditer(r"<[a-z]+ [^>]*>", page):
        ident = re.search(r' id="([^"]+)"', tag.group(0))
        value = re.search(r' data-value="([^"]*)"', tag.group(0))
        if ident and value:
            found[ident.group(1)] = value.group(1)
    return found


# --------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def profile_data(mlp_path) -> dict:
    from kmemopt.api import profile

    return profile(mlp_path, batch_size=16, budget=64 * MiB).to_dict()


@pytest.fixture(scope="module")
def shrink_data(mlp_path, tmp_path_factory) -> dict:
    import kmemopt

    out = tmp_path_factory.mktemp("shrunk") / "mlp.int8.keras"
    return kmemopt.shrink(mlp_path, out, quantize="int8", samples=8).to_dict()


@pytest.fixture(scope="module")
def check_data(mlp_path, profile_data, tmp_path_factory) -> dict:
    from kmemopt.gate.check import check

    folder = tmp_path_factory.mktemp("check")
    baseline = folder / "main.json"
    smaller = json.loads(json.dumps(profile_data))
    smaller["model"]["path"] = str(mlp_path)
    smaller["totals"]["params"] -= 100  # the baseline model was a little smaller
    baseline.write_text(json.dumps(smaller))
    report = check(
        [mlp_path], max_params="1M", max_training_memory="1GiB", batch_size=16, baseline=baseline, use_config=False
    )
    return report.to_dict()


# --------------------------------------------------------------------------------------------- the timeline


def test_timeline_peak_is_the_training_peak_and_its_activations_the_kept_total(profile_data):
    tl, t = profile_data["timeline"], profile_data["totals"]
    assert tl["batch_size"] == 16
    assert tl["peak_bytes"] == t["training_peak_bytes"]
    forward = [s for s in tl["steps"] if s["phase"] == "forward"]
    backward = [s for s in tl["steps"] if s["phase"] == "backward"]
    assert [s["layer"] for s in forward] == ["hidden", "bn", "out"]  # one step a call; the input is no call
    assert forward[-1]["activations"] == t["activation_bytes"]
    assert [s["layer"] for s in backward] == [s["layer"] for s in reversed(forward)]
    assert tl["steps"][-1] == {"phase": "update", "layer": None, "activations": 0, "transient": 0}
    assert tl["steps"][tl["peak_step"]]["phase"] == "backward"
    # activations only pile up in the forward pass
    assert all(a["activations"] <= b["activations"] for a, b in zip(forward, forward[1:]))


def test_timeline_backward_step_holds_the_layers_inputs_and_outputs(keras):
    """One Dense 8 -> 4 at batch 2, float32: its backward step holds d(input) 2*8*4 and d(output) 2*4*4 bytes."""
    from kmemopt.api import profile

    inp = keras.Input((8,), name="x")
    model = keras.Model(inp, keras.layers.Dense(4, name="d")(inp))
    data = profile(model, batch_size=2).to_dict()
    steps = data["timeline"]["steps"]
    assert [(s["phase"], s["layer"]) for s in steps] == [("forward", "d"), ("backward", "d"), ("update", None)]
    assert steps[1]["transient"] == 2 * 8 * 4 + 2 * 4 * 4
    # kept: the input (the kernel's gradient reads it) and the output (the loss reads it)
    assert steps[0]["activations"] == data["totals"]["activation_bytes"] == 2 * 8 * 4 + 2 * 4 * 4


def test_timeline_peak_is_the_training_peak_for_nested_and_shared_layers(nested_shared_model):
    from kmemopt.api import profile

    data = profile(nested_shared_model, batch_size=8).to_dict()
    tl = data["timeline"]
    assert tl["peak_bytes"] == data["totals"]["training_peak_bytes"]
    assert [s["layer"] for s in tl["steps"] if s["phase"] == "forward"] == ["shared", "shared", "sub/a", "sub/b"]


# --------------------------------------------------------------------------------------------- the page, as text


def test_profile_page_figures_are_the_json_numbers(profile_data):
    page = profile_html(profile_data)
    t = profile_data["totals"]
    values = _data_values(page)
    assert values["training-peak"] == str(t["training_peak_bytes"])
    assert values["inference-peak"] == str(t["inference_peak_bytes"])
    assert values["timeline-peak"] == str(t["training_peak_bytes"])
    assert values["params"] == str(t["params"]) and values["total-params"] == str(t["params"])
    assert values["weights"] == values["total-weights"] == str(t["param_bytes"])
    assert values["optimizer-state"] == values["total-optimizer"] == str(t["optimizer_bytes"])
    assert values["total-activations"] == str(t["activation_bytes"])
    assert values["batch-budget"] == str(64 * MiB)
    assert values["file-size"] == str(profile_data["model"]["file_bytes"])
    f = profile_data["file"]
    assert 'class="file-weights"' in page and f'data-value="{f["weights_bytes"]}"' in page
    assert f["optimizer_bytes"] > 0 and f'data-value="{f["optimizer_bytes"]}"' in page  # trained with Adam
    for kind in ("exact", "estimated"):
        assert f'class="kind {kind}"' in page


def test_pages_are_self_contained(profile_data, shrink_data, check_data):
    for page in (profile_html(profile_data), shrink_html(shrink_data), check_html(check_data)):
        assert "Content-Security-Policy" in page and "default-src 'none'" in page
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
        assert "@import" not in page and "url(" not in page


@pytest.mark.slow
def test_resnet50_profile_page_is_small(keras):
    from kmemopt.api import profile
    from kmemopt.keras_compat.variables import unallocated

    with unallocated():
        model = keras.applications.ResNet50(weights=None)
    data = profile(model, batch_size=32).to_dict()
    page = profile_html(data)
    assert len(page.encode()) < 3 * 1024 * 1024
    assert data["timeline"]["peak_bytes"] == data["totals"]["training_peak_bytes"]
    assert page.count("<tr") >= len(data["layers"])


# --------------------------------------------------------------------------------------------- the browser


def _png_colours(png: bytes, limit: int = 64) -> int:
    """How many distinct pixel colours a PNG holds (up to `limit`): a blank page has one."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, chunk = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour_type = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour_type in (2, 6)
            channels = 3 if colour_type == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    previous, colours = bytearray(stride), set()
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(bytes(line[i : i + channels]) for i in range(0, stride, channels * 7))
        if len(colours) >= limit:
            return len(colours)
        previous = line
    return len(colours)


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is not installed: CI must run the browser tests (the Makefile installs it).")
        pytest.skip("no Chromium installed (apt-get install chromium); the HTML pages are tested as text only")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Loaded:
    def __init__(self, page, problems: list[str], requests: list[str]):
        self.page, self.problems, self.requests = page, problems, requests

    def value(self, selector: str) -> int:
        return int(self.page.get_attribute(selector, "data-value"))

    def screenshot_colours(self, selector: str) -> int:
        return _png_colours(self.page.locator(selector).first.screenshot())


@pytest.fixture()
def load(browser, tmp_path):
    pages = []

    def open_page(html_text: str, name: str) -> Loaded:
        path = tmp_path / name
        path.write_text(html_text, encoding="utf-8")
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        pages.append(page)
        problems: list[str] = []
        requests: list[str] = []
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.as_uri(), wait_until="load")
        return Loaded(page, problems, requests)

    yield open_page
    for page in pages:
        page.close()


def _clean(loaded: Loaded, name: str) -> None:
    assert loaded.problems == []
    assert [u for u in loaded.requests if not u.endswith(name)] == []  # nothing but the page itself


def test_profile_page_in_the_browser(load, profile_data):
    loaded = load(profile_html(profile_data), "profile.html")
    _clean(loaded, "profile.html")
    page, t = loaded.page, profile_data["totals"]
    assert page.locator("svg#timeline path.term").count() >= 4  # weights, optimizer, gradients, activations...
    assert page.locator("svg#timeline rect.hit").count() == len(profile_data["timeline"]["steps"])
    assert page.locator("svg#batch-chart line.line-training").count() == 1
    assert page.locator("svg#file-chart rect").count() >= 2
    assert page.locator("table#layers tbody tr").count() == len(profile_data["layers"])
    assert loaded.value("#training-peak") == t["training_peak_bytes"] == loaded.value("#timeline-peak")
    assert loaded.value("#inference-peak") == t["inference_peak_bytes"]
    assert loaded.value("#total-weights") == t["param_bytes"]
    assert loaded.value("#total-activations") == t["activation_bytes"]
    # the numbers a reader sees are the JSON's, formatted
    from kmemopt.units import format_bytes

    assert page.inner_text("#training-peak .value") == format_bytes(t["training_peak_bytes"])
    box = page.locator("svg#timeline").bounding_box()
    assert box["width"] > 600 and box["height"] > 200
    assert loaded.screenshot_colours("svg#timeline") >= 6
    assert loaded.screenshot_colours("svg#batch-chart") >= 3


def test_profile_table_sorts_by_a_clicked_column(load, profile_data):
    loaded = load(profile_html(profile_data), "sort.html")
    page = loaded.page
    page.click("table#layers thead th:nth-child(10)")  # Total
    page.click("table#layers thead th:nth-child(10)")  # again: descending
    first = page.locator("table#layers tbody tr").first.locator("td").nth(9).get_attribute("data-sort")
    totals = [
        r["param_bytes"] + r["activation_bytes"] + r["gradient_bytes"] + r["optimizer_bytes"]
        for r in profile_data["layers"]
    ]
    assert int(first) == max(totals)
    _clean(loaded, "sort.html")


def test_shrink_page_in_the_browser(load, shrink_data):
    loaded = load(shrink_html(shrink_data), "shrink.html")
    _clean(loaded, "shrink.html")
    page = loaded.page
    for key, ident in (
        ("file_bytes", "file"),
        ("param_bytes", "param-memory"),
        ("training_peak_bytes", "training-peak"),
    ):
        row = page.locator(f"#side-{ident}")
        assert int(row.get_attribute("data-before")) == shrink_data["before"][key]
        assert int(row.get_attribute("data-after")) == shrink_data["after"][key]
    weighted = [r for r in shrink_data["layers"] if r["param_bytes_before"]]
    assert page.locator("table#shrink-layers tbody tr").count() == len(weighted)
    quantize = next(p for p in shrink_data["passes"] if p["applied"])
    heading = page.locator("h3.pass", has_text=quantize["name"]).first
    assert int(heading.get_attribute("data-applied")) == len(quantize["applied"])
    assert page.locator("table#fidelity tbody tr").count() == len(shrink_data["fidelity"]["outputs"])
    assert loaded.screenshot_colours("svg#before-after") >= 3


def test_check_page_in_the_browser(load, check_data):
    loaded = load(check_html(check_data), "check.html")
    _clean(loaded, "check.html")
    page = loaded.page
    rows = page.locator("table#budgets tbody tr")
    assert rows.count() == len(check_data["budgets"])
    for i, budget in enumerate(check_data["budgets"]):
        cells = rows.nth(i).locator("td")
        assert int(cells.nth(2).get_attribute("data-sort")) == budget["value"]
        if budget["baseline"] is not None:
            assert int(cells.nth(4).get_attribute("data-sort")) == budget["baseline"]
            assert int(cells.nth(5).get_attribute("data-sort")) == budget["delta"]
    assert page.get_attribute("#verdict", "data-verdict") == check_data["verdict"]
    assert page.locator("svg.bullet").count() == len(check_data["budgets"])
    assert loaded.screenshot_colours("table#budgets") >= 3


def test_hostile_names_stay_text_in_the_browser(load, keras, tmp_path):
    """A layer named like markup is shown as its text; no element, no script comes from it."""
    from kmemopt.api import profile

    inp = keras.Input((4,), name="in")
    h = keras.layers.Dense(4, name='<img src=x onerror="console.error(1)">')(inp)
    out = keras.layers.Dense(2, name="<svg onload=console.error(2)><script>console.error(3)<!--")(h)
    data = profile(keras.Model(inp, out, name="<b>m"), batch_size=2).to_dict()
    loaded = load(profile_html(data), "hostile.html")
    _clean(loaded, "hostile.html")
    page = loaded.page
    assert page.locator("img").count() == 0 and page.locator("b", has_text="m").count() == 0
    assert page.locator("script").count() == 1  # the page's own (sorting)
    names = page.locator("table#layers td.name").all_inner_texts()
    assert '<img src=x onerror="console.error(1)">' in names
    assert "<svg onload=console.error(2)><script>console.error(3)<!--" in names
    assert page.title() == "kmemopt profile: <b>m"


@pytest.mark.slow
def test_measured_profile_page_draws_the_measured_peak(load, mlp_path):
    """With --measure: the measured training peak is a line on the timeline, the runs are points."""
    from kmemopt.api import profile
    from kmemopt.profiling.measure import measure_profile

    result = measure_profile(profile(mlp_path, batch_size=8), mlp_path, batch_sizes=[2, 8])
    data = result.to_dict()
    m = data["measured"]
    assert m["status"] == "ok", m
    loaded = load(profile_html(data), "measured.html")
    _clean(loaded, "measured.html")
    page = loaded.page
    assert loaded.value("#timeline-measured") == m["training_peak_bytes"] == loaded.value("#measured-training")
    assert loaded.value("#measured-inference") == m["inference_peak_bytes"]
    assert page.locator("svg#batch-chart rect.measured-point").count() == 4  # 2 runs x 2 phases
    assert page.locator("table#measured-runs tbody tr").count() == 2
    assert 'class="kind measured"' in page.content()


@pytest.mark.slow  # a pruning shrink with its reload check; the fast tier keeps the profile and plan pages: `make test` runs it
def test_shrink_page_shows_each_pruned_layers_widths(keras, tmp_path):
    """--prune-channels: the page lists every layer whose width changed, with the JSON's widths."""
    import kmemopt

    x = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv_a")(x)
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv_b")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    path = tmp_path / "cnn.keras"
    keras.Model(x, keras.layers.Dense(3, name="out")(h)).save(path)
    data = kmemopt.shrink(path, tmp_path / "cnn.slim.keras", prune_channels=0.5, samples=4).to_dict()
    page = shrink_html(data)
    shown = {
        m.group(3): (int(m.group(1)), int(m.group(2)))
        for m in re.finditer(r'<tr data-before="(\d+)" data-after="(\d+)"><td class="name">([^<]*)</td>', page)
    }
    expected = {
        r["layer"]: (r["before"], r["after"]) for r in data["channel_pruning"]["layers"] if r["after"] < r["before"]
    }
    assert expected and {k: shown[k] for k in expected} == expected
    assert shown["conv_a"] == (8, 4)
