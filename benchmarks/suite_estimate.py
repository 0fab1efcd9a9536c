"""Estimate vs measured: kmemopt's static peaks, and the estimators people use today, against real peaks.

Six real architectures (four keras.applications with weights=None, an LSTM text classifier and a
Transformer encoder built from MultiHeadAttention) are saved to .keras files, profiled statically,
then measured with `kmemopt.profiling.measure` (one child process per batch size, CPU high-water mark
above the framework baseline). Beside kmemopt's estimate, three common rules computed the way their
authors compute them:

- StackOverflow `get_model_memory_usage`: 4 bytes x (batch x sum of every layer's output elements +
  parameters); one number for inference and training alike.
- torchinfo: input bytes + 2 x the output bytes of every leaf layer that has parameters (forward +
  backward) + parameter bytes; one number for both phases.
- `accelerate estimate-memory`: the weights for inference, 4 x the weights for training with Adam.

Every model is measured at every batch size on every run (nothing is carried from an earlier run);
each measurement, with the static profile inputs the refit needs, is written to
benchmarks/calibration.json (committed), and `python benchmarks/suite_estimate.py --refit` refits the
runtime constants from that file alone, and `--reestimate` recomputes today's static estimates for its
measured rows (rebuilding the models, measuring nothing) beside the committed measured peaks and
estimates. The held-out models (HELD_OUT) were fixed before fitting.
KMEMOPT_BENCH_MODELS=DIR keeps the saved .keras files; KMEMOPT_BENCH_JOBS=N measures N children at a
time; KMEMOPT_BENCH_DEADLINE=HH:MM (UTC) records the measurements not started by then as not run;
KMEMOPT_BENCH_HELD_OUT_B8=A,B measures those held-out models at batch 8 only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

KEY = "estimate_vs_measured"
TITLE = "Estimated vs measured peak memory (CPU)"
BATCH_SIZES = (1, 8, 32)
# The six architectures the runtime constants of kmemopt/profiling/internals.py are fitted on
# (`--refit`): their rows are in-sample.
MODELS = ("MobileNetV2", "ResNet50", "EfficientNetB0", "DenseNet121", "LSTMTextClassifier", "TransformerEncoder")
# Held out: fixed on 2026-12-03, before this calibration data was measured or any constant refitted,
# and never used to fit. A check of how the memory model does on architectures it has not seen.
HELD_OUT = (
    "MobileNet",  # MobileNet v1 (depthwise-separable convolutions), 224x224
    "Xception96",  # separable convolutions with residual adds, 96x96 input
    "EfficientNetV2B0_96",  # fused MBConv blocks, 96x96 input
    "GRUTextClassifier",
    "BiLSTMSimpleRNN",  # Bidirectional LSTM then SimpleRNN
    "MultiInputOutput",  # a functional model with an image and a vector input, a class and a value output
    "MixedFloat16CNN",  # a CNN under the mixed_float16 policy
    "BertSmall",  # keras-hub BertBackbone, small config (no download)
    "GPT2Small",  # keras-hub GPT2Backbone, small config (a decoder)
    "ViTSmall",  # keras-hub ViTBackbone, small config
    "sample:digits_cnn",  # the bundled sample models (sample_models/)
    "sample:text_lstm",
)
# Sequence length the static profile resolves for models whose inputs leave it open (keras-hub text models).
SEQ_LEN = {"BertSmall": 128, "GPT2Small": 128, "sample:text_lstm": 128}
ESTIMATORS = ("kmemopt", "stackoverflow get_model_memory_usage", "torchinfo", "accelerate estimate-memory")
BAND = (0.8, 1.25)
CALIBRATION = Path(__file__).resolve().parent / "calibration.json"
# The fitted runtime constants and how internals.py prints them: (name, unit divisor, decimals).
FITTED = (
    ("LOADER_WEIGHT_FRACTION", 1, 3),
    ("LOADER_LARGEST_WEIGHT_FACTOR", 1, 2),
    ("LOADER_BYTES_PER_LAYER", 1024**2, 3),
    ("GRAPH_BYTES_PER_UNIT_INFERENCE", 1024**2, 4),
    ("GRAPH_BYTES_PER_UNIT_TRAINING", 1024**2, 3),
)


def batch_sizes(name: str) -> tuple[int, ...]:
    """The batch sizes a model is measured at (KMEMOPT_BENCH_HELD_OUT_B8=a,b: those held-out models at 8 only)."""
    short = {n.strip() for n in os.environ.get("KMEMOPT_BENCH_HELD_OUT_B8", "").split(",") if n.strip()}
    return (8,) if name in HELD_OUT and name in short else BATCH_SIZES


# --------------------------------------------------------------------------------------------- models


def lstm_text_classifier(keras):
    tokens = keras.Input((200,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(20000, 128, name="embedding")(tokens)
    h = keras.layers.LSTM(128, return_sequences=True, name="lstm_1")(h)
    h = keras.layers.LSTM(64, name="lstm_2")(h)
    h = keras.layers.Dense(64, activation="relu", name="dense")(h)
    out = keras.layers.Dense(2, activation="softmax", name="classifier")(h)
    return keras.Model(tokens, out, name="lstm_text_classifier")


def transformer_encoder(keras, seq_len=128, vocab=8000, dim=256, heads=8, ff=1024, blocks=4):
    tokens = keras.Input((seq_len,), dtype="int32", name="tokens")
    # Token embedding only: a position embedding needs a custom layer or a raw op, neither of which a
    # plain allowlisted .keras file holds; it would add one (B, T, dim) tensor.
    h = keras.layers.Embedding(vocab, dim, name="token_embedding")(tokens)
    for i in range(blocks):
        a = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attention")(h, h)
        h = keras.layers.LayerNormalization(name=f"block{i}_norm1")(keras.layers.Add(name=f"block{i}_add1")([h, a]))
        f = keras.layers.Dense(ff, activation="gelu", name=f"block{i}_ff1")(h)
        f = keras.layers.Dense(dim, name=f"block{i}_ff2")(f)
        h = keras.layers.LayerNormalization(name=f"block{i}_norm2")(keras.layers.Add(name=f"block{i}_add2")([h, f]))
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    out = keras.layers.Dense(2, activation="softmax", name="classifier")(h)
    return keras.Model(tokens, out, name="transformer_encoder")


def gru_text_classifier(keras):
    tokens = keras.Input((100,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(5000, 64, name="embedding")(tokens)
    h = keras.layers.GRU(96, name="gru")(h)
    out = keras.layers.Dense(3, activation="softmax", name="classifier")(h)
    return keras.Model(tokens, out, name="gru_text_classifier")


def bilstm_simplernn(keras):
    tokens = keras.Input((80,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(3000, 64, name="embedding")(tokens)
    h = keras.layers.Bidirectional(keras.layers.LSTM(48, return_sequences=True), name="bilstm")(h)
    h = keras.layers.SimpleRNN(32, name="simple_rnn")(h)
    out = keras.layers.Dense(2, activation="softmax", name="classifier")(h)
    return keras.Model(tokens, out, name="bilstm_simplernn")


def multi_input_output(keras):
    image = keras.Input((64, 64, 3), name="image")
    meta = keras.Input((16,), name="meta")
    h = keras.layers.Conv2D(32, 3, activation="relu", name="conv1")(image)
    h = keras.layers.MaxPooling2D(name="pool1")(h)
    h = keras.layers.Conv2D(64, 3, activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    m = keras.layers.Dense(32, activation="relu", name="meta_dense")(meta)
    h = keras.layers.Concatenate(name="concat")([h, m])
    h = keras.layers.Dense(64, activation="relu", name="shared")(h)
    label = keras.layers.Dense(10, activation="softmax", name="label")(h)
    value = keras.layers.Dense(1, name="value")(h)
    return keras.Model([image, meta], [label, value], name="multi_input_output")


def mixed_float16_cnn(keras):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x = keras.Input((96, 96, 3), name="image")
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
        h = keras.layers.BatchNormalization(name="bn1")(h)
        h = keras.layers.MaxPooling2D(name="pool1")(h)
        h = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(h)
        h = keras.layers.MaxPooling2D(name="pool2")(h)
        h = keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv3")(h)
        h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
        h = keras.layers.Dense(128, activation="relu", name="dense")(h)
        out = keras.layers.Dense(10, activation="softmax", dtype="float32", name="classifier")(h)
        return keras.Model(x, out, name="mixed_float16_cnn")
    finally:
        keras.mixed_precision.set_global_policy(previous)


def keras_hub_model(name: str):
    import keras_hub

    if name == "BertSmall":
        return keras_hub.models.BertBackbone(
            vocabulary_size=2000,
            num_layers=2,
            num_heads=4,
            hidden_dim=128,
            intermediate_dim=512,
            max_sequence_length=128,
        )
    if name == "GPT2Small":
        return keras_hub.models.GPT2Backbone(
            vocabulary_size=2000,
            num_layers=2,
            num_heads=4,
            hidden_dim=128,
            intermediate_dim=512,
            max_sequence_length=128,
        )
    return keras_hub.models.ViTBackbone(
        image_shape=(64, 64, 3), patch_size=8, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=512
    )


def build(name: str, keras):
    keras.utils.set_random_seed(0)
    builders = {
        "GRUTextClassifier": gru_text_classifier,
        "LSTMTextClassifier": lstm_text_classifier,
        "TransformerEncoder": transformer_encoder,
        "BiLSTMSimpleRNN": bilstm_simplernn,
        "MultiInputOutput": multi_input_output,
        "MixedFloat16CNN": mixed_float16_cnn,
    }
    if name in builders:
        return builders[name](keras)
    if name in ("BertSmall", "GPT2Small", "ViTSmall"):
        return keras_hub_model(name)
    if name == "Xception96":
        return keras.applications.Xception(weights=None, input_shape=(96, 96, 3), classes=10)
    if name == "EfficientNetV2B0_96":
        return keras.applications.EfficientNetV2B0(weights=None, input_shape=(96, 96, 3), classes=10)
    return getattr(keras.applications, name)(weights=None)


SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def save_models(directory: Path, log, names=MODELS) -> dict[str, Path]:
    from kmemopt._keras import import_keras

    keras = import_keras()
    paths = {}
    for name in names:
        if name.startswith("sample:"):
            paths[name] = SAMPLES / f"{name.removeprefix('sample:')}.keras"
            continue
        path = directory / f"{name}.keras"
        if not path.exists():
            log(f"  building {name}")
            model = build(name, keras)
            model.save(path)
            del model
            keras.backend.clear_session()
        paths[name] = path
    return paths


# --------------------------------------------------------------------------------------------- other estimators


def _elements(shape) -> int:
    n = 1
    for d in shape:
        if d is not None:
            n *= int(d)
    return n


def stackoverflow_estimate(model, batch_size: int) -> int:
    """`get_model_memory_usage` (StackOverflow 43137288), with `layer.output.shape` for Keras 3."""
    import numpy as np

    shapes = 0
    internal = 0.0
    for layer in model.layers:
        if type(layer).__name__ in ("Model", "Functional", "Sequential"):
            internal += stackoverflow_estimate(layer, batch_size) / 1024**3
        out = layer.output
        shape = out[0].shape if isinstance(out, (list, tuple)) else out.shape
        shapes += _elements(shape)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    total = 4.0 * (batch_size * shapes + trainable + non_trainable)
    return int(round((total / 1024**3 + internal) * 1024**3))


def torchinfo_estimate(profile, batch_size: int) -> int:
    """torchinfo's "Estimated Total Size": input + 2 x outputs of leaf layers with parameters + params."""
    inputs = sum(r.output_bytes for r in profile.layers if r.class_name == "InputLayer")
    outputs = sum(2 * r.output_bytes for r in profile.layers if r.params > 0)
    return inputs + outputs + profile.totals.param_bytes


