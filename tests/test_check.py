"""`kmemopt check`: config discovery, globs, every output format, baselines and every exit code."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

import kmemopt
from kmemopt.gate import check as checking

MLP_PARAMS = 16 * 32 + 32 + 4 * 32 + 32 * 4 + 4  # Dense, BatchNormalization (4 vectors), Dense


@pytest.fixture(scope="module")
def mlp_profile(mlp_path):
    return kmemopt.profile(mlp_path, batch_size=8)


def _write_config(folder: Path, body: str, name: str = "pyproject.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text('[project]\nname = "demo"\n\n' + body)
    return path


def _budget(model: str, metric: str, max_: str | None = None, **extra) -> str:
    lines = ["[[tool.kmemopt.budget]]", f'model = "{model}"', f'metric = "{metric}"']
    if max_ is not None:
        lines.append(f'max = "{max_}"')
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n\n"


@pytest.fixture()
def project(tmp_path, mlp_path, nested_path, monkeypatch):
    """A project folder with models/ (two tiny models) as the working directory; no config yet."""
    models = tmp_path / "proj" / "models"
    models.mkdir(parents=True)
    shutil.copy(mlp_path, models / "mlp.keras")
    shutil.copy(nested_path, models / "nested.keras")
    monkeypatch.chdir(tmp_path / "proj")
    return tmp_path / "proj"


def _unsafe_copy(src: Path, dst: Path) -> Path:
    """The same model with its layers claiming to come from the `os` module (never imported)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b'"module": "keras.layers"', b'"module": "os"')
            zout.writestr(item, data)
    return dst


def _json(result) -> dict:
    return json.loads(result.stdout)


# --- values and flags ------------------------------------------------------------------------


def test_flag_budgets_give_exact_values(cli, project, mlp_profile):
    r = cli(
        "check",
        "models/mlp.keras",
        "--max-file-size",
        "1GB",
        "--max-params",
        "1M",
        "--max-param-memory",
        "1MiB",
        "--max-inference-memory",
        "1GiB",
        "--max-training-memory",
        "1GiB",
        "-b",
        "8",
        "-f",
        "json",
    )
    assert r.exit_code == 0, r.stderr
    data = _json(r)
    assert data["passed"] is True and data["verdict"] == "pass" and data["summary"]["total"] == 5
    values = {row["metric"]: row["value"] for row in data["budgets"]}
    t = mlp_profile.totals
    assert values == {
        "file_size": (project / "models/mlp.keras").stat().st_size,
        "params": MLP_PARAMS,
        "param_memory": t.param_bytes,
        "inference_memory": t.inference_peak_bytes,
        "training_memory": t.training_peak_bytes,
    }
    assert t.params == MLP_PARAMS and t.param_bytes == 4 * MLP_PARAMS
    rows = {row["metric"]: row for row in data["budgets"]}
    assert rows["params"]["limit"] == 1_000_000 and rows["file_size"]["limit"] == 10**9
    assert rows["training_memory"]["batch_size"] == 8 and rows["training_memory"]["optimizer"] == "Adam"
    assert all(row["model"] == "models/mlp.keras" and row["level"] == "error" for row in data["budgets"])


def test_every_budget_is_evaluated_and_the_failures_fail(cli, project):
    r = cli("check", "models/*.keras", "--max-params", "500", "--max-file-size", "1GB", "-f", "json")
    assert r.exit_code == 1
    data = _json(r)
    status = {(row["model"], row["metric"]): row["status"] for row in data["budgets"]}
    assert status == {
        ("models/mlp.keras", "params"): "fail",  # 804 parameters
        ("models/nested.keras", "params"): "pass",  # 8*8+8 + 8*4+4 + 4*3+3 = 123
        ("models/mlp.keras", "file_size"): "pass",
        ("models/nested.keras", "file_size"): "pass",
    }
    assert data["summary"] == {"total": 4, "passed": 3, "failed": 1, "warned": 0, "errors": 0}
    nested = next(row for row in data["budgets"] if row["model"] == "models/nested.keras" and row["metric"] == "params")
    assert nested["value"] == 123
    assert cli("check", "models/*.keras", "--max-params", "500", "--exit-zero", "-f", "json").exit_code == 0


# --- config ----------------------------------------------------------------------------------


