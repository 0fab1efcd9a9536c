"""Speed and memory of kmemopt itself: profile vs plain `keras.models.load_model`, shrink, and a
7-billion-parameter model profiled from a file whose weights are declared but not stored.

Each measurement runs in a fresh process (wall time from spawn to exit, peak RSS from the kernel's
accounting of that one child), three times; the table shows the median time and the largest peak.
The first row is the floor under every other: a process that only imports Keras on TensorFlow. The
start-up of the framework moves with the machine and the installed libraries (a fresh install took
the 7 B row from 5.1 to 9.7 s with kmemopt unchanged), so a row is read against it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

KEY = "speed"
TITLE = "Speed and memory of kmemopt itself"
REPEAT = 3
ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
KMEMOPT = str(Path(PY).parent / "kmemopt")
FRAMEWORK = "(no model: the framework's start-up)"

_RUNNER = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode\n"
    "dt = time.perf_counter() - t\n"
    "print(json.dumps({'rc': rc, 'seconds': dt, 'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))\n"
)


def measure(cmd: list[str]) -> dict:
    """Run `cmd` REPEAT times, each in a fresh wrapper process so its RUSAGE_CHILDREN is that child's."""
    runs = []
    for _ in range(REPEAT):
        out = subprocess.run([PY, "-c", _RUNNER, *cmd], capture_output=True, text=True, check=True)
        run = json.loads(out.stdout)
        if run["rc"] != 0:
            raise RuntimeError(f"{cmd} exited {run['rc']}")
        runs.append(run)
    return {
        "seconds": round(statistics.median(r["seconds"] for r in runs), 3),
        "seconds_runs": [round(r["seconds"], 3) for r in runs],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
    }


def _make_files(folder: Path, log) -> dict[str, Path]:
    script = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from kmemopt._keras import import_keras
keras = import_keras()
from kmemopt.load.build import unallocated
from factories import write_declared_model
folder = {str(folder)!r}
model = keras.applications.ResNet50(weights=None)
model.save(folder + "/resnet50.keras")
import keras_hub
with unallocated():
    llama = keras_hub.models.LlamaBackbone(vocabulary_size=32000, num_layers=32, num_query_heads=32,
        num_key_value_heads=32, hidden_dim=4096, intermediate_dim=11008, name="llama_7b")
print(llama.count_params())
write_declared_model(__import__("pathlib").Path(folder + "/llama_7b_declared.keras"), llama)
"""
    log("building ResNet50 (saved with weights) and a 7B Llama file with declared, unstored weights")
    out = subprocess.run([PY, "-c", script], capture_output=True, text=True, check=True)
    params = int(out.stdout.strip().splitlines()[-1])
    return {"resnet50": folder / "resnet50.keras", "llama": folder / "llama_7b_declared.keras", "llama_params": params}


def run(log) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = _make_files(folder, log)
        resnet = str(files["resnet50"])
        cases = [
            (
                FRAMEWORK,
                "import keras",
                [PY, "-c", "import os; os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL','3'); import keras"],
            ),
            (
                "ResNet50",
                "keras.models.load_model",
                [
                    PY,
                    "-c",
                    f"import os; os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL','3'); import keras; keras.models.load_model({resnet!r})",
                ],
            ),
            ("ResNet50", "kmemopt profile", [KMEMOPT, "profile", resnet, "-f", "json"]),
            (
                "ResNet50",
                "kmemopt shrink --quantize int8",
                [KMEMOPT, "shrink", resnet, "--quantize", "int8", "-o", str(folder / "slim.keras"), "--force"],
            ),
            (
                "Llama 7B (declared, unstored)",
                "kmemopt profile",
                [KMEMOPT, "profile", str(files["llama"]), "--seq-len", "4096", "-b", "1", "-f", "json"],
            ),
        ]
        for model, tool, cmd in cases:
            log(f"{model}: {tool} x{REPEAT}")
            result = measure(cmd)
            if model == FRAMEWORK:
                rows.append({"model": model, "tool": tool, "file_bytes": None, "params": None, **result})
                continue
            rows.append(
                {
                    "model": model,
                    "tool": tool,
                    "file_bytes": Path(cmd[2] if tool.startswith("kmemopt") else resnet).stat().st_size,
                    "params": files["llama_params"] if model.startswith("Llama") else 25_636_712,
                    **result,
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    out = [
        "Wall time from process start to exit (Python and TensorFlow start-up included) and peak RSS of that",
        f"process (the largest of its child processes, where it starts any); median of {REPEAT} runs, largest peak.",
        "",
        "| model | params | file | tool | time (s) | peak RSS |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        params = "-" if r.get("params") is None else f"{r['params'] / 1e9:.2f} B"
        size = "-" if r.get("file_bytes") is None else f"{r['file_bytes'] / 1e6:,.1f} MB"
        out.append(
            f"| {r['model']} | {params} | {size} | `{r['tool']}` | "
            f"{r['seconds']:.2f} | {r['peak_rss_bytes'] / 1024**2:,.0f} MiB |"
        )
    by = {(r["model"], r["tool"]): r for r in rows}
    floor = by.get((FRAMEWORK, "import keras"))
    if floor:
        out += [
            "",
            f"Python with `import keras` (TensorFlow backend) alone takes {floor['seconds']:.2f} s and "
            f"{floor['peak_rss_bytes'] / 1024**2:,.0f} MiB on this run's machine: every row includes it.",
        ]
    load, prof = by.get(("ResNet50", "keras.models.load_model")), by.get(("ResNet50", "kmemopt profile"))
    if load and prof:
        out += [
            "",
            f"On ResNet50, `kmemopt profile` takes {prof['seconds'] / load['seconds']:.2f}x the time and "
            f"{prof['peak_rss_bytes'] / load['peak_rss_bytes']:.2f}x the peak memory of `keras.models.load_model` alone.",
        ]
    shrink = by.get(("ResNet50", "kmemopt shrink --quantize int8"))
    if shrink:
        out += [
            "",
            f"`kmemopt shrink --quantize int8` on ResNet50 (safe load, quantize, fidelity on synthetic inputs, "
            f"write, reload check in a fresh process, before/after profiles) takes {shrink['seconds']:.0f} s; its "
            "peak RSS is the largest of its processes (the shrink section separates the main process and the "
            "reload child).",
        ]
    return "\n".join(out) + "\n"