def accelerate_estimate(profile, phase: str) -> int:
    """`accelerate estimate-memory`: model size for inference, ~4x model size for training with Adam."""
    return profile.totals.param_bytes * (4 if phase == "training" else 1)


# --------------------------------------------------------------------------------------------- run


def profile_inputs(name: str, path: Path, b: int) -> dict:
    """The static profile at batch b and what the refit needs from it: the model's weights, largest
    weight, layer calls and op units, and the peaks without the fitted runtime terms (the loader
    residue and the traced graph, both fixed in the batch size; the input copy stays)."""
    import kmemopt.profiling.internals as internals
    from kmemopt.api import profile as static_profile
    from kmemopt.profiling.dtypes import nbytes

    p = static_profile(path, batch_size=b, seq_len=SEQ_LEN.get(name))
    calls = p._graph.calls
    param_bytes = p.totals.param_bytes
    costs = internals.runtime_costs(p._graph, param_bytes)
    loader = costs["loader_residue"].fixed_bytes
    return {
        "_profile": p,
        "param_bytes": param_bytes,
        "largest_weight_bytes": max(
            (nbytes(v.shape, v.dtype) for c in calls for v in getattr(c.layer, "weights", ())), default=0
        ),
        "layer_calls": len(calls),
        "op_units": sum(internals.op_units(c.layer) for c in calls),
        "estimated_inference_bytes": p.totals.inference_peak_bytes,
        "estimated_training_bytes": p.totals.training_peak_bytes,
        "static_inference_bytes": p.totals.inference_peak_bytes - loader - costs["inference_graph"].fixed_bytes,
        "static_training_bytes": p.totals.training_peak_bytes - loader - costs["training_graph"].fixed_bytes,
    }