def test_config_is_found_upwards_and_globs_are_relative_to_it(cli, project, monkeypatch):
    _write_config(project, _budget("models/*.keras", "params", "1K") + _budget("models/mlp.keras", "file_size", "1 B"))
    deep = project / "src" / "deeper"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    r = cli("check", "-f", "json")
    assert r.exit_code == 1, r.stderr
    data = _json(r)
    assert data["config"] == "pyproject.toml"
    assert [(row["model"], row["metric"], row["status"]) for row in data["budgets"]] == [
        ("models/mlp.keras", "params", "pass"),
        ("models/mlp.keras", "file_size", "fail"),
        ("models/nested.keras", "params", "pass"),
    ]
    assert data["budgets"][1]["source"] == "pyproject.toml budget #2"


def test_a_pyproject_without_the_table_is_skipped(cli, project, monkeypatch):
    _write_config(project, _budget("models/nested.keras", "params", "1K"))
    _write_config(project / "pkg", "[tool.other]\nx = 1\n")
    monkeypatch.chdir(project / "pkg")
    assert checking.find_config(project / "pkg") == (project / "pyproject.toml").resolve()
    assert cli("check").exit_code == 0


def test_config_flag_and_flags_override_the_config(cli, project, tmp_path):
    other = _write_config(
        tmp_path / "elsewhere", _budget(str(project / "models/nested.keras"), "params", "100"), "budgets.toml"
    )
    r = cli("check", "--config", other, "-f", "json")
    assert r.exit_code == 1 and _json(r)["budgets"][0]["value"] == 123
    # A flag for the same metric replaces the config's limit.
    r = cli("check", "--config", other, "--max-params", "200", "-f", "json")
    assert r.exit_code == 0 and [row["limit"] for row in _json(r)["budgets"]] == [200]
    # --batch-size overrides the config's batch size.
    _write_config(project, _budget("models/mlp.keras", "inference_memory", "1 GiB", batch_size=4))
    rows = _json(cli("check", "-f", "json"))["budgets"]
    assert rows[0]["batch_size"] == 4
    rows = _json(cli("check", "-b", "2", "-f", "json"))["budgets"]
    assert (
        rows[0]["batch_size"] == 2
        and rows[0]["value"] == kmemopt.profile(project / "models/mlp.keras", batch_size=2).totals.inference_peak_bytes
    )


def test_paths_select_the_config_budgets_that_match_them(cli, project):
    _write_config(project, _budget("models/mlp.keras", "params", "1K") + _budget("models/nested.keras", "params", "10"))
    r = cli("check", "models/mlp.keras", "-f", "json")
    assert r.exit_code == 0 and [row["model"] for row in _json(r)["budgets"]] == ["models/mlp.keras"]
    # The nested model's own budget fails it.
    assert cli("check", "models/nested.keras").exit_code == 1


def test_levels_warn_never_fails(cli, project):
    _write_config(project, _budget("models/*.keras", "params", "10", level="warn"))
    r = cli("check", "-f", "json")
    assert r.exit_code == 0
    data = _json(r)
    assert data["passed"] is True and data["summary"]["warned"] == 2
    assert {row["status"] for row in data["budgets"]} == {"warn"}
    # The same budget at error level fails.
    _write_config(project, _budget("models/*.keras", "params", "10", level="error"))
    assert cli("check").exit_code == 1


# --- baselines -------------------------------------------------------------------------------


def test_baseline_from_a_profile_json(cli, project, tmp_path):
    base = tmp_path / "main-profile.json"
    r = cli("profile", "models/mlp.keras", "-b", "8", "-f", "json", "-o", base)
    assert r.exit_code == 0
    doc = json.loads(base.read_text())
    # Pretend main's model was 10% smaller in parameter memory and 100 bytes smaller on file.
    doc["totals"]["param_bytes"] = int(doc["totals"]["param_bytes"] / 1.1)
    doc["model"]["file_bytes"] -= 100
    base.write_text(json.dumps(doc))
    args = ["check", "models/mlp.keras", "--max-param-memory", "1GiB", "--max-file-size", "1GB", "--baseline", base]
    r = cli(*args, "--max-increase", "5%", "-f", "json")
    assert r.exit_code == 1
    rows = {row["metric"]: row for row in _json(r)["budgets"]}
    pm = rows["param_memory"]
    assert pm["baseline"] == doc["totals"]["param_bytes"] and pm["delta"] == pm["value"] - pm["baseline"]
    assert pm["delta_percent"] == pytest.approx(100 * pm["delta"] / pm["baseline"], abs=1e-3)
    assert pm["status"] == "fail" and pm["max_increase"] == 0.05
    assert rows["file_size"]["delta"] == 100 and rows["file_size"]["status"] == "pass"
    # A floor above the growth lets it pass; with no --max-increase only deltas are shown.
    assert cli(*args, "--max-increase", "5%", "--min-increase", "1MB").exit_code == 0
    r = cli(*args, "-f", "json")
    assert r.exit_code == 0 and _json(r)["budgets"][0]["delta"] is not None


