"""Strings from a model file are data: no output format lets them act on a terminal, a Markdown page,
an XML reader or the one-line error.

The hostile names are real: Keras accepts them as layer, input and model names, saves them and loads
them back. Only a class name (which Keras never resolves) is written into config.json by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from kmemopt.report import safe

ESC, BEL = b"\x1b", b"\x07"
SPOOF = "evil\nok: all good"
HOSTILE_LAYERS = [
    "[bold red]x",  # rich markup
    "\x1b]0;pwned\x07",  # OSC: sets the terminal's title
    "\x1b[2J",  # clears the screen
    "<img src=x onerror=alert(1)>|`tick`|[l](javascript:x)",  # HTML, a table column, a code span, a link
    ":warning:",  # a rich emoji code
    "rtl\u202eexe.txt",  # a bidi override
]
MODEL_NAME = "model\x1b[5m"
INPUT_NAME = "in\x1b[5m"
BAD_CLASS = "Dense\nok: all good\x1b[2J"


def _no_raw_controls(data: bytes) -> None:
    assert ESC not in data and BEL not in data and b"\xe2\x80\xae" not in data  # U+202E in UTF-8


def _no_spoofed_line(text: str) -> None:
    assert not any(line.lstrip(" │|").startswith("ok: all good") for line in text.splitlines())


@pytest.fixture(scope="module")
def hostile_path(keras, tmp_path_factory) -> Path:
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,), name=INPUT_NAME)
    h = inp
    for name in HOSTILE_LAYERS:
        h = keras.layers.Dense(4, name=name)(h)
    out = keras.layers.Dense(3, activation="softmax", name=SPOOF)(h)
    path = tmp_path_factory.mktemp("hostile") / "hostile.keras"
    keras.Model(inp, out, name=MODEL_NAME).save(path)
    return path


def _with_config(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    return dst


@pytest.fixture(scope="module")
def bad_class_path(hostile_path) -> Path:
    def edit(config):
        next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")["class_name"] = BAD_CLASS

    return _with_config(hostile_path, hostile_path.with_name("badclass.keras"), edit)


def _run_cli(*args, env=None) -> subprocess.CompletedProcess:
    """The real command in its own process: the raw bytes it writes."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-m", "kmemopt", *map(str, args)], capture_output=True, timeout=300, env=env)


# --------------------------------------------------------------------------------------------
# the helpers


def test_visible_shows_every_control_character_and_keeps_the_rest():
    assert safe.visible("dense_1") == "dense_1"
    assert safe.visible("évolution 東京 ☃") == "évolution 東京 ☃"
    assert safe.visible("\x1b]0;pwned\x07") == "\\x1b]0;pwned\\x07"
    assert safe.visible(SPOOF) == "evil\\nok: all good"
    assert safe.visible("a\rb\tc\x00d\x7fe\x85f") == "a\\rb\\tc\\x00d\\x7fe\\x85f"
    assert safe.visible("rtl\u202eexe\u2028x") == "rtl\\u202eexe\\u2028x"
    assert safe.visible(None) == ""


def test_markdown_escapes_syntax_and_code_spans_hold_any_name():
    assert safe.markdown("<b>|[l](x)`*_") == "\\<b\\>\\|\\[l\\](x)\\`\\*\\_"
    assert safe.markdown(SPOOF) == "evil\\\\nok: all good"
    assert safe.markdown_code("a`b|c") == "``a`b\\|c``"
    assert safe.markdown_code("`x") == "`` `x ``"
    assert safe.markdown_code("a|b", table=False) == "`a|b`"


def test_rich_markup_is_escaped_and_never_interpreted():
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=200, emoji=False, force_terminal=False)
    console.print(safe.markup("[bold red]x[/] \x1b[2J :warning:"))
    assert console.file.getvalue() == "[bold red]x[/] \\x1b[2J :warning:\n"


# --------------------------------------------------------------------------------------------
# profile


@pytest.mark.parametrize("fmt", ["table", "json", "markdown"])
def test_profile_shows_hostile_names_as_text_in_every_format(cli, hostile_path, fmt):
    result = cli("profile", hostile_path, "-f", fmt)
    assert result.exit_code == 0, result.stderr
    _no_raw_controls(result.stdout_bytes)
    _no_raw_controls(result.stderr_bytes)
    _no_spoofed_line(result.stdout)
    if fmt == "json":  # the data keeps the exact names; json.dumps wrote them as \u escapes
        data = json.loads(result.stdout)
        assert [r["name"] for r in data["layers"]][1:] == [*HOSTILE_LAYERS, SPOOF]
        assert data["model"]["name"] == MODEL_NAME
    elif fmt == "table":
        for shown in ("[bold red]x", "\\x1b]0;pwned\\x07", "\\x1b[2J", ":warning:", "evil\\nok: all good"):
            assert shown in result.stdout
        assert "model\\x1b[5m" in result.stdout and "rtl\\u202eexe.txt" in result.stdout
    else:
        rows = [line for line in result.stdout.splitlines() if line.startswith("| `") or line.startswith("| ``")]
        assert len(rows) == 2 + len(HOSTILE_LAYERS)  # input, hostile layers, the output: one line each
        for row in rows:  # eight columns: no name added one (pipes inside names are escaped)
            assert len(row.replace("\\|", "").split("|")) == 10
        assert "`` <img src=x onerror=alert(1)>\\|`tick`\\|[l](javascript:x) ``" not in result.stdout
        assert "``<img src=x onerror=alert(1)>\\|`tick`\\|[l](javascript:x)``" in result.stdout
        assert "## kmemopt profile: model\\\\x1b\\[5m" in result.stdout