def _measure_one(path: Path, inputs: list[dict], b: int, deadline: float | None, log, label: str) -> dict:
    import time

    from kmemopt.profiling.measure import measure

    if deadline is not None and time.time() > deadline:
        return {"status": "not_run", "message": "not measured: the run's deadline (KMEMOPT_BENCH_DEADLINE) had passed"}
    log(f"  measuring {label} at batch {b}")
    try:
        m = measure(
            path,
            inputs=inputs,
            batch_size=b,
            layers=False,
            timeout_s=float(os.environ.get("KMEMOPT_BENCH_TIMEOUT", 1800)),
        )
    except Exception as exc:  # recorded with the row, never dropped
        return {"status": "failed", "message": f"{type(exc).__name__}: {exc}"[:300]}
    run = m.main
    log(f"  measured {label} at batch {b}: {run.status.value}, {run.seconds:.0f} s")
    out = {
        "method": m.method,
        "status": run.status.value,
        "baseline_bytes": run.baseline_bytes,
        "load_bytes": run.load_bytes,
        "inference_peak_bytes": run.inference_peak_bytes,
        "training_peak_bytes": run.training_peak_bytes,
        "seconds": round(run.seconds, 1),
    }
    if run.message:
        out["message"] = run.message[:300]
    return out


def _deadline() -> float | None:
    """KMEMOPT_BENCH_DEADLINE=HH:MM (UTC, today): measurements not started by then are recorded as not run."""
    import datetime as dt

    value = os.environ.get("KMEMOPT_BENCH_DEADLINE")
    if not value:
        return None
    hh, mm = (int(x) for x in value.split(":"))
    now = dt.datetime.now(dt.timezone.utc)
    return now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()