def test_baseline_from_a_check_json_and_from_the_config(cli, project):
    _write_config(project, _budget("models/*.keras", "params", "1M", max_increase="0%"))
    first = cli("check", "-f", "json", "-o", "main.json")
    assert first.exit_code == 0
    r = cli("check", "--baseline", "main.json", "-f", "json")
    assert r.exit_code == 0 and [row["delta"] for row in _json(r)["budgets"]] == [0, 0]
    doc = json.loads((project / "main.json").read_text())
    doc["budgets"][0]["value"] -= 1  # main had one parameter fewer
    (project / "main.json").write_text(json.dumps(doc))
    # `baseline` in [tool.kmemopt] is used when no --baseline is given.
    _write_config(project, 'baseline = "main.json"\n' + _budget("models/*.keras", "params", "1M", max_increase="0%"))
    text = (project / "pyproject.toml").read_text().replace('baseline = "main.json"\n', "")
    (project / "pyproject.toml").write_text(
        text.replace("[[tool.kmemopt.budget]]", '[tool.kmemopt]\nbaseline = "main.json"\n\n[[tool.kmemopt.budget]]', 1)
    )
    r = cli("check", "-f", "json")
    assert r.exit_code == 1
    data = _json(r)
    assert data["baseline"] == "main.json"
    assert [(row["delta"], row["status"]) for row in data["budgets"]] == [(1, "fail"), (0, "pass")]


def test_a_budget_with_only_an_increase_needs_a_baseline(cli, project):
    _write_config(project, _budget("models/mlp.keras", "params", None, max_increase="5%"))
    r = cli("check")
    assert r.exit_code == 2 and "baseline" in r.stderr


# --- formats ---------------------------------------------------------------------------------


@pytest.fixture()
def mixed(project):
    """Three budgets: one passes, one fails, one warns."""
    _write_config(
        project,
        _budget("models/mlp.keras", "params", "1K")
        + _budget("models/mlp.keras", "file_size", "1 KB")
        + _budget("models/nested.keras", "params", "100", level="warn"),
    )
    return project


def test_table(cli, mixed):
    r = cli("check")
    assert r.exit_code == 1
    for text in ("models/mlp.keras", "models/nested.keras", "1 KB", "fail", "warn", "check FAILED", "3 budgets"):
        assert text in r.stdout


def test_junit_parses_with_the_right_counts(cli, mixed):
    r = cli("check", "-f", "junit")
    assert r.exit_code == 1
    root = ET.fromstring(r.stdout.encode())
    suite = root.find("testsuite")
    assert root.tag == "testsuites" and suite.get("tests") == "3" and suite.get("failures") == "1"
    assert suite.get("errors") == "0" and root.get("failures") == "1"
    cases = suite.findall("testcase")
    assert len(cases) == 3
    failing = [c for c in cases if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failing] == [("models/mlp.keras", "file_size")]
    assert "1 KB" in failing[0].find("failure").get("message")


def test_github_annotations_point_at_the_model_file(cli, mixed):
    r = cli("check", "-f", "github")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith("::error file=models/mlp.keras,title=kmemopt budget file_size::file_size = ")
    assert lines[1].startswith("::warning file=models/nested.keras,title=kmemopt budget params::")
    assert lines[-1].startswith("::error title=kmemopt check::") and len(lines) == 3


def test_markdown(cli, mixed):
    r = cli("check", "-f", "markdown")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[0] == "## ❌ kmemopt check FAILED"
    rows = [line for line in lines if line.startswith("| `models/")]
    assert len(rows) == 3 and "❌ fail" in rows[1] and "⚠️ warn" in rows[2]


def test_output_file_and_exit_zero(cli, mixed):
    r = cli("check", "-f", "junit", "-o", "report.xml", "--exit-zero")
    assert r.exit_code == 0 and r.stdout == ""
    assert ET.parse(mixed / "report.xml").getroot().find("testsuite").get("failures") == "1"


