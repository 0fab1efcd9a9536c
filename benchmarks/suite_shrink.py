"""Shrink: kmemopt's passes against Keras's own int8 quantization and LiteRT export, on real models.

Models: a Dense-heavy MLP and the sample CNN, both trained on scikit-learn's digits (fidelity on the
held-out digits, with labels); MobileNetV2, ResNet50 and VGG16 (keras.applications, weights=None: random
but realistic-sized weights; fidelity on synthetic inputs); a small Transformer classifier (synthetic);
a Llama-architecture keras-hub backbone (random weights; its config lists no layers).
Every ratio is against the same model re-saved by plain Keras without its optimizer (the fair float32
reference). `shrink`'s own peak RSS is measured in a child process (kernel high-water mark above the
process's RSS after importing Keras and running one tiny predict), for `--quantize int8`.

KMEMOPT_BENCH_SHRINK_MODELS="ResNet50,Transformer (small)" reruns only those models; the other models'
rows are kept from benchmarks/results.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KEY = "shrink"
TITLE = "Shrink: file size and fidelity"
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"

METHODS = (
    ("kmemopt int8 (portable)", dict(quantize="int8")),
    ("kmemopt int8 + custom layers", dict(quantize="int8", allow_custom_layers=True)),
    ("kmemopt int4 (portable)", dict(quantize="int4")),
    ("kmemopt float16", dict(quantize="float16")),
    ("kmemopt prune 50% + compress", dict(prune=0.5)),
)
KERAS_NATIVE = 'keras native model.quantize("int8")'
LITERT = "LiteRT dynamic-range export"


# --------------------------------------------------------------------------------------------- models


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype("float32")
    return x[:1347], d.target[:1347], x[1347:], d.target[1347:]


def dense_mlp(keras, work: Path):
    """A Dense-heavy MLP (1.6 M parameters) trained on digits: the case Keras's int8 is made for."""
    keras.utils.set_random_seed(0)
    xtr, ytr, xte, yte = _digits()
    inp = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(1024, activation="relu", name="dense_1")(inp)
    h = keras.layers.Dense(1024, activation="relu", name="dense_2")(h)
    h = keras.layers.Dense(512, activation="relu", name="dense_3")(h)
    out = keras.layers.Dense(10, activation="softmax", name="classifier")(h)
    model = keras.Model(inp, out, name="digits_dense_mlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=15, batch_size=64, verbose=0)
    path = work / "dense_mlp.keras"
    model.save(path)  # with its Adam state, as a training script leaves it
    data = work / "dense_mlp_test.npz"
    np.savez(data, pixels=xte, y=yte)
    return path, data


def digits_cnn(keras, work: Path):
    return SAMPLES / "digits_cnn.keras", SAMPLES / "digits_test.npz"


def calibrate_batchnorm(keras, model, shape) -> None:
    """Set every BatchNormalization's moving statistics from one batch of synthetic inputs.

    With weights=None the moving mean/variance are 0/1 and the random network's activations collapse,
    so every input gives the same prediction and fidelity means nothing. Batch statistics make the
    random network input-dependent, as a trained one is.
    """
    layers = [x for x in model._flatten_layers() if isinstance(x, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    x = np.random.default_rng(0).standard_normal((16, *shape)).astype("float32")
    model(x, training=True)
    for layer, momentum in zip(layers, saved, strict=True):
        layer.momentum = momentum


def application(name):
    def build(keras, work: Path):
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, name)(weights=None)
        calibrate_batchnorm(keras, model, (224, 224, 3))
        path = work / f"{name}.keras"
        model.save(path)
        return path, None

    return build


def transformer(keras, work: Path):
    keras.utils.set_random_seed(0)
    tokens = keras.Input((64,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(8000, 128, name="embedding")(tokens)
    for i in range(2):
        a = keras.layers.MultiHeadAttention(4, 32, name=f"attention_{i}")(h, h)
        h = keras.layers.LayerNormalization(name=f"norm_a{i}")(keras.layers.Add(name=f"res_a{i}")([h, a]))
        f = keras.layers.Dense(512, activation="gelu", name=f"ffn_up_{i}")(h)
        f = keras.layers.Dense(128, name=f"ffn_down_{i}")(f)
        h = keras.layers.LayerNormalization(name=f"norm_f{i}")(keras.layers.Add(name=f"res_f{i}")([h, f]))
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    out = keras.layers.Dense(4, activation="softmax", name="classes")(h)
    path = work / "transformer.keras"
    keras.Model(tokens, out, name="small_transformer").save(path)
    return path, None


def hub_llama(keras, work: Path):
    """A Llama-architecture keras-hub backbone (random weights, 110 MiB): its config lists no layers, so
    shrink quantizes it in place with Keras's own model.quantize."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=32000,
        num_layers=4,
        num_query_heads=8,
        num_key_value_heads=2,
        hidden_dim=512,
        intermediate_dim=1376,
    )
    path = work / "llama_small.keras"
    backbone.save(path)
    return path, None


def scaled_cnn(width: int):
    """A plain convolutional network whose weights grow with the square of `width` and whose graph
    does not change: shrink's peak memory against weight size with the framework's cost held fixed."""

    def build(keras, work: Path):
        keras.utils.set_random_seed(0)
        inp = keras.Input((64, 64, 3), name="image")
        h = inp
        for block, mult in enumerate((1, 2, 4, 8)):
            for i in range(2):
                h = keras.layers.Conv2D(width * mult, 3, padding="same", name=f"conv{block}_{i}")(h)
                h = keras.layers.BatchNormalization(name=f"bn{block}_{i}")(h)
                h = keras.layers.ReLU(name=f"relu{block}_{i}")(h)
            h = keras.layers.MaxPooling2D(name=f"pool{block}")(h)
        h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
        out = keras.layers.Dense(100, activation="softmax", name="classes")(h)
        model = keras.Model(inp, out, name=f"cnn_w{width}")
        calibrate_batchnorm(keras, model, (64, 64, 3))
        path = work / f"cnn_w{width}.keras"
        model.save(path)
        return path, None

    return build


# Widths of scaled_cnn: about 4.5, 71, 286 and 643 MiB of float32 weights (1143 x width^2 parameters).
SCALING_WIDTHS = (32, 128, 256, 384)
SCALING = "Scaling (plain CNN)"

MODELS = (
    ("Dense MLP (digits)", dense_mlp, 64),
    ("CNN (digits)", digits_cnn, 64),
    ("MobileNetV2", application("MobileNetV2"), 8),
    ("ResNet50", application("ResNet50"), 8),
    ("VGG16", application("VGG16"), 8),
    ("Transformer (small)", transformer, 64),
    ("Llama-style (keras-hub)", hub_llama, 16),
)


# --------------------------------------------------------------------------------------------- runs


RSS_GOAL = 2.5  # issue 4: shrink's own peak RSS at most 2.5x the float32 weight bytes above the baseline

_RSS_CHILD = r"""
import json, os, resource, sys
import kmemopt
from kmemopt._keras import import_keras
import_keras()
import kmemopt.passes.pipeline, kmemopt.layers, kmemopt.passes.fidelity  # imported before the baseline is taken
import numpy as np
keras = import_keras()
# The framework's own start-up (TensorFlow's runtime, the predict machinery) is part of the baseline.
_warm = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
_warm.predict(np.zeros((1, 4), "float32"), verbose=0)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

# The model's own library (keras-hub for its models) is framework too: imported before the baseline,
# its import cost measured and reported on its own.
before_preload = status("VmRSS:")
for module in filter(None, sys.argv[5].split(",")):
    __import__(module)
baseline = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the high-water mark: the peak below is shrink's own
src, out, data, samples = sys.argv[1], sys.argv[2], sys.argv[3] or None, int(sys.argv[4])
result = kmemopt.shrink(src, out, quantize="int8", data=data, samples=samples, force=True)
peak = status("VmHWM:")
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print("RESULT" + json.dumps({"baseline": baseline, "peak": peak, "reload_child_peak": child,
                             "file_bytes": result.after.file_bytes, "preload_bytes": baseline - before_preload}))
"""


def _model_libraries(src: Path) -> str:
    """Libraries the model's classes come from, besides Keras (keras-hub), for the RSS child's baseline."""
    from kmemopt.load.archive import read_model_file
    from kmemopt.load.trust import mentions_keras_hub

    return "keras_hub" if mentions_keras_hub(read_model_file(src).config) else ""


def measure_rss(src: Path, out: Path, data, samples: int) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(src), str(out), str(data or ""), str(samples), _model_libraries(src)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(f"the RSS child failed: {proc.stderr[-1500:]}")


def _previous_rows() -> list[dict]:
    path = ROOT / "benchmarks" / "results.json"
    return json.loads(path.read_text()).get(KEY, []) if path.exists() else []


def _weights_bytes(model) -> int:
    return sum(int(np.prod(v.shape)) * 4 for v in model.weights)


def _fidelity_row(fid) -> dict:
    first = fid.outputs[0]
    return {
        "top1_agreement": fid.top1_agreement,
        "relative_l2_error": first.relative_l2_error,
        "cosine_similarity": first.cosine_similarity,
        "accuracy_before": fid.accuracy_before,
        "accuracy_after": fid.accuracy_after,
        "fidelity_source": fid.source,
        "fidelity_samples": fid.samples,
    }


def run(log) -> list[dict]:
    import kmemopt
    from kmemopt._keras import import_keras
    from kmemopt.passes import fidelity as F

    keras = import_keras()
    only = {m.strip() for m in os.environ.get("KMEMOPT_BENCH_SHRINK_MODELS", "").split(",") if m.strip()}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kmemopt-bench-shrink-") as tmp:
        work = Path(tmp)
        for model_name, make, samples in MODELS:
            if only and model_name not in only:
                rows.extend(r for r in _previous_rows() if r["model"] == model_name)
                continue
            log(f"shrink: {model_name}")
            try:
                src, data = make(keras, work)
            except ImportError as exc:  # keras-hub is a dev extra
                log(f"  skipped: {exc}")
                continue
            stem = src.stem
            original = keras.models.load_model(src, compile=False)
            reference = work / f"{stem}.reference.keras"
            original.save(reference)  # plain Keras, no optimizer: the fair float32 reference
            ref_bytes = reference.stat().st_size
            weight_bytes = _weights_bytes(original)
            inputs = F.load_inputs(original, data, samples=None if data else samples)
            ref_out = F.predict(original, inputs)
            names = [f"output_{i}" for i in range(len(ref_out))]
            base = {
                "model": model_name,
                "params": int(original.count_params()),
                "reference_bytes": ref_bytes,
                "input_bytes": src.stat().st_size,
                "float32_weight_bytes": weight_bytes,
            }
            rows.append(
                {
                    **base,
                    "method": "float32 reference (plain Keras, no optimizer)",
                    "file_bytes": ref_bytes,
                    "ratio": 1.0,
                    "plain_keras": True,
                }
            )
            for method, options in METHODS:
                out = work / f"{stem}.{len(rows)}.keras"
                started = time.perf_counter()
                try:
                    r = kmemopt.shrink(src, out, data=data, samples=None if data else samples, force=True, **options)
                except Exception as exc:  # a row that says why beats a suite that stops
                    rows.append({**base, "method": method, "error": f"{type(exc).__name__}: {exc}"[:300]})
                    log(f"  {method}: FAILED {exc}")
                    continue
                row = {
                    **base,
                    "method": method,
                    "file_bytes": r.after.file_bytes,
                    "ratio": r.after.file_bytes / ref_bytes,
                    "plain_keras": not r.custom_layers,
                    "seconds": round(time.perf_counter() - started, 1),
                    **_fidelity_row(r.fidelity),
                }
                idle = [q for q in r.passes if q.name in ("quantize", "prune") and not q.applied and q.skipped]
                if idle:  # say why a method changed nothing (e.g. float16 on a model whose config lists no layers)
                    row["note"] = f"nothing applied: {idle[0].skipped[0].reason.value}"
                rows.append(row)
                log(f"  {method}: {row['ratio']:.3f}x, agreement {row['top1_agreement']}")
                out.unlink(missing_ok=True)
            # Keras's own int8 on the same model
            started = time.perf_counter()
            native = keras.models.load_model(src, compile=False)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                native.quantize("int8")
            native_path = work / f"{stem}.native.keras"
            native.save(native_path)
            fid = F.compare(names, ref_out, F.predict(native, inputs), inputs)
            row = {
                **base,
                "method": KERAS_NATIVE,
                "file_bytes": native_path.stat().st_size,
                "ratio": native_path.stat().st_size / ref_bytes,
                "plain_keras": True,
                "seconds": round(time.perf_counter() - started, 1),
                **_fidelity_row(fid),
            }
            try:  # does the file Keras wrote load back?
                keras.models.load_model(native_path)
            except Exception as exc:
                row["plain_keras"] = False
                row["note"] = (
                    f"the saved file does not reload with keras.models.load_model ({str(exc).splitlines()[0][:120]})"
                )
            rows.append(row)
            log(f"  keras native: {rows[-1]['ratio']:.3f}x")
            del native
            # LiteRT dynamic-range export (a different format: TFLite flatbuffer, not a Keras model)
            started = time.perf_counter()
            lite = work / f"{stem}.tflite"
            try:
                import tensorflow as tf

                original.export(str(lite), format="litert", verbose=False, optimizations=[tf.lite.Optimize.DEFAULT])
                rows.append(
                    {
                        **base,
                        "method": LITERT,
                        "file_bytes": lite.stat().st_size,
                        "ratio": lite.stat().st_size / ref_bytes,
                        "plain_keras": False,
                        "seconds": round(time.perf_counter() - started, 1),
                        "note": "TFLite flatbuffer; runs in the LiteRT interpreter, not Keras; fidelity not measured",
                    }
                )
                log(f"  litert: {rows[-1]['ratio']:.3f}x")
            except Exception as exc:
                rows.append({**base, "method": LITERT, "error": f"{type(exc).__name__}: {exc}"[:300]})
                log(f"  litert: FAILED {exc}")
            # shrink's own peak RSS, in a child process
            row = _rss_row(base, src, work / f"{stem}.rss.keras", data, samples)
            rows.append(row)
            if "error" not in row:
                log(
                    f"  rss: {row['peak_rss_above_baseline'] / 2**20:.0f} MiB above baseline = {row['rss_over_weights']:.2f}x"
                )
            del original
        if not only or SCALING in only:
            rows.extend(_scaling_rows(keras, work, log))
        else:
            rows.extend(r for r in _previous_rows() if r["model"].startswith(SCALING))
    return rows


def _scaling_rows(keras, work: Path, log) -> list[dict]:
    """shrink's peak RSS on one architecture at several widths (only the weights change)."""
    rows = []
    for width in SCALING_WIDTHS:
        src, _ = scaled_cnn(width)(keras, work)
        model = keras.models.load_model(src, compile=False)
        weight_bytes, params = _weights_bytes(model), int(model.count_params())
        del model
        base = {"model": f"{SCALING}, width {width}", "params": params, "float32_weight_bytes": weight_bytes}
        row = _rss_row(base, src, work / f"{src.stem}.rss.keras", None, 8)
        rows.append(row)
        if "error" not in row:
            log(
                f"  {base['model']}: {weight_bytes / 2**20:.0f} MiB weights, rss {row['peak_rss_above_baseline'] / 2**20:.0f} MiB"
            )
        src.unlink(missing_ok=True)
    return rows


def _rss_row(base: dict, src: Path, out: Path, data, samples: int) -> dict:
    """The peak-RSS row of `kmemopt shrink --quantize int8` on `src` (measured in a child process)."""
    method = "kmemopt int8 (portable): shrink peak RSS"
    try:
        rss = measure_rss(src, out, data, samples)
    except Exception as exc:  # a row that says why beats a suite that stops
        return {**base, "method": method, "error": str(exc)[:300]}
    above = rss["peak"] - rss["baseline"]
    return {
        **base,
        "method": method,
        "peak_rss_above_baseline": above,
        "rss_over_weights": above / base["float32_weight_bytes"],
        "baseline_rss": rss["baseline"],
        "reload_child_peak_rss": rss["reload_child_peak"],
        "library_import_bytes": rss.get("preload_bytes", 0),
    }


def scaling_fit(rows: list[dict]) -> tuple[float, float] | None:
    """Least-squares line through the scaling rows: peak above baseline = fixed + slope x weights."""
    points = [
        (r["float32_weight_bytes"], r["peak_rss_above_baseline"])
        for r in rows
        if r["model"].startswith(SCALING) and "peak_rss_above_baseline" in r
    ]
    if len(points) < 2:
        return None
    x, y = np.array(points, dtype=float).T
    slope, fixed = np.polyfit(x, y, 1)
    return float(fixed), float(slope)


# --------------------------------------------------------------------------------------------- report


def _pct(v):
    return "-" if v is None else f"{v:.2%}"


def _mib(v):
    return "-" if v is None else f"{v / 2**20:,.2f}"


def markdown(rows: list[dict]) -> str:
    out = [
        "File size against the same model re-saved by plain Keras without its optimizer (the fair float32",
        "reference), and fidelity against the original: top-1 agreement and relative L2 error of the outputs,",
        "accuracy before/after on held-out digits where there are labels (synthetic inputs otherwise).",
        'kmemopt rows are `kmemopt shrink MODEL --quantize int8` (and so on); "portable" files load with plain',
        '`keras.models.load_model`, "custom layers" files after `import kmemopt`. Reproduce: `make bench SUITE=shrink`.',
        "",
        '"Plain Keras": the file reloads with `keras.models.load_model` (checked in a fresh process for kmemopt\'s rows).',
        "MobileNetV2, ResNet50 and VGG16 carry random weights (BatchNorm statistics set from one synthetic batch) and are",
        "compared on 8 synthetic images: their 1000-way outputs are nearly uniform, so top-1 agreement flips on tiny",
        "changes; the relative L2 error is the better measure there. The digits rows use real held-out data.",
        "",
        "| Model | Method | File (MiB) | Ratio | Plain Keras | Top-1 agreement | Rel. L2 | Accuracy before → after |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]
    rss_rows, scaling_rows = [], []
    for r in rows:
        if r["model"].startswith(SCALING):
            scaling_rows.append(r)
            continue
        if "peak_rss_above_baseline" in r or r["method"].endswith("peak RSS"):
            rss_rows.append(r)
            continue
        if "error" in r:
            out.append(f"| {r['model']} | {r['method']} | - | - | - | - | - | failed: {r['error']} |")
            continue
        acc = "-"
        if r.get("accuracy_before") is not None:
            acc = f"{_pct(r['accuracy_before'])} → {_pct(r['accuracy_after'])}"
        rel = "-" if r.get("relative_l2_error") is None else f"{r['relative_l2_error']:.4f}"
        out.append(
            f"| {r['model']} | {r['method']} | {_mib(r['file_bytes'])} | {r['ratio']:.3f}x | "
            f"{'yes' if r.get('plain_keras') else 'no'} | {_pct(r.get('top1_agreement'))} | {rel} | {acc} |"
        )
    notes = [r for r in rows if r.get("note")]
    if notes:
        out += [""] + [f"- {r['model']}, {r['method']}: {r['note']}." for r in notes]
    if rss_rows:
        measured = [r for r in rss_rows if "error" not in r]
        met = [r for r in measured if r["rss_over_weights"] <= RSS_GOAL]
        out += [
            "",
            "`shrink`'s own peak RSS (`--quantize int8`, fidelity included), above the process's RSS after importing",
            "Keras and one tiny predict, against the model's float32 weight bytes. The fresh-process reload check runs",
            "in a child (its own peak listed separately). For a keras-hub model the baseline also includes importing",
            "keras_hub (its import alone is listed in the last column), as it includes importing Keras.",
            f"Goal: at most {RSS_GOAL}x the float32 weights; met on {len(met)} of {len(measured)} models measured.",
            "Small models are dominated by the framework's fixed cost (traced functions, kernels), not their weights.",
            "",
            "| Model | float32 weights (MiB) | shrink peak above baseline (MiB) | × weights | "
            f"≤ {RSS_GOAL}x | reload child peak, absolute (MiB) | library import in the baseline (MiB) |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for r in rss_rows:
            if "error" in r:
                out.append(
                    f"| {r['model']} | {_mib(r['float32_weight_bytes'])} | failed: {r['error']} | - | - | - | - |"
                )
                continue
            library = r.get("library_import_bytes") or 0
            out.append(
                f"| {r['model']} | {_mib(r['float32_weight_bytes'])} | {_mib(r['peak_rss_above_baseline'])} | "
                f"{r['rss_over_weights']:.2f}x | {'yes' if r['rss_over_weights'] <= RSS_GOAL else 'no'} | "
                f"{_mib(r['reload_child_peak_rss'])} | {_mib(library) if library else '-'} |"
            )
    if scaling_rows:
        fit = scaling_fit(scaling_rows)
        out += [
            "",
            "The same measurement on one plain convolutional network at several widths: the graph (and so the",
            "framework's cost of tracing and running it) stays the same, only the weights grow.",
        ]
        if fit is not None:
            fixed, slope = fit
            out.append(
                f"Least-squares fit: peak above baseline = {fixed / 2**20:.0f} MiB + {slope:.2f} x the float32 weights "
                f"(the part that grows with the model is {'within' if slope <= RSS_GOAL else 'above'} the "
                f"{RSS_GOAL}x goal)."
            )
        out += [
            "",
            "| Model | params | float32 weights (MiB) | shrink peak above baseline (MiB) | × weights |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in scaling_rows:
            if "error" in r:
                out.append(f"| {r['model']} | {r['params']:,} | {_mib(r['float32_weight_bytes'])} | failed | - |")
                continue
            out.append(
                f"| {r['model']} | {r['params']:,} | {_mib(r['float32_weight_bytes'])} | "
                f"{_mib(r['peak_rss_above_baseline'])} | {r['rss_over_weights']:.2f}x |"
            )
    return "\n".join(out) + "\n"