def measure_models(names, log) -> tuple[list[dict], dict]:
    """Profile and measure every model at its batch sizes; one calibration row per (model, batch size)."""
    from concurrent.futures import ThreadPoolExecutor

    import provenance
    from run import machine

    from kmemopt.api import open_checked

    workdir = Path(os.environ.get("KMEMOPT_BENCH_MODELS") or tempfile.mkdtemp(prefix="kmemopt-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = save_models(workdir, log, names)
    this_machine = machine()
    rows: dict[tuple[str, int], dict] = {}
    extras: dict[tuple[str, int], dict] = {}
    for name, path in paths.items():
        model = None
        try:
            _, model, _ = open_checked(path)
        except Exception as exc:
            log(f"  {name}: cannot open: {exc}")
        for b in batch_sizes(name):
            row = {"model": name, "batch_size": b, "fitted": name in MODELS, "held_out": name in HELD_OUT}
            try:
                info = profile_inputs(name, path, b)
                p = info.pop("_profile")
                row.update(info)
                extras[(name, b)] = {"profile": p, "model": model}
            except Exception as exc:
                row.update(status="failed", message=f"static profile: {type(exc).__name__}: {exc}"[:300])
            rows[(name, b)] = row
    # The fitted six first (the refit needs them), then the held-out models at batch 8, then at the
    # other batch sizes; within each, the most layer calls (the longest to measure) first.
    order = sorted(
        rows, key=lambda k: (not rows[k]["fitted"], k[1] != 8 and not rows[k]["fitted"], -rows[k].get("layer_calls", 0))
    )
    deadline = _deadline()
    jobs = int(os.environ.get("KMEMOPT_BENCH_JOBS", "1"))

    def work(key):
        name, b = key
        row = rows[key]
        # Stamped as the child starts: the code on disk then is the code it runs.
        stamp = {"measured_at": provenance.current(this_machine)}
        if "status" in row:  # the static profile failed: nothing to measure with
            return key, stamp
        inputs = [i.to_dict() for i in extras[key]["profile"].inputs]
        return key, {**_measure_one(paths[name], inputs, b, deadline, log, name), **stamp}

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for key, got in pool.map(work, order):
            rows[key].update(got)
            _write_calibration([rows[k] for k in sorted(rows, key=_row_order)])
    return [rows[k] for k in sorted(rows, key=_row_order)], extras


def _row_order(key):
    name, b = key
    names = MODELS + HELD_OUT
    return (names.index(name), b)


def _write_calibration(rows: list[dict]) -> None:
    CALIBRATION.write_text(
        json.dumps(
            {
                "about": (
                    "Every measurement `make bench SUITE=estimate` made, with the static profile inputs the "
                    "refit needs (`python benchmarks/suite_estimate.py --refit`). Bytes; peaks are above the "
                    "framework baseline. static_*_bytes: the estimate without the fitted runtime terms."
                ),
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )


def rows_for(cal: dict, extra: dict | None) -> list[dict]:
    """The results rows of one calibration row: each estimator against each measured phase."""
    name, b = cal["model"], cal["batch_size"]
    p = (extra or {}).get("profile")
    model = (extra or {}).get("model")
    rows = []
    for phase in ("inference", "training"):
        truth = cal.get(f"{phase}_peak_bytes")
        estimates = {
            "kmemopt": cal.get(f"estimated_{phase}_bytes"),
            "stackoverflow get_model_memory_usage": _try(stackoverflow_estimate, model, b) if model else None,
            "torchinfo": torchinfo_estimate(p, b) if p else None,
            "accelerate estimate-memory": accelerate_estimate(p, phase) if p else None,
        }
        for estimator, est in estimates.items():
            row = {
                "model": name,
                "batch_size": b,
                "phase": phase,
                "estimator": estimator,
                "estimated_bytes": None if est is None else int(est),
                "measured_bytes": truth,
                "device": "cpu",
                "ratio": round(est / truth, 3) if truth and est else None,
                "error_pct": round(100 * (est - truth) / truth, 1) if truth and est else None,
                "method": cal.get("method"),
                "status": cal.get("status"),
                "measure_seconds": cal.get("seconds"),
                "held_out": name in HELD_OUT,
            }
            if cal.get("message"):
                row["message"] = cal["message"]
            rows.append(row)
    return rows


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


def run(log) -> list[dict]:
    cal_rows, extras = measure_models(MODELS + HELD_OUT, log)
    rows = []
    for cal in cal_rows:
        rows += rows_for(cal, extras.get((cal["model"], cal["batch_size"])))
    return rows


# --------------------------------------------------------------------------------------------- report


def _mib(n) -> str:
    return "-" if n is None else f"{n / 1024**2:,.0f}"


def _err(r) -> str:
    return "-" if r.get("error_pct") is None else f"{r['error_pct']:+.0f}%"


def summary(rows: list[dict]) -> dict:
    """kmemopt's figures over rows with a measurement: count, in band, under-estimates, median error."""
    rs = [r for r in rows if r["estimator"] == "kmemopt" and r.get("ratio")]
    errs = sorted(r["error_pct"] for r in rs)
    under = [r for r in rs if r["ratio"] < 1]
    return {
        "rows": len(rs),
        "in_band": sum(BAND[0] <= r["ratio"] <= BAND[1] for r in rs),
        "under": len(under),
        "under_band": sum(r["ratio"] < BAND[0] for r in rs),
        "worst_under": min(under, key=lambda r: r["ratio"]) if under else None,
        "median_abs_error": sorted(abs(e) for e in errs)[len(errs) // 2] if errs else None,
        "median_error": errs[len(errs) // 2] if errs else None,
    }


def _table(rows: list[dict]) -> list[str]:
    out = [
        "| Model | Batch | Phase | Measured (MiB) | kmemopt (MiB) | kmemopt error | StackOverflow | torchinfo | accelerate |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_key: dict = {}
    for r in rows:
        by_key.setdefault((r["model"], r["batch_size"], r["phase"]), {})[r["estimator"]] = r
    for (model, b, phase), est in by_key.items():
        k = est["kmemopt"]
        measured = _mib(k["measured_bytes"]) if k.get("measured_bytes") else f"{k.get('status') or 'failed'}"
        out.append(
            f"| {model} | {b} | {phase} | {measured} | {_mib(k['estimated_bytes'])} | **{_err(k)}** | "
            f"{_err(est.get('stackoverflow get_model_memory_usage', {}))} | {_err(est.get('torchinfo', {}))} | "
            f"{_err(est.get('accelerate estimate-memory', {}))} |"
        )
    return out


def _figures(label: str, rows: list[dict]) -> str:
    s = summary(rows)
    if not s["rows"]:
        return f"{label}: no row measured."
    text = (
        f"{label}: {s['in_band']} of {s['rows']} rows within 0.8-1.25x; median error {s['median_error']:+.0f}% "
        f"(median absolute {s['median_abs_error']:.0f}%); {s['under']} under-estimates"
    )
    if s["worst_under"]:
        w = s["worst_under"]
        text += (
            f" ({s['under_band']} below 0.8x; the worst {w['ratio']:.2f}x, {w['model']} b={w['batch_size']} "
            f"{w['phase']}: {_mib(w['estimated_bytes'])} MiB estimated, {_mib(w['measured_bytes'])} MiB measured)"
        )
    return text + "."


def markdown(rows: list[dict]) -> str:
    fitted = [r for r in rows if not r.get("held_out")]
    held = [r for r in rows if r.get("held_out")]
    out = [
        "Peak memory above the framework baseline, measured on this CPU with the kernel's high-water mark",
        "(`kmemopt profile MODEL --measure --batch-size B` measures the same way; one child process per model",
        "and batch size). Estimates are static (`kmemopt profile MODEL --batch-size B`): no weights loaded.",
        "Error = (estimate - measured) / measured, signed: negative is an under-estimate, the dangerous side.",
        "Reproduce: `make bench SUITE=estimate`; every measurement is also in `benchmarks/calibration.json`,",
        "from which `python benchmarks/suite_estimate.py --refit` refits the runtime constants (docs/measure.md).",
        "",
        "**In-sample** (the runtime constants of `kmemopt/profiling/internals.py` are fitted on these six",
        "architectures' rows: they show how well one set of constants fits them, not how well it predicts):",
        "",
        *_table(fitted),
        "",
        "**Held out** (fixed before this calibration data was measured; never used to fit):",
        "",
        *_table(held),
        "",
        _figures("In-sample (kmemopt)", fitted),
        "",
        _figures("Held out (kmemopt)", held),
    ]
    measured_at = {}
    for r in held:
        if r.get("measured_bytes"):
            measured_at.setdefault(r["model"], set()).add(r["batch_size"])
    short = sorted(m for m, bs in measured_at.items() if bs == {8})
    if short:
        out += [
            "",
            "Held-out models measured at batch 8 only (their other batch sizes were cut, or failed, to finish "
            "the run in its time; listed below): " + ", ".join(short) + ".",
        ]
    out += unmeasured_lines(rows)
    out += refit_since_lines()
    outside = [
        f"{r['model']} b={r['batch_size']} {r['phase']} ({r['ratio']:.2f})"
        for r in rows
        if r["estimator"] == "kmemopt" and r.get("ratio") and not BAND[0] <= r["ratio"] <= BAND[1]
    ]
    out += ["", "kmemopt rows outside estimate/measured 0.8-1.25: " + (", ".join(outside) if outside else "none") + "."]
    secs = {(r["model"], r["batch_size"]): r.get("measure_seconds") or 0 for r in rows}
    out += [
        "",
        f"Measuring took {sum(secs.values()) / 60:.0f} min of child processes in all (one a model and batch size,",
        "inference and training in the same child; several children at a time on a shared machine).",
        "",
        "StackOverflow's and torchinfo's rules give one number for both phases; accelerate's is the",
        "weights (inference) and 4x the weights (training with Adam). See docs/measure.md for the memory model.",
        "",
        "Summary (all rows with a measurement):",
        "",
        "| Estimator | rows | within 0.8-1.25x | within 20% | under-estimates | median error | worst error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups = []
    for estimator in ESTIMATORS:
        rs = [r for r in rows if r["estimator"] == estimator and r.get("ratio")]
        if estimator == "kmemopt":
            groups.append(("kmemopt (in-sample: models used to fit it)", [r for r in rs if not r.get("held_out")]))
            groups.append(("kmemopt (held-out models)", [r for r in rs if r.get("held_out")]))
        else:
            groups.append((estimator, rs))
    for estimator, rs in groups:
        if not rs:
            continue
        errs = sorted(r["error_pct"] for r in rs)
        band = sum(BAND[0] <= r["ratio"] <= BAND[1] for r in rs)
        within20 = sum(abs(r["error_pct"]) <= 20 for r in rs)
        under = sum(r["ratio"] < 1 for r in rs)
        worst = max(rs, key=lambda r: abs(r["error_pct"]))
        out.append(
            f"| {estimator} | {len(rs)} | {band} | {within20} | {under} | {errs[len(errs) // 2]:+.0f}% | "
            f"{worst['error_pct']:+.0f}% ({worst['model']}, b={worst['batch_size']}, {worst['phase']}) |"
        )
    return "\n".join(out) + "\n"


def estimate_now(cal: dict, phase: str) -> int:
    """A calibration row's estimate with the runtime constants in kmemopt/profiling/internals.py now: the
    part no constant touches (`static_*_bytes`, committed with the row) plus the fitted terms, exactly as
    `internals.runtime_costs` adds them. Rebuilds nothing."""
    import kmemopt.profiling.internals as k

    loader = (
        int(
            k.LOADER_WEIGHT_FRACTION * cal["param_bytes"] + k.LOADER_LARGEST_WEIGHT_FACTOR * cal["largest_weight_bytes"]
        )
        + k.LOADER_BYTES_PER_LAYER * cal["layer_calls"]
    )
    per_unit = k.GRAPH_BYTES_PER_UNIT_INFERENCE if phase == "inference" else k.GRAPH_BYTES_PER_UNIT_TRAINING
    return cal[f"static_{phase}_bytes"] + loader + per_unit * cal["op_units"]


def refit_since_lines(calibration: Path = CALIBRATION) -> list[str]:
    """When the constants were refit after the run the table shows: the same measured rows estimated with
    the constants now (`estimate_now`), fitted and held-out apart. Nothing when they are the run's own."""
    if not Path(calibration).exists():
        return []
    cal_rows = [r for r in json.loads(Path(calibration).read_text())["rows"] if r.get("status") == "ok"]
    pairs = [(r, phase) for r in cal_rows for phase in ("inference", "training") if r.get(f"{phase}_peak_bytes")]
    if all(abs(estimate_now(r, phase) - r[f"estimated_{phase}_bytes"]) <= 1 for r, phase in pairs):
        return []
    parts = []
    for label, held in (("in-sample", False), ("held-out", True)):
        ratios = sorted(
            (estimate_now(r, phase) / r[f"{phase}_peak_bytes"], r["model"], r["batch_size"], phase)
            for r, phase in pairs
            if (r["model"] in HELD_OUT) == held
        )
        if not ratios:
            continue
        band = sum(BAND[0] <= x <= BAND[1] for x, *_ in ratios)
        under = sum(x < 1 for x, *_ in ratios)
        x, model, b, phase = ratios[0]
        parts.append(
            f"{label} {band} of {len(ratios)} within 0.8-1.25x, {under} under-estimates (the lowest {x:.2f}x: "
            f"{model}, b={b}, {phase})"
        )
    return [
        "",
        "**The runtime constants were refit after this run**, on its own measurements "
        "(`python benchmarks/suite_estimate.py --refit`; docs/measure.md): the estimates above were made with "
        "the constants before the refit. The same measured rows estimated with the constants in the code now "
        "(each row's unfitted part, committed in calibration.json, plus the fitted terms; computed, nothing "
        "measured or rebuilt): " + "; ".join(parts) + ".",
    ]


# --------------------------------------------------------------------------------------------- refitting


def fit_constants(calibration: Path = CALIBRATION, names=MODELS) -> dict[str, float]:
    """Refit the runtime constants of kmemopt/profiling/internals.py from benchmarks/calibration.json.

    Rebuilds and measures nothing: every input is a committed row. The loader residue (a share of the
    weights, a factor of the largest weight, bytes per layer call) is fitted on the measured load
    phase; the traced-graph bytes per op unit (inference, training) on the measured peaks with the
    loader terms held fixed, the rest of the estimate (`static_*_bytes`) taken as it is. Both by least
    squares on the relative error with every constant at least 0 (`scipy.optimize.nnls`: each stands
    for bytes a process holds, never bytes it gives back), over the fitted six architectures' rows that
    measured ok.
    """
    import numpy as np
    from scipy.optimize import nnls

    data = json.loads(Path(calibration).read_text())
    rows = [r for r in data["rows"] if r["model"] in names and r.get("status") == "ok"]
    missing = sorted({(n, b) for n in names for b in BATCH_SIZES} - {(r["model"], r["batch_size"]) for r in rows})
    if missing:
        raise ValueError(f"{calibration} lacks measured rows for the fitted set: {missing}")
    a, y = [], []
    for r in rows:
        load = r["load_bytes"]
        a.append([r["param_bytes"] / load, r["largest_weight_bytes"] / load, r["layer_calls"] / load])
        y.append((load - r["param_bytes"]) / load)
    (frac, big, per_layer), _ = nnls(np.array(a), np.array(y))
    a, y = [], []
    for r in rows:
        loader = frac * r["param_bytes"] + big * r["largest_weight_bytes"] + per_layer * r["layer_calls"]
        for phase in ("inference", "training"):
            truth = r[f"{phase}_peak_bytes"]
            units = r["op_units"] / truth
            a.append([units, 0] if phase == "inference" else [0, units])
            y.append((truth - r[f"static_{phase}_bytes"] - loader) / truth)
    (g_inf, g_train), _ = nnls(np.array(a), np.array(y))
    return {
        "LOADER_WEIGHT_FRACTION": float(frac),
        "LOADER_LARGEST_WEIGHT_FACTOR": float(big),
        "LOADER_BYTES_PER_LAYER": float(per_layer),
        "GRAPH_BYTES_PER_UNIT_INFERENCE": float(g_inf),
        "GRAPH_BYTES_PER_UNIT_TRAINING": float(g_train),
    }


def refit_table(calibration: Path = CALIBRATION) -> list[tuple[str, str, str]]:
    """(constant, refitted, in internals.py), each printed at the precision internals.py writes it."""
    import kmemopt.profiling.internals as internals

    fitted = fit_constants(calibration)
    out = []
    for name, unit, decimals in FITTED:
        suffix = " MiB" if unit != 1 else ""
        out.append(
            (
                name,
                f"{fitted[name] / unit:.{decimals}f}{suffix}",
                f"{getattr(internals, name) / unit:.{decimals}f}{suffix}",
            )
        )
    return out


# --------------------------------------------------------------------------------------------- offline re-estimate


def reestimate(calibration: Path = CALIBRATION, directory: Path | None = None, log=print) -> list[dict]:
    """Today's static estimates for every measured row of benchmarks/calibration.json, beside the
    committed measured peaks and the estimates committed with them. Measures nothing (a measurement
    needs a quiet machine): it rebuilds the models (no weights trained) and profiles them with the
    code on disk, so a change to the memory model can be checked against the committed measurements.
    Nothing is fitted here: the fitted and held-out rows are only reported apart."""
    data = json.loads(Path(calibration).read_text())
    rows = [r for r in data["rows"] if r.get("status") == "ok"]
    names = tuple(n for n in MODELS + HELD_OUT if any(r["model"] == n for r in rows))
    workdir = directory or Path(tempfile.mkdtemp(prefix="kmemopt-reestimate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = save_models(workdir, log, names)
    out = []
    for r in rows:
        if r["model"] not in paths:
            continue
        now = profile_inputs(r["model"], paths[r["model"]], r["batch_size"])
        for phase in ("inference", "training"):
            out.append(
                {
                    "model": r["model"],
                    "batch_size": r["batch_size"],
                    "phase": phase,
                    "held_out": r["model"] in HELD_OUT,
                    "measured_bytes": r[f"{phase}_peak_bytes"],
                    "committed_bytes": r[f"estimated_{phase}_bytes"],
                    "estimated_bytes": now[f"estimated_{phase}_bytes"],
                }
            )
    return out


def in_band_by_model(rows: list[dict]) -> list[tuple[str, bool, int, int, int]]:
    """(model, held out, rows in band now, rows in band as committed, rows), in the suite's order."""
    counts: dict[str, list] = {}
    for r in rows:
        c = counts.setdefault(r["model"], [r["held_out"], 0, 0, 0])
        c[1] += BAND[0] <= r["estimated_bytes"] / r["measured_bytes"] <= BAND[1]
        c[2] += BAND[0] <= r["committed_bytes"] / r["measured_bytes"] <= BAND[1]
        c[3] += 1
    return [(m, *counts[m]) for m in sorted(counts, key=(MODELS + HELD_OUT).index)]


def reestimate_table(rows: list[dict]) -> list[str]:
    out = [f"{'model':<22} {'batch':>5} {'phase':<9} {'measured MiB':>12} {'now':>6} {'committed':>9}"]
    for r in rows:
        out.append(
            f"{r['model']:<22} {r['batch_size']:>5} {r['phase']:<9} {r['measured_bytes'] / 1024**2:>12.1f} "
            f"{r['estimated_bytes'] / r['measured_bytes']:>5.2f}x {r['committed_bytes'] / r['measured_bytes']:>8.2f}x"
        )
    counts = in_band_by_model(rows)
    for held, label in ((False, "in-sample (fitted)"), (True, "held out")):
        out.append(f"{label}: rows within {BAND[0]}-{BAND[1]}x now / as committed")
        group = [c for c in counts if c[1] == held]
        for model, _, now, before, n in group:
            out.append(f"  {model:<22} {now}/{n}  (committed {before}/{n})")
        out.append(
            f"  {'total':<22} {sum(c[2] for c in group)}/{sum(c[4] for c in group)}  "
            f"(committed {sum(c[3] for c in group)}/{sum(c[4] for c in group)})"
        )
    return out


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if sys.argv[1:2] == ["--refit"]:
        source = Path(sys.argv[2]) if len(sys.argv) > 2 else CALIBRATION
        print(f"{'constant':<32} {'refitted':>12} {'internals.py':>14}")
        for name, refit, current in refit_table(source):
            print(f"{name:<32} {refit:>12} {current:>14}" + ("" if refit == current else "   differs"))
    elif sys.argv[1:2] == ["--reestimate"]:
        keep = Path(sys.argv[2]) if len(sys.argv) > 2 else None
        print("\n".join(reestimate_table(reestimate(directory=keep, log=lambda m: print(m, file=sys.stderr)))))
    else:
        print(
            "usage: python benchmarks/suite_estimate.py --refit [CALIBRATION.json]\n"
            "       python benchmarks/suite_estimate.py --reestimate [MODELS_DIR]"
        )


def unmeasured_lines(rows: list[dict]) -> list[str]:
    """The report's list of rows without a measurement (each model and batch once), or nothing."""
    failed = sorted(
        {
            (r["model"], r["batch_size"], r.get("status"), r.get("message", ""))
            for r in rows
            if not r.get("measured_bytes")
        }
    )
    if not failed:
        return []
    return ["", "Rows without a measurement:"] + [
        f"- {m} b={b}: {st or 'failed'}" + (f" ({msg})" if msg else "") for m, b, st, msg in failed
    ]
