"""kmemopt plan, predicted vs measured: does the applied plan fit, and is each strategy's saving right?

Six models are built here reproducibly (seeded, weights=None, nothing downloaded), compiled with a loss
and Adam, and saved to .keras: a small CNN, MobileNetV2 and ResNet50 (keras.applications at 96x96,
10 classes), an LSTM text classifier and a MultiHeadAttention Transformer encoder (the estimate suite's
builders), and a keras-hub BERT backbone from a small config under a pooled classifier head (sequence length 128). For each:

1. the baseline training step at batch 32 is measured in the measuring child (the CPU high-water mark,
   `kmemopt.profiling.measure`, as `kmemopt profile --measure` does);
2. budget = 50% of that measured peak; `kmemopt.plan(..., apply=True, measure=True)` (the CLI's
   `plan --apply -o FILE --measure`) restricted to the strategies a .keras file holds (`--only
   batch_size,mixed_precision,optimizer,freeze`: remat and LoRA are applied in the training script, so a
   measured file would not contain them); recorded: the plan's predicted peak, the measured peak of the
   written file and whether it is under the budget (plus the baseline measured a second time by
   `--measure`, which shows how repeatable a measurement is);
3. strategies alone (`--only NAME`, the setting the planner picks for the budget): the planner's
   predicted saving against the measured one (baseline measured - the written file measured). To keep
   the run under an hour on the shared 2-core machine, each model measures two of the four in rotation
   (each strategy on three of the six models); KMEMOPT_BENCH_PLAN_ALL_STRATEGIES=1 measures all four.

Then a keras-hub Llama of 1.1 B parameters (TinyLlama's shape) whose weights are declared but not
stored, planned for a 24 GiB and an 80 GiB device (predicted only: it cannot train here), and the wall
time of `kmemopt plan` on a 6.7 B declared Llama.

KMEMOPT_BENCH_PLAN_MODELS=SmallCNN,ResNet50 limits the measured models (the report lists what ran);
KMEMOPT_BENCH_MODELS=DIR keeps the saved .keras files. KMEMOPT_BENCH_PLAN_DECLARED_ONLY=1 reruns only the
declared (predicted-only) models, whose plan time a loaded machine inflates; the measured rows are kept
from benchmarks/results.json with their own stamps (BENCHMARKS.md marks them † as carried).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "plan"
TITLE = "kmemopt plan: predicted vs measured (CPU)"
BATCH = 32
BUDGET_SHARE = 0.5
HELD = ("batch_size", "mixed_precision", "optimizer", "freeze")  # what `plan --apply` writes into a file
MODELS = ("SmallCNN", "MobileNetV2", "ResNet50", "LSTMTextClassifier", "TransformerEncoder", "BertClassifier")
IMAGE = (96, 96, 3)
# The keras-hub backbone's own inputs keep an unknown sequence length inside the classifier: say it.
SEQ_LEN = {"BertClassifier": 128}
GOAL_FIT_SHARE = 0.9  # applied plans measured under the budget
GOAL_SAVING_TOLERANCE = 0.2  # |predicted - measured| <= 20% of the measured saving
GOAL_7B_SECONDS = 60
# Each measuring child takes one to three minutes on the shared 2-core machine (TensorFlow start-up
# included), so each model measures two of the four strategies alone (in rotation) and two models are
# measured at once while the declared models are planned (peaks are per process, so they do not mix; only the wall time grows).
STRATEGIES_PER_MODEL = 2
WORKERS = 3  # two models and the declared-model plans (those use one core, and no measuring child)
DECLARED_TIMEOUT_S = 900
SLOW_FIRST = ("ResNet50", "BertClassifier", "MobileNetV2", "TransformerEncoder", "LSTMTextClassifier", "SmallCNN")
TIMEOUT_S = 900
ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
KMEMOPT = str(Path(PY).parent / "kmemopt")

# TinyLlama-1.1B's shape (keras-hub LlamaBackbone arguments); the 7 B one is suite_speed's.
LARGE = {
    "name": "Llama 1.1B (declared, unstored)",
    "args": dict(
        vocabulary_size=32000,
        num_layers=22,
        num_query_heads=32,
        num_key_value_heads=4,
        hidden_dim=2048,
        intermediate_dim=5632,
    ),
    "batch_size": 8,
    "seq_len": 2048,
    "budgets_gib": (24, 80),
}
HUGE = {
    "name": "Llama 7B (declared, unstored)",
    "args": dict(
        vocabulary_size=32000,
        num_layers=32,
        num_query_heads=32,
        num_key_value_heads=32,
        hidden_dim=4096,
        intermediate_dim=11008,
    ),
    "batch_size": 1,
    "seq_len": 4096,
    "budgets_gib": (80,),
}


# --------------------------------------------------------------------------------------------- models


def small_cnn(keras):
    L = keras.layers
    i = keras.Input((32, 32, 3), name="image")
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(name="pool1")(x)
    x = L.Conv2D(128, 3, padding="same", activation="relu", name="conv3")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.MaxPooling2D(name="pool2")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(256, activation="relu", name="dense")(x)
    o = L.Dense(10, activation="softmax", name="classifier")(x)
    return keras.Model(i, o, name="small_cnn")


def bert_classifier(keras):
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=8000,
        num_layers=4,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=1024,
        max_sequence_length=128,
        name="bert_backbone",
    )
    # Token inputs of unknown length, like the backbone's own, given as --seq-len 128: kmemopt's static
    # profile does not resolve the sequence length inside a nested keras-hub backbone from outer inputs
    # that fix it (and the backbone's layers flattened into one graph name keras-hub's gelu in a way its
    # allowlist refuses).
    inputs = {
        "token_ids": keras.Input((None,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input((None,), dtype="int32", name="segment_ids"),
        "padding_mask": keras.Input((None,), dtype="int32", name="padding_mask"),
    }
    pooled = backbone(inputs)["pooled_output"]
    out = keras.layers.Dense(2, activation="softmax", name="classifier")(pooled)
    return keras.Model(inputs, out, name="bert_classifier")


def build(name: str, keras):
    """The model `name`, seeded and compiled so that `fit` trains it (sparse labels, Adam)."""
    import suite_estimate

    keras.utils.set_random_seed(0)
    if name == "SmallCNN":
        model = small_cnn(keras)
    elif name in ("MobileNetV2", "ResNet50"):
        model = getattr(keras.applications, name)(weights=None, input_shape=IMAGE, classes=10)
    elif name == "LSTMTextClassifier":
        model = suite_estimate.lstm_text_classifier(keras)
    elif name == "TransformerEncoder":
        model = suite_estimate.transformer_encoder(keras)
    elif name == "BertClassifier":
        model = bert_classifier(keras)
    else:
        raise ValueError(f"unknown model {name!r}")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    return model


def save_models(directory: Path, names, log) -> dict[str, Path]:
    from kmemopt._keras import import_keras

    keras = import_keras()
    paths = {}
    for name in names:
        path = directory / f"{name}.keras"
        if not path.exists():
            log(f"  building {name}")
            model = build(name, keras)
            model.save(path)
            del model
            keras.backend.clear_session()
            gc.collect()
        paths[name] = path
    return paths


# --------------------------------------------------------------------------------------------- measuring


def measure_file(path: Path, batch_size: int, seq_len: int | None = None) -> dict:
    """One training step of the file at `batch_size` in the measuring child: {peak, status, seconds}.

    The same call `kmemopt plan --measure` makes for each file (static profile, then measure_profile
    with the file's own optimizer and loss)."""
    from kmemopt.api import profile
    from kmemopt.profiling.measure import measure_profile

    started = time.monotonic()
    profiled = profile(path, batch_size=batch_size, seq_len=seq_len)
    measured = measure_profile(profiled, path, timeout_s=TIMEOUT_S).measured
    m = measured.to_dict() if measured is not None else {}
    return {
        "peak_bytes": m.get("training_peak_bytes"),
        "status": m.get("status"),
        "seconds": round(time.monotonic() - started, 1),
    }


def saving_ratio(predicted_saving: int | None, measured_saving: int | None) -> float | None:
    """predicted / measured saving; None when either is missing or nothing was measured to be saved."""
    if predicted_saving is None or measured_saving is None or measured_saving == 0:
        return None
    return round(predicted_saving / measured_saving, 3)


def within_goal(predicted_saving: int | None, measured_saving: int | None) -> bool | None:
    """Whether the predicted saving is within GOAL_SAVING_TOLERANCE of the measured saving."""
    if predicted_saving is None or measured_saving is None:
        return None
    return abs(predicted_saving - measured_saving) <= GOAL_SAVING_TOLERANCE * abs(measured_saving)


def _labels(proposal) -> str:
    return " + ".join(s.label for s in proposal.settings) if proposal is not None else "-"


def plan_row(name: str, path: Path, base: dict, budget: int, scratch: Path, log) -> dict:
    """The plan restricted to what a file holds, written (--apply) and measured (--measure)."""
    import kmemopt

    row: dict = {"kind": "plan", "model": name, "batch_size": BATCH, "budget_bytes": budget}
    row["baseline_measured_bytes"] = base["peak_bytes"]
    out = scratch / f"{name}.plan.keras"
    started = time.monotonic()
    try:
        result = kmemopt.plan(
            path,
            budget=budget,
            batch_size=BATCH,
            only=list(HELD),
            apply=True,
            out=out,
            force=True,
            measure=True,
            timeout=TIMEOUT_S,
            seq_len=SEQ_LEN.get(name),
            progress=lambda m: log(f"    {name}: {m}"),
        )
    except Exception as exc:  # recorded, never dropped
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    finally:
        row["seconds"] = round(time.monotonic() - started, 1)
    measured = result.measured or {}
    plan = measured.get("plan") or {}
    row.update(
        {
            "params": result.base_profile.totals.params if result.base_profile is not None else None,
            "baseline_predicted_bytes": result.baseline_priced.peak_bytes,
            "baseline_remeasured_bytes": (measured.get("baseline") or {}).get("measured_peak_bytes"),
            "plan": _labels(result.plan),
            "plan_batch_size": result.plan.spec.batch_size if result.plan is not None else None,
            "predicted_peak_bytes": result.plan.predicted.peak_bytes if result.plan is not None else None,
            "fits_predicted": bool(result.plan is not None and result.plan.fits),
            "written": result.output is not None,
            "matches_plan": (result.output or {}).get("matches_plan"),
            "measured_peak_bytes": plan.get("measured_peak_bytes"),
            "status": plan.get("status"),
            "fits_measured": plan.get("fits_measured"),
            "not_measured": plan.get("not_measured") or [],
        }
    )
    if measured.get("plan_not_measured"):
        row["error"] = measured["plan_not_measured"]
    elif row["measured_peak_bytes"] is None:
        row["error"] = f"the plan's file was not measured (status {plan.get('status')})"
    out.unlink(missing_ok=True)
    return row


def strategy_row(name: str, path: Path, strategy: str, base: dict, budget: int, scratch: Path) -> dict:
    """One strategy alone: the planner's pick for the budget, written like --apply and measured."""
    import kmemopt
    from kmemopt.plan.apply import write_plan

    row: dict = {"kind": "strategy", "model": name, "strategy": strategy, "batch_size": BATCH}
    row["baseline_measured_bytes"] = base["peak_bytes"]
    started = time.monotonic()
    try:
        result = kmemopt.plan(path, budget=budget, batch_size=BATCH, only=[strategy], seq_len=SEQ_LEN.get(name))
        if result.plan is None:
            row["error"] = "the strategy does not apply to this model"
            return row
        proposal = result.plan
        row.update(
            {
                "setting": _labels(proposal),
                "plan_batch_size": proposal.spec.batch_size,
                "baseline_predicted_bytes": result.baseline_priced.peak_bytes,
                "predicted_peak_bytes": proposal.predicted.peak_bytes,
                "predicted_saving_bytes": result.baseline_priced.peak_bytes - proposal.predicted.peak_bytes,
            }
        )
        target = scratch / f"{name}.{strategy}.keras"
        write_plan(result, path, target, force=True, verify=False, seq_len=SEQ_LEN.get(name))
        got = measure_file(target, proposal.spec.batch_size, SEQ_LEN.get(name))
        target.unlink(missing_ok=True)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    finally:
        row["seconds"] = round(time.monotonic() - started, 1)
    row["measured_peak_bytes"] = got["peak_bytes"]
    row["status"] = got["status"]
    if got["peak_bytes"] is None or base["peak_bytes"] is None:
        row["error"] = f"not measured (status {got['status']})"
        return row
    row["measured_saving_bytes"] = base["peak_bytes"] - got["peak_bytes"]
    row["ratio"] = saving_ratio(row["predicted_saving_bytes"], row["measured_saving_bytes"])
    row["within_goal"] = within_goal(row["predicted_saving_bytes"], row["measured_saving_bytes"])
    return row


def measured_rows(name: str, path: Path, strategies: tuple[str, ...], scratch: Path, log) -> list[dict]:
    log(f"  {name}: measuring the baseline at batch {BATCH}")
    try:
        base = measure_file(path, BATCH, SEQ_LEN.get(name))
    except Exception as exc:
        base = {"peak_bytes": None, "status": f"{type(exc).__name__}: {exc}"}
    if base["peak_bytes"] is None:
        why = f"baseline not measured ({base['status']})"
        return [{"kind": "plan", "model": name, "batch_size": BATCH, "error": why}] + [
            {"kind": "strategy", "model": name, "strategy": s, "batch_size": BATCH, "error": why} for s in strategies
        ]
    budget = int(base["peak_bytes"] * BUDGET_SHARE)
    log(f"  {name}: baseline {base['peak_bytes'] / 2**20:,.0f} MiB; budget {budget / 2**20:,.0f} MiB; plan")
    rows = [plan_row(name, path, base, budget, scratch, log)]
    rows[0]["baseline_seconds"] = base["seconds"]
    for strategy in strategies:
        log(f"  {name}: {strategy} alone")
        rows.append(strategy_row(name, path, strategy, base, budget, scratch))
        r = rows[-1]
        log(
            f"    {strategy}: {r.get('setting', '-')}: predicted saving {_mib(r.get('predicted_saving_bytes'))} MiB, "
            f"measured {_mib(r.get('measured_saving_bytes'))} MiB" + (f" ({r['error']})" if r.get("error") else "")
        )
    return rows


# --------------------------------------------------------------------------------------------- declared models

_DECLARED = """
import json, sys
sys.path.insert(0, {tests!r})
import keras_hub
from factories import write_declared_model
from kmemopt.keras_compat.variables import unallocated
from pathlib import Path
args = json.loads({args!r})
with unallocated():
    model = keras_hub.models.LlamaBackbone(**args, name={model_name!r})
write_declared_model(Path({path!r}), model)
print(model.count_params())
"""


def write_declared(path: Path, spec: dict) -> int:
    """A keras-hub Llama file whose weights are declared, not stored (built unallocated in a child)."""
    script = _DECLARED.format(
        tests=str(ROOT / "tests"), args=json.dumps(spec["args"]), model_name=path.stem, path=str(path)
    )
    out = subprocess.run([PY, "-c", script], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def declared_rows(spec: dict, folder: Path, log, kind: str) -> list[dict]:
    """`kmemopt plan FILE --budget N GiB -f json` in a fresh process for each budget (predicted only)."""
    path = folder / (spec["name"].split()[1].lower().replace(".", "_") + "_declared.keras")
    rows = []
    try:
        params = write_declared(path, spec)
    except subprocess.CalledProcessError as exc:
        err = (exc.stderr or "").strip().splitlines()[-1:] or ["?"]
        return [{"kind": kind, "model": spec["name"], "error": f"building the declared model failed: {err[0]}"}]
    for gib in spec["budgets_gib"]:
        log(f"  {spec['name']}: plan for {gib} GiB")
        cmd = [KMEMOPT, "plan", str(path), "--budget", f"{gib}GiB", "-b", str(spec["batch_size"])]
        cmd += ["--seq-len", str(spec["seq_len"]), "-f", "json"]
        started = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=DECLARED_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rows.append(
                {
                    "kind": kind,
                    "model": spec["name"],
                    "params": params,
                    "budget_bytes": gib * 2**30,
                    "seconds": DECLARED_TIMEOUT_S,
                    "error": f"kmemopt plan did not answer within {DECLARED_TIMEOUT_S} s (stopped)",
                }
            )
            continue
        seconds = time.perf_counter() - started
        row: dict = {
            "kind": kind,
            "model": spec["name"],
            "params": params,
            "batch_size": spec["batch_size"],
            "seq_len": spec["seq_len"],
            "budget_bytes": gib * 2**30,
            "exit_code": done.returncode,
            "seconds": round(seconds, 1),
            "measured": "not measured",
        }
        try:
            data = json.loads(done.stdout)
        except json.JSONDecodeError:
            row["error"] = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            rows.append(row)
            continue
        plan = data.get("plan") or {}
        row.update(
            {
                "baseline_predicted_bytes": data["baseline"]["training_peak_bytes"],
                "plan": " + ".join(s["label"] for s in plan.get("strategies", [])) or "-",
                "predicted_peak_bytes": plan.get("predicted_peak_bytes"),
                "fits_predicted": bool(plan.get("fits")),
                "search_seconds": data["search"]["seconds"],
                "combinations": data["search"]["combinations"],
                "builds": data["search"]["builds"],
            }
        )
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- run


def selected_models() -> list[str]:
    chosen = os.environ.get("KMEMOPT_BENCH_PLAN_MODELS")
    if not chosen:
        return list(MODELS)
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    unknown = set(names) - set(MODELS)
    if unknown:
        raise SystemExit(f"KMEMOPT_BENCH_PLAN_MODELS names unknown models {sorted(unknown)}; choose from {MODELS}")
    return names


def strategies_for(index: int) -> tuple[str, ...]:
    """The single strategies measured on the index-th model: STRATEGIES_PER_MODEL of HELD in rotation, so
    that over the six models each strategy is measured on the same number of models (all four with
    KMEMOPT_BENCH_PLAN_ALL_STRATEGIES=1)."""
    if os.environ.get("KMEMOPT_BENCH_PLAN_ALL_STRATEGIES") == "1":
        return HELD
    k = STRATEGIES_PER_MODEL
    return tuple(HELD[(k * index + j) % len(HELD)] for j in range(k))


def model_worker(name: str, strategies: tuple[str, ...], models_dir: Path, out: Path) -> None:
    """One model's rows, in its own process (`python benchmarks/suite_plan.py --model ...`): its memory
    is returned to the system when it exits, and two models can be measured at once."""

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    paths = save_models(models_dir, [name], log)
    with tempfile.TemporaryDirectory(prefix="kmemopt-plan-scratch-") as tmp:
        rows = measured_rows(name, paths[name], strategies, Path(tmp), log)
    out.write_text(json.dumps(rows))


def _task(name: str, strategies: tuple[str, ...], models_dir: Path, folder: Path, log) -> list[dict]:
    out, logfile = folder / f"{name}.rows.json", folder / f"{name}.log"
    cmd = [PY, str(Path(__file__).resolve()), "--model", name, "--strategies", ",".join(strategies)]
    cmd += ["--models-dir", str(models_dir), "--out", str(out)]
    log(f"  {name}: started (strategies alone: {', '.join(strategies)})")
    with open(logfile, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc == 0 and out.exists():
        log(f"  {name}: done")
        return json.loads(out.read_text())
    tail = [line for line in logfile.read_text().splitlines() if line.strip()][-1:] or [f"exit {rc}"]
    log(f"  {name}: failed: {tail[0]}")
    why = f"the model's worker process failed (exit {rc}): {tail[0]}"
    return [{"kind": "plan", "model": name, "batch_size": BATCH, "error": why}] + [
        {"kind": "strategy", "model": name, "strategy": s, "batch_size": BATCH, "error": why} for s in strategies
    ]


def run(log) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    if os.environ.get("KMEMOPT_BENCH_PLAN_DECLARED_ONLY") == "1":
        results = Path(__file__).resolve().parent / "results.json"
        earlier = json.loads(results.read_text()).get(KEY, []) if results.exists() else []
        kept = [r for r in earlier if r.get("kind") not in ("large", "plan_time") and "measured_at" in r]
        log(f"declared models only; {len(kept)} measured rows kept from results.json (carried)")
        with tempfile.TemporaryDirectory(prefix="kmemopt-plan-bench-") as tmp:
            folder = Path(tmp)
            return kept + declared_rows(LARGE, folder, log, "large") + declared_rows(HUGE, folder, log, "plan_time")

    keep = os.environ.get("KMEMOPT_BENCH_MODELS")
    models_dir = Path(keep or tempfile.mkdtemp(prefix="kmemopt-bench-plan-"))
    models_dir.mkdir(parents=True, exist_ok=True)
    names = selected_models()
    workers = int(os.environ.get("KMEMOPT_BENCH_PLAN_WORKERS", WORKERS))
    with tempfile.TemporaryDirectory(prefix="kmemopt-plan-bench-") as tmp:
        folder = Path(tmp)
        with ThreadPoolExecutor(max_workers=workers) as pool:

            def declared() -> list[dict]:
                log("declared models (predicted only)")
                return declared_rows(LARGE, folder, log, "large") + declared_rows(HUGE, folder, log, "plan_time")

            big = pool.submit(declared)
            # The slowest first, so that the workers finish together.
            order = sorted(names, key=lambda n: SLOW_FIRST.index(n))
            futures = {
                n: pool.submit(_task, n, strategies_for(MODELS.index(n)), models_dir, folder, log) for n in order
            }
            rows: list[dict] = []
            for n in names:
                rows += futures[n].result()
            rows += big.result()
    return rows


# --------------------------------------------------------------------------------------------- report


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:,.1f}"


def _yes(v) -> str:
    return "-" if v is None else ("yes" if v else "**no**")


def summary(rows: list[dict]) -> dict:
    """The goals of issue 14, counted over the rows (failed rows count as not met)."""
    plans = [r for r in rows if r["kind"] == "plan"]
    # Only a written plan counts: when no combination is predicted to fit, --apply writes nothing.
    fitted = sum(bool(r.get("written") and r.get("fits_measured")) for r in plans)
    singles = [
        r for r in rows if r["kind"] == "strategy" and r.get("error") != "the strategy does not apply to this model"
    ]
    within = sum(bool(r.get("within_goal")) for r in singles)
    timed = [r for r in rows if r["kind"] == "plan_time"]
    fast = [r for r in timed if r.get("exit_code") in (0, 1) and not r.get("error")]
    return {
        "plans": len(plans),
        "plans_under_budget": fitted,
        "fit_goal_met": bool(plans) and fitted >= GOAL_FIT_SHARE * len(plans),
        "strategies": len(singles),
        "strategies_within": within,
        "saving_goal_met": bool(singles) and within == len(singles),
        "plan_7b_seconds": fast[0]["seconds"] if fast else None,
        "time_goal_met": bool(fast) and all(r["seconds"] < GOAL_7B_SECONDS for r in fast),
    }


def markdown(rows: list[dict]) -> str:
    plans = [r for r in rows if r["kind"] == "plan"]
    singles = [r for r in rows if r["kind"] == "strategy"]
    large = [r for r in rows if r["kind"] == "large"]
    timed = [r for r in rows if r["kind"] == "plan_time"]
    models = list(dict.fromkeys(r["model"] for r in plans + singles))
    s = summary(rows)
    met = {True: "met", False: "**not met**"}
    out = [
        f"Each model is trained one step at batch {BATCH} in the measuring child (CPU high-water mark above the",
        "framework baseline, as `kmemopt profile --measure`); budget = 50% of that measured baseline. The plan is",
        "`kmemopt plan MODEL --budget B -b 32 --only " + ",".join(HELD) + " --apply -o FILE --measure`: only the",
        "strategies a .keras file holds, so that the measured file is the whole plan (remat and LoRA are applied",
        "in the training script). Reproduce: `make bench SUITE=plan`. Models: "
        + (", ".join(models) if models else "none")
        + f" (suite default: {', '.join(MODELS)}).",
        "",
        f"**Goals (issue 14):** applied plan measured under the budget in {s['plans_under_budget']} of {s['plans']} "
        f"models (goal ≥ {GOAL_FIT_SHARE:.0%}): {met[s['fit_goal_met']]}; single-strategy predicted saving within "
        f"{GOAL_SAVING_TOLERANCE:.0%} of the measured saving in {s['strategies_within']} of {s['strategies']} "
        f"cases (goal: all): {met[s['saving_goal_met']]}; plan on the 7 B declared model "
        + (
            f"in {s['plan_7b_seconds']:.0f} s"
            if s["plan_7b_seconds"] is not None
            else f"did not answer (stopped after {DECLARED_TIMEOUT_S} s, or failed: see below)"
        )
        + f" (goal < {GOAL_7B_SECONDS} s): {met[s['time_goal_met']]}.",
        "",
        "### Plans at 50% of the measured baseline",
        "",
        "| Model | params | baseline measured (MiB) | again (`--measure`) | budget (MiB) | plan | predicted (MiB) "
        "| measured (MiB) | under budget |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in plans:
        params = f"{r['params'] / 1e6:,.1f} M" if r.get("params") else "-"
        fits = _yes(r.get("fits_measured")) if not r.get("error") else "error"
        if not r.get("error") and not r.get("written"):
            fits += " (no plan predicted to fit: not written, the closest measured from a scratch file)"
        out.append(
            f"| {r['model']} | {params} | {_mib(r.get('baseline_measured_bytes'))} | "
            f"{_mib(r.get('baseline_remeasured_bytes'))} | {_mib(r.get('budget_bytes'))} | {r.get('plan', '-')} | "
            f"{_mib(r.get('predicted_peak_bytes'))} | {_mib(r.get('measured_peak_bytes'))} | "
            f"{fits} |"
        )
    out += [
        "",
        "### Each strategy alone: predicted vs measured saving (MiB, ratio predicted/measured)",
        "",
        "The setting is the planner's pick with `--only NAME` for the same budget (the cheapest that fits, else",
        "the one that comes closest). Saving = baseline - the written file's peak, both measured at their own",
        "batch size; a cell is `predicted / measured (ratio)`, **bold** when outside ±20%. Reduced set: to keep",
        "the run under an hour on this shared machine (one to three minutes a measuring child), each model",
        "measures two of the four strategies, in rotation (`-`: not measured in this run).",
        "",
        "| Strategy | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    by = {(r["model"], r["strategy"]): r for r in singles}
    for strategy in HELD:
        cells = []
        for m in models:
            r = by.get((m, strategy))
            if r is None:
                cells.append("-")
            elif r.get("error"):
                cells.append("n/a" if "does not apply" in r["error"] else "error")
            else:
                cell = f"{_mib(r['predicted_saving_bytes'])} / {_mib(r['measured_saving_bytes'])} ({_ratio(r)})"
                cells.append(cell if r.get("within_goal") else f"**{cell}**")
        out.append(f"| {strategy} | " + " | ".join(cells) + " |")
    out += [
        "",
        "| Model | strategy | setting | predicted peak (MiB) | measured peak (MiB) | predicted saving | measured "
        "saving | ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in singles:
        if r.get("error"):
            continue
        out.append(
            f"| {r['model']} | {r['strategy']} | {r.get('setting', '-')} | {_mib(r.get('predicted_peak_bytes'))} | "
            f"{_mib(r.get('measured_peak_bytes'))} | {_mib(r.get('predicted_saving_bytes'))} | "
            f"{_mib(r.get('measured_saving_bytes'))} | {_ratio(r)} |"
        )
    out += [
        "",
        "### Too large to train here: predicted only, not measured",
        "",
        "`kmemopt plan FILE --budget N -b B --seq-len T -f json` on keras-hub Llama backbones whose weights are",
        "declared in the file but not stored (built unallocated; the file is a few KB). Optimizer: Adam (the",
        "file has none). All strategies allowed; nothing here was measured.",
        "",
        "| Model | params | batch x seq | budget (GiB) | baseline predicted (GiB) | plan | predicted (GiB) | fits "
        "| measured | plan time (s) |",
        "|---|---:|---|---:|---:|---|---:|---|---|---:|",
    ]
    for r in large + timed:
        if r.get("error"):
            continue
        out.append(
            f"| {r['model']} | {r['params'] / 1e9:.2f} B | {r['batch_size']} x {r['seq_len']} | "
            f"{_gib(r['budget_bytes'])} | {_gib(r.get('baseline_predicted_bytes'))} | {r.get('plan', '-')} | "
            f"{_gib(r.get('predicted_peak_bytes'))} | {_yes(r.get('fits_predicted'))} | not measured | "
            f"{r['seconds']:.1f} |"
        )
    out += [
        "",
        "Rows that did not answer are listed at the end (a plan stopped after "
        f"{DECLARED_TIMEOUT_S} s is not shown here).",
        "",
        "Plan time is the wall time of the whole `kmemopt plan` process (Python, TensorFlow and keras-hub start-up",
        "included), on this shared 2-core machine; the search itself is in results.json (`search_seconds`).",
    ]
    failed = [r for r in rows if r.get("error") and "does not apply" not in r["error"]]
    out += ["", "Rows that failed to measure: " + ("none." if not failed else "")]
    for r in failed:
        what = r.get("strategy") or r["kind"]
        out.append(f"- {r['model']} ({what}): {r['error']}")
    return "\n".join(out) + "\n"


def _ratio(r: dict) -> str:
    return "-" if r.get("ratio") is None else f"{r['ratio']:.2f}"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="One model of the plan suite (run.py starts these).")
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--strategies", required=True)
    parser.add_argument("--models-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    a = parser.parse_args()
    model_worker(a.model, tuple(x for x in a.strategies.split(",") if x), a.models_dir, a.out)