def test_profile_html_shows_hostile_names_as_escaped_text(cli, hostile_path):
    import html

    result = cli("profile", hostile_path, "-f", "html")
    assert result.exit_code == 0, result.stderr
    _no_raw_controls(result.stdout_bytes)
    page = result.stdout
    assert "<img" not in page  # the name's markup is text: &lt;img ...
    shown = html.escape("<img src=x onerror=alert(1)>|`tick`|[l](javascript:x)", quote=True)
    assert f'<td class="name">{shown}</td>' in page
    assert html.escape("evil\\nok: all good") in page and "model\\x1b[5m" in page
    assert page.count("<script>") == 1  # the page's own (table sorting), none from a name


@pytest.mark.slow  # a CLI run under a terminal; the fast tier keeps the one-line error check: `make test` runs it
def test_profile_on_a_terminal_prints_no_hostile_sequence(hostile_path):
    """With colours on (a terminal), rich's own styles are ESC sequences; the file's are not among them."""
    proc = _run_cli("profile", hostile_path, env={"FORCE_COLOR": "1", "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert ESC in proc.stdout  # the colours: this is the terminal path
    for raw in (b"\x1b]0;pwned", BEL, b"\x1b[2J", b"\x1b[5m", b"\xe2\x80\xae"):
        assert raw not in proc.stdout and raw not in proc.stderr
    _no_spoofed_line(proc.stdout.decode())


# --------------------------------------------------------------------------------------------
# the error line


@pytest.mark.parametrize("colour", [pytest.param(False, marks=pytest.mark.slow), True])
def test_an_error_quoting_a_hostile_class_name_is_exactly_one_line(bad_class_path, colour):
    proc = _run_cli("profile", bad_class_path, env={"FORCE_COLOR": "1"} if colour else {"NO_COLOR": "1"})
    assert proc.returncode == 3
    assert proc.stdout == b""
    # On a terminal the spinner ran first and erased its own line (ESC[2K): what stays is the error.
    shown = proc.stderr.rsplit(b"\x1b[2K", 1)[-1] if colour else proc.stderr
    assert shown.count(b"\n") == 1 and shown.endswith(b"\n") and b"error:" in shown
    assert b"\x1b[2J" not in proc.stderr and BEL not in proc.stderr
    if not colour:
        _no_raw_controls(proc.stderr)
    text = proc.stderr.decode()
    assert "error:" in text and "Dense\\nok: all good\\x1b[2J" in text


def test_debug_tracebacks_show_the_message_as_text_too(cli, bad_class_path):
    result = cli("--debug", "profile", bad_class_path)
    assert result.exit_code == 3
    _no_raw_controls(result.stderr_bytes)
    _no_spoofed_line(result.stderr)
    assert "Traceback (most recent call last):" in result.stderr and "UnsafeModelError: " in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: [TRUST-UNKNOWN]")


def test_render_error_keeps_a_long_message_on_one_line():
    import io

    from rich.console import Console

    from kmemopt.report import render_error

    console = Console(file=io.StringIO(), width=40, emoji=False)
    render_error(console, "x" * 200 + "\n[bold]ok: all good\r\x1b[2J")
    out = console.file.getvalue()
    assert out.count("\n") == 1 and out.endswith("[bold]ok: all good\\r\\x1b[2J\n") and "\x1b" not in out


# --------------------------------------------------------------------------------------------
# check


@pytest.fixture(scope="module")
def check_folder(hostile_path, bad_class_path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("check")
    shutil.copy(hostile_path, folder / "a\x1b[2J\nok: all good.keras")  # a hostile file name too
    shutil.copy(bad_class_path, folder / "b.keras")
    return folder


@pytest.mark.parametrize("fmt", ["table", "json", "markdown", "junit", "github"])
def test_check_shows_hostile_names_and_messages_as_text_in_every_format(cli, check_folder, monkeypatch, fmt):
    monkeypatch.chdir(check_folder)
    result = cli("check", "*.keras", "--max-params", "10", "-f", fmt)
    assert result.exit_code == 3  # b.keras is rejected; the other model is still checked (and fails)
    _no_raw_controls(result.stdout_bytes)
    _no_raw_controls(result.stderr_bytes)
    _no_spoofed_line(result.stdout)
    assert len(result.stderr.splitlines()) == 1 and "b.keras was not checked" in result.stderr
    shown_name, shown_class = "a\\x1b[2J\\nok: all good.keras", "Dense\\nok: all good\\x1b[2J"
    if fmt == "json":
        data = json.loads(result.stdout)
        assert {r["model"] for r in data["budgets"]} == {"a\x1b[2J\nok: all good.keras", "b.keras"}
        assert shown_class in data["errors"][0]["message"]  # messages are prose: escaped where they are made
    elif fmt == "junit":
        root = ET.fromstring(result.stdout_bytes)  # well-formed XML 1.0
        cases = root.iter("testcase")
        assert {c.get("classname") for c in cases} == {shown_name, "b.keras"}
        assert shown_class in root.find(".//error").get("message")
    elif fmt == "github":
        assert all(line.startswith("::") for line in result.stdout.splitlines())
        assert shown_class in result.stdout
    elif fmt == "markdown":
        rows = [line for line in result.stdout.splitlines() if line.startswith("| `")]
        assert len(rows) == 2 and all(len(r.replace("\\|", "").split("|")) == 9 for r in rows)
        assert shown_class.replace("\\", "\\\\").replace("[", "\\[") in result.stdout
    else:
        assert shown_class in result.stdout


# --------------------------------------------------------------------------------------------
# shrink


@pytest.mark.parametrize("fmt", ["table", "json", "markdown"])
def test_shrink_dry_run_shows_hostile_names_as_text(cli, hostile_path, fmt):
    result = cli("shrink", hostile_path, "--dry-run", "-q", "int8", "-f", fmt)
    assert result.exit_code == 0, result.stderr
    _no_raw_controls(result.stdout_bytes)
    _no_raw_controls(result.stderr_bytes)
    _no_spoofed_line(result.stdout)
    if fmt == "json":
        data = json.loads(result.stdout)
        assert {a["layer"] for p in data["passes"] for a in p["applied"]} >= {"[bold red]x", SPOOF}
    elif fmt == "table":
        assert "[bold red]x" in result.stdout and "\\x1b]0;pwned\\x07" in result.stdout


def test_shrink_refuses_in_one_line_a_layer_name_tensorflow_cannot_run(cli, hostile_path, tmp_path):
    """TensorFlow's name scopes refuse such names (Keras's own predict fails deep inside tf.function):
    exit 3 with the name shown as text, not exit 4, and nothing written."""
    result = cli("shrink", hostile_path, "-o", tmp_path / "out.keras", "-q", "int8", "--samples", "4")
    assert result.exit_code == 3, result.stderr
    _no_raw_controls(result.stderr_bytes)
    assert len(result.stderr.splitlines()) == 1
    assert "TensorFlow cannot run this model: the model name 'model\\x1b[5m'" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def hostile_outputs_path(keras, tmp_path_factory) -> Path:
    """Names TensorFlow runs, and output names (a dict model's keys) that are hostile."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,), name="features")
    h = keras.layers.Dense(8, name="hidden")(inp)
    outputs = {
        SPOOF + "\x1b[2J": keras.layers.Dense(3, activation="softmax", name="probs")(h),
        "[bold red]emb<img>|`x`": keras.layers.Dense(4, activation="tanh", name="emb")(h),
    }
    path = tmp_path_factory.mktemp("outputs") / "outputs.keras"
    keras.Model(inp, outputs, name="outputs").save(path)
    return path


@pytest.mark.slow
def test_shrink_report_with_fidelity_is_safe_in_every_format(cli, hostile_outputs_path, tmp_path):
    """A real shrink (fidelity, reload check): its JSON keeps the output names, table and Markdown show
    them as text."""
    from kmemopt.report import render_to_text
    from kmemopt.report.shrink import render_shrink, shrink_markdown

    out = tmp_path / "out.keras"
    result = cli("shrink", hostile_outputs_path, "-o", out, "-q", "int8", "--samples", "4", "-f", "json")
    assert result.exit_code == 0, result.stderr
    _no_raw_controls(result.stdout_bytes)
    data = json.loads(result.stdout)
    outputs = {o["name"]: o for o in data["fidelity"]["outputs"]}
    assert list(outputs) == [SPOOF + "\x1b[2J", "[bold red]emb<img>|`x`"]
    assert outputs[SPOOF + "\x1b[2J"]["kind"] == "class_scores"  # a softmax over 3 classes
    assert outputs["[bold red]emb<img>|`x`"]["kind"] == "values"  # tanh features: no top-1 agreement
    assert outputs["[bold red]emb<img>|`x`"]["top1_agreement"] is None
    table = render_to_text(lambda c: render_shrink(data, c, all_layers=True))
    markdown = shrink_markdown(data)
    for text in (table, markdown):
        assert "\x1b" not in text and "\x07" not in text
        _no_spoofed_line(text)
    assert "evil\\nok: all good\\x1b[2J" in table and "[bold red]emb<img>|`x`" in table
    assert "| `evil\\nok: all good\\x1b[2J` |" in markdown
    assert "| `` [bold red]emb<img>\\|`x` `` |" in markdown