# --- exit codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["models/mlp.keras", "--max-file-size", "12 parsecs"], ["--max-file-size", "12 parsecs"]),
        (["models/mlp.keras", "--max-params", "1 GiB"], ["--max-params", "1 GiB"]),
        (["models/*.h5", "--max-params", "1M"], ["models/*.h5", "matches no file"]),
        (["models/missing.keras", "--max-params", "1M"], ["No such file", "missing.keras"]),
        (["models/mlp.keras"], ["No budget"]),
        ([], ["Nothing to check"]),
        (["models/mlp.keras", "--max-params", "1M", "--max-increase", "lots"], ["--max-increase", "lots"]),
        (["models/mlp.keras", "--max-params", "1M", "--min-increase", "1 furlong"], ["--min-increase", "furlong"]),
        (["models/mlp.keras", "--max-params", "1M", "--baseline", "nope.json"], ["nope.json"]),
        (["models/mlp.keras", "--max-params", "1M", "--config", "nope.toml"], ["nope.toml"]),
    ],
)
def test_usage_errors_exit_2(cli, project, args, words):
    r = cli("check", *args)
    assert r.exit_code == 2, r.stdout
    for word in words:
        assert word in r.stderr


@pytest.mark.parametrize(
    "body, words",
    [
        (_budget("models/*.keras", "gpu_memory", "1 GB"), ["budget #1", "gpu_memory"]),
        (_budget("models/*.keras", "params", "many"), ["budget #1", "many"]),
        (_budget("models/*.h5", "params", "1M"), ["budget #1", "models/*.h5", "matches no file"]),
        (_budget("models/gone.keras", "params", "1M"), ["budget #1", "models/gone.keras", "matches no file"]),
        ("[tool.kmemopt]\nbudget = 3\n", ["[[tool.kmemopt.budget]]"]),
        ("[tool.kmemopt\n", ["not valid TOML"]),
    ],
)
def test_config_errors_exit_2(cli, project, body, words):
    _write_config(project, body)
    r = cli("check")
    assert r.exit_code == 2
    for word in words:
        assert word in r.stderr


def test_unknown_sequence_length_names_the_model_and_the_fix(cli, project, text_path):
    shutil.copy(text_path, project / "models" / "text.keras")
    _write_config(project, _budget("models/text.keras", "inference_memory", "1 GiB"))
    r = cli("check")
    assert r.exit_code == 2 and "models/text.keras" in r.stderr and "seq_len = N" in r.stderr
    _write_config(project, _budget("models/text.keras", "inference_memory", "1 GiB", seq_len=7))
    r = cli("check", "-f", "json")
    assert r.exit_code == 0
    value = _json(r)["budgets"][0]["value"]
    assert value == kmemopt.profile(project / "models/text.keras", seq_len=7).totals.inference_peak_bytes
    assert cli("check", "models/text.keras", "--max-inference-memory", "1GiB", "--seq-len", "7").exit_code == 0


def test_rejected_models_exit_3_after_the_others_are_checked(cli, project, nested_path):
    _unsafe_copy(nested_path, project / "models" / "zz_unsafe.keras")
    (project / "models" / "aa_broken.keras").write_bytes(b"this is not a zip file")
    r = cli("check", "models/*.keras", "--max-params", "500", "-f", "json")
    assert r.exit_code == 3
    data = _json(r)
    assert data["verdict"] == "error" and data["passed"] is False
    status = {row["model"]: row["status"] for row in data["budgets"]}
    # The safe models were still checked (and mlp's failure is reported), the other two were not.
    assert status == {
        "models/aa_broken.keras": "error",
        "models/mlp.keras": "fail",
        "models/nested.keras": "pass",
        "models/zz_unsafe.keras": "error",
    }
    rules = {e["model"]: e["rule"] for e in data["errors"]}
    assert rules["models/zz_unsafe.keras"] == "TRUST-MODULE"
    assert "zz_unsafe.keras was not checked" in r.stderr
    # --exit-zero forgives budgets, not rejected models; JUnit reports them as errors.
    assert cli("check", "models/*.keras", "--max-params", "500", "--exit-zero").exit_code == 3
    root = ET.fromstring(cli("check", "models/*.keras", "--max-params", "500", "-f", "junit").stdout.encode())
    assert root.get("errors") == "2" and root.get("failures") == "1" and root.get("tests") == "4"


def test_internal_errors_exit_4(cli, project, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(checking, "evaluate_checks", boom)
    r = cli("check", "models/mlp.keras", "--max-params", "1M")
    assert r.exit_code == 4 and "internal error" in r.stderr


def _fake_measure(measured: dict, calls: list):
    from types import SimpleNamespace

    def measure(result, path, *, optimizer=None, custom_objects=None):
        calls.append((Path(path).name, result.batch_size, optimizer))
        return SimpleNamespace(to_dict=lambda: {**result.to_dict(), "measured": measured})

    return measure


def test_measure_uses_the_measured_peaks(cli, project, monkeypatch):
    calls: list = []
    fake = _fake_measure({"status": "ok", "inference_peak_bytes": 111, "training_peak_bytes": 222}, calls)
    monkeypatch.setattr(checking, "measurement", lambda: fake)
    args = ["check", "models/mlp.keras", "--max-training-memory", "1GiB", "--max-inference-memory", "1GiB"]
    r = cli(*args, "--max-params", "1M", "-b", "4", "--measure", "-f", "json")
    assert r.exit_code == 0, r.stderr
    data = _json(r)
    assert data["estimate"] == "measured"
    assert {row["metric"]: row["value"] for row in data["budgets"]} == {
        "training_memory": 222,
        "inference_memory": 111,
        "params": MLP_PARAMS,
    }
    assert calls == [("mlp.keras", 4, None)]  # one measurement serves both memory budgets


def test_a_model_that_cannot_be_measured_fails_its_budget(cli, project, monkeypatch):
    fake = _fake_measure({"status": "exceeded_memory", "runs": [{"message": "over the 1 GiB limit"}]}, [])
    monkeypatch.setattr(checking, "measurement", lambda: fake)
    r = cli("check", "models/mlp.keras", "--max-training-memory", "1GiB", "--measure", "-f", "json")
    assert r.exit_code == 1
    row = _json(r)["budgets"][0]
    assert row["status"] == "fail" and row["value"] is None
    assert row["reasons"] == ["could not be measured (exceeded_memory): over the 1 GiB limit"]


def test_measure_without_the_measurement_module_is_a_usage_error(cli, project, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "kmemopt.profiling.measure", None)  # makes the import fail
    r = cli("check", "models/mlp.keras", "--max-training-memory", "1GiB", "--measure")
    assert r.exit_code == 2 and "--measure is unavailable" in r.stderr


@pytest.mark.slow
def test_measure_for_real(cli, project):
    """The real measurement runs in a child process: the value is the kernel's count (whole KiB, from
    the process high-water mark or its sampled RSS), not the static estimate's byte count."""
    pytest.importorskip("kmemopt.profiling.measure")
    args = ["check", "models/nested.keras", "--max-inference-memory", "4GiB", "-b", "2", "-f", "json"]
    r = cli(*args, "--measure")
    assert r.exit_code == 0, r.stderr
    data = _json(r)
    static = _json(cli(*args))
    value = data["budgets"][0]["value"]
    assert data["estimate"] == "measured" and static["estimate"] == "static"
    assert value % 1024 == 0 and 0 < value < 4 * 1024**3
    assert value != static["budgets"][0]["value"]


# --- library ---------------------------------------------------------------------------------


def test_python_api(project):
    report = kmemopt.check("models/*.keras", max_params="500", use_config=False)
    assert not report.passed and report.exit_code() == 1
    assert [(r.model, r.value) for r in report.results] == [
        ("models/mlp.keras", MLP_PARAMS),
        ("models/nested.keras", 123),
    ]
    assert kmemopt.check(project / "models" / "nested.keras", max_params=123, cwd=project).passed


def test_glob_expansion(tmp_path):
    for rel in ("a/x.keras", "a/b/y.keras", "a/b/c/z.h5", "a/notes.txt", "a/dir.keras/inner.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    names = lambda pattern: [p.relative_to(tmp_path).as_posix() for p in checking.expand(pattern, tmp_path)]  # noqa: E731
    assert names("a/*.keras") == ["a/x.keras"]  # a folder named dir.keras is not a model file
    assert names("a/**/*.keras") == ["a/b/y.keras", "a/x.keras"]
    assert names("**/*.h5") == ["a/b/c/z.h5"]
    assert names("a/*.onnx") == []
    assert names("a/x.keras") == ["a/x.keras"]  # a plain path is returned as is, checked later
    assert [p.name for p in checking.expand(str(tmp_path / "a" / "*.keras"), Path("/elsewhere"))] == ["x.keras"]
