"""The measuring child: `measure_in_child`, run by `kmemopt.sandbox` (memory limit, timeout, parent death).

Runs in its own process (started by measure.py) so that kmemopt's own process and the user's shell stay
small, and so the framework's memory can be measured from a clean start. It takes a JSON spec, runs the
phases one after another and returns one JSON result; progress goes to the parent as phase lines.

Phases, each measured on its own:
  baseline   import the framework, start its runtime, warm it up on a tiny model (one-time costs)
  load       kmemopt.api.load_model (allowlist + archive checks, safe_mode=True)
  inference  one predict step at the batch size
  training   one train step at the batch size (compiled loss, else a default from the output layer)
  layers     one eager forward pass that records every leaf layer's real output bytes

CPU peaks are the kernel's high-water mark (VmHWM), reset before each phase by writing "5" to
/proc/self/clear_refs; where that is not possible (not Linux, or clear_refs not writable, as in some
containers), a thread samples the resident set every 2 ms (psutil); KMEMOPT_MEMORY_METHOD=sampling
forces that path. Freed heap memory is handed back to the kernel (malloc_trim) before each reset, so
one phase's leftovers do not hide the next phase's growth.

The sampler is not memory_profiler's: its `memory_usage` on a function forks a sampling process from
this one (whose TensorFlow threads make a fork unsafe) and runs the function again when it got fewer
than five samples; on a pid it blocks until a timeout with no way to stop at a phase's end. What it
samples is the same `psutil.Process().memory_info().rss` read here.
"""

from __future__ import annotations

import os
import threading
import time

PROC_STATUS = "/proc/self/status"
CLEAR_REFS = "/proc/self/clear_refs"
ENV_METHOD = "KMEMOPT_MEMORY_METHOD"  # "sampling" forces the sampler where the high-water mark works
SAMPLE_S = 0.002


# --------------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        with open(PROC_STATUS) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    value = _status_kib("VmRSS")
    if value is not None:
        return value
    import psutil

    return psutil.Process().memory_info().rss


def _trim() -> None:
    from kmemopt.memory import release_memory

    release_memory()


class HighWaterMark:
    """The process's peak RSS since `reset()`: the kernel's VmHWM, else a sampling thread.

    `method="sampling"` (or KMEMOPT_MEMORY_METHOD=sampling) uses the sampler even where the kernel's
    high-water mark is available: the path other platforms take, testable here.
    """

    def __init__(self, method: str | None = None) -> None:
        forced = method or os.environ.get(ENV_METHOD) or None
        if forced not in (None, "sampling", "vmhwm"):
            from kmemopt.errors import UsageError

            raise UsageError(f"{ENV_METHOD} must be 'sampling' or 'vmhwm'. Received: {forced!r}.")
        self.method = "vmhwm" if forced != "sampling" and self._can_reset() else "sampling"
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _can_reset() -> bool:
        if _status_kib("VmHWM") is None:
            return False
        try:
            with open(CLEAR_REFS, "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        _trim()
        if self.method == "vmhwm":
            with open(CLEAR_REFS, "w") as fh:
                fh.write("5")
            return
        self._stop_thread()
        self._peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self._peak = max(self._peak, proc.memory_info().rss)
            self._stop.wait(SAMPLE_S)

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def peak(self) -> int:
        if self.method == "vmhwm":
            return max(_status_kib("VmHWM") or 0, rss_bytes())
        self._stop_thread()
        return max(self._peak, rss_bytes())


# --------------------------------------------------------------------------------------------- GPU


class GpuMeter:
    """Backend allocator peak and NVML figures for one GPU. Only built when the device is a GPU."""

    def __init__(self, backend: str, index: int) -> None:
        self.backend = backend
        self.index = index
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def configure(self) -> None:
        """Before any tensor: TensorFlow must not grab the whole card."""
        if self.backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if not gpus:
                from kmemopt.errors import UsageError

                raise UsageError(
                    "NVML sees a GPU but TensorFlow does not (a CPU-only TensorFlow build?); measure with "
                    "--device cpu, or set KERAS_BACKEND to a backend with GPU support (jax, torch)."
                )
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)

    def _tf_name(self) -> str:
        return "GPU:0"  # CUDA_VISIBLE_DEVICES narrows the process to the chosen card

    def reset(self) -> None:
        if self.backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.reset_memory_stats(self._tf_name())
        elif self.backend == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()
        # JAX cannot reset its allocator's peak: see allocator().

    def _jax_stats(self) -> dict:
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return (gpus[0].memory_stats() or {}) if gpus else {}

    def allocator(self) -> tuple[int, int]:
        """(current, peak) bytes of the backend's own allocator."""
        if self.backend == "tensorflow":
            import tensorflow as tf

            info = tf.config.experimental.get_memory_info(self._tf_name())
            return int(info["current"]), int(info["peak"])
        if self.backend == "torch":
            import torch

            return int(torch.cuda.memory_allocated()), int(torch.cuda.max_memory_allocated())
        stats = self._jax_stats()
        # JAX cannot reset its peak: a phase's peak is only known when it exceeds the earlier ones.
        return int(stats.get("bytes_in_use", 0)), int(stats.get("peak_bytes_in_use", 0))

    def nvml(self) -> dict[str, int]:
        nv = self._nvml
        mem = nv.nvmlDeviceGetMemoryInfo(self._handle)
        mine = 0
        try:
            for proc in nv.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory:
                    mine += int(proc.usedGpuMemory)
        except nv.NVMLError:
            pass
        return {"total_bytes": int(mem.total), "used_bytes": int(mem.used), "process_bytes": mine}


# --------------------------------------------------------------------------------------------- inputs


def _load_data(path: str | None):
    if not path:
        return None
    import numpy as np

    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return {"x": loaded}
    return {k: loaded[k] for k in loaded.files}


def make_inputs(model, specs: list[dict], batch: int, data, seed: int = 0) -> dict:
    import numpy as np

    from kmemopt.inputs import synthetic_array, vocabulary_size

    rng = np.random.default_rng(seed)
    out = {}
    vocab = vocabulary_size(model)
    for spec in specs:
        name, dims, dtype = spec["name"], [int(d) for d in spec["shape"][1:]], spec["dtype"]
        source = None
        if data is not None:
            source = data.get(name)
            if source is None and len(specs) == 1:
                source = data.get("x", next(iter(data.values())) if len(data) == 1 else None)
        if source is not None:
            reps = -(-batch // max(len(source), 1))
            arr = np.concatenate([source] * reps)[:batch] if reps > 1 else source[:batch]
            out[name] = np.asarray(arr).astype(dtype)
        else:
            out[name] = synthetic_array(rng, (batch, *dims), dtype, vocab)
    return out


def _as_model_input(model, arrays: dict):
    """The arrays in the structure the model is called with: a dict for dict-input models (keras-hub
    backbones), by name; a list, in the model's input order, for several inputs; else the one array."""
    from keras import tree

    values = list(arrays.values())
    from kmemopt.keras_compat.layers import inputs_struct

    struct = inputs_struct(model)
    if isinstance(struct, dict) and set(struct) == set(arrays):
        return {name: arrays[name] for name in struct}
    if struct is not None and not isinstance(struct, dict) and len(tree.flatten(struct)) == len(values) > 1:
        return tree.pack_sequence_as(struct, values)
    return values[0] if len(values) == 1 else values


def _compiled_loss(keras, config):
    """One loss from the file's compile config (already allowlist-checked by load_model), or None."""
    if config is None:
        return None
    try:
        return keras.losses.get(config)
    except (ValueError, TypeError, KeyError):
        return None


def _is_single(config) -> bool:
    return not isinstance(config, (list, tuple, dict)) or (isinstance(config, dict) and "class_name" in config)


def output_losses(keras, model, outputs, config) -> tuple[list, list[str]]:
    """One loss per flattened output, and where each came from ("compiled" or "default").

    The compile config's loss may be one loss for every output, a list (in output order) or a dict
    keyed by output name; an output it gives no usable loss gets the default for its own last layer.
    """
    from keras import tree

    flat = tree.flatten(outputs)
    if isinstance(outputs, dict):
        names = tree.flatten({k: k for k in outputs})
    else:
        names = list(getattr(model, "output_names", None) or [])
        names = names if len(names) == len(flat) else [str(i) for i in range(len(flat))]
    if _is_single(config):
        given = [config] * len(flat)
    elif isinstance(config, dict):
        given = [config.get(name) for name in names]
    else:
        given = list(config) + [None] * (len(flat) - len(config)) if len(config) <= len(flat) else list(config)
    losses, sources = [], []
    for i, _ in enumerate(flat):
        loss = _compiled_loss(keras, given[i]) if i < len(given) else None
        if loss is None:
            losses.append(default_loss(model, output_index=i, output_count=len(flat)))
            sources.append("default")
        else:
            losses.append(loss)
            sources.append("compiled")
    return losses, sources


def _loss_name(loss) -> str:
    if loss is None:
        return ""
    if isinstance(loss, str):
        return loss
    return getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__


def _output_layer(model, index: int):
    try:
        from kmemopt.keras_compat.layers import keras_history

        return keras_history(model.outputs[index]).operation
    except (AttributeError, IndexError, TypeError):
        return None


def default_loss(model, output_index: int | None = None, output_count: int = 1) -> str:
    """A loss that fits an output's last layer: softmax -> categorical CE, sigmoid -> binary CE, else MSE."""
    last = _output_layer(model, output_index) if output_index is not None and output_count > 1 else None
    if last is None:
        from kmemopt.keras_compat.layers import flatten_layers

        layers = [layer for layer in flatten_layers(model, include_self=False) if not layer._layers]
        last = layers[-1] if layers else None
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    if type(last).__name__ == "Softmax" or activation == "softmax":
        return "categorical_crossentropy"
    if activation == "sigmoid":
        return "binary_crossentropy"
    return "mean_squared_error"


def make_targets(model, outputs, loss, seed: int = 1):
    """Random targets shaped for each output's loss (`loss`: one loss, or one per flattened output),
    in the outputs' own structure."""
    import numpy as np
    from keras import tree

    rng = np.random.default_rng(seed)
    flat = tree.flatten(outputs)
    losses = list(loss) if isinstance(loss, (list, tuple)) else [loss] * len(flat)
    targets = []
    for y, one in zip(flat, losses, strict=True):
        name = _loss_name(one).lower()
        shape, dtype = target_spec(one, tuple(y.shape))
        if "sparse" in name:
            targets.append(rng.integers(0, max(int(y.shape[-1]), 1), size=shape).astype(dtype))
        elif "categorical" in name:
            idx = rng.integers(0, max(shape[-1], 1), size=shape[:-1])
            targets.append(np.eye(shape[-1], dtype=dtype)[idx])
        elif "binary" in name or "hinge" in name:
            targets.append(rng.integers(0, 2, size=shape).astype(dtype))
        else:
            targets.append(rng.standard_normal(shape).astype(dtype))
    if isinstance(outputs, dict):
        return tree.pack_sequence_as(outputs, targets)
    return targets[0] if len(targets) == 1 else targets


def target_spec(loss, output_shape: tuple[int, ...]) -> tuple[tuple[int, ...], str]:
    """The (shape, dtype) of the target `make_targets` makes for one output and its loss (XLA's
    analysis compiles a training step over targets of this shape, without making them)."""
    name = _loss_name(loss).lower()
    if "sparse" in name:
        return tuple(output_shape[:-1]), "int32"
    return tuple(output_shape), "float32"


# --------------------------------------------------------------------------------------------- phases


def _warm_up(keras) -> None:
    """One-time framework costs (kernel libraries, graph machinery) paid on a tiny model."""
    import numpy as np

    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inp)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(2, activation="softmax")(h)
    tiny = keras.Model(inp, out)
    tiny.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.zeros((2, 8, 8, 3), "float32")
    tiny.predict_on_batch(x)
    tiny.train_on_batch(x, np.eye(2, dtype="float32"))
    # The sequence families' code (recurrent loops, attention, embeddings) is framework cost too.
    tokens = keras.Input((4,), dtype="int32")
    h = keras.layers.Embedding(10, 8)(tokens)
    h = keras.layers.LayerNormalization()(h + keras.layers.MultiHeadAttention(2, 4)(h, h))
    h = keras.layers.LSTM(4)(h)
    seq = keras.Model(tokens, keras.layers.Dense(2, activation="softmax")(h))
    seq.compile(optimizer="adam", loss="categorical_crossentropy")
    t = np.zeros((2, 4), "int32")
    seq.predict_on_batch(t)
    seq.train_on_batch(t, np.eye(2, dtype="float32"))
    del seq
    # The load path's own imports (saving, HDF5, kmemopt's checks) are framework cost too.
    tiny.save("warmup.keras")
    del tiny
    from kmemopt.api import load_model

    again = load_model("warmup.keras", lean=False)
    again.predict_on_batch(x)
    del again
    os.remove("warmup.keras")


def _record_layers(model, x) -> dict[str, int]:
    """Bytes of every leaf layer's real outputs in one eager forward pass, keyed by layer path."""
    from keras import tree

    sizes: dict[str, int] = {}
    patched = []

    from kmemopt.keras_compat.layers import input_layer_class, model_leaves

    InputLayer = input_layer_class()

    def yield_leaf(layer, path):
        original = layer.call

        def call(*args, __original=original, __path=path, **kwargs):
            result = __original(*args, **kwargs)
            total = 0
            for t in tree.flatten(result):
                shape = getattr(t, "shape", None)
                dtype = getattr(t, "dtype", None)
                if shape is None or dtype is None:
                    continue
                n = 1
                for d in shape:
                    n *= int(d)
                total += n * _itemsize(dtype)
            sizes[__path] = sizes.get(__path, 0) + total
            return result

        layer.call = call
        patched.append(layer)

    for path, layer in model_leaves(model):
        if not isinstance(layer, InputLayer):
            yield_leaf(layer, path)
    try:
        model(x, training=False)
    finally:
        for layer in patched:
            try:
                del layer.call
            except AttributeError:
                pass
    return sizes


def _itemsize(dtype) -> int:
    from kmemopt.profiling.dtypes import itemsize

    return itemsize(getattr(dtype, "name", dtype))


def _phase(name: str) -> None:
    from kmemopt.sandbox import phase

    phase(name)


def run(spec: dict) -> dict:
    device = spec.get("device", "cpu")
    hwm = HighWaterMark()
    result: dict = {"device": device, "method": hwm.method, "pid": os.getpid(), "seconds": {}}

    _phase("baseline")
    hwm.reset()
    t0 = time.perf_counter()
    gpu = None
    if device == "gpu":
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        gpu = GpuMeter(backend, int(spec.get("gpu_index", 0)))
        if backend == "tensorflow":
            import tensorflow  # noqa: F401

            gpu.configure()
    from kmemopt._keras import import_keras

    keras = import_keras()
    result["backend"] = keras.backend.backend()
    # What loading this model imports is framework cost, not the model's: keras-hub (about 150 MiB)
    # is imported here, before the baseline, exactly when the load below would import it.
    from kmemopt.load.archive import read_model_file
    from kmemopt.load.trust import build_allowlist, mentions_keras_hub

    build_allowlist(keras_hub=mentions_keras_hub(read_model_file(spec["path"]).config))
    _warm_up(keras)
    _trim()
    baseline = rss_bytes()
    result["baseline_bytes"] = baseline
    result["baseline_peak_bytes"] = hwm.peak()
    result["seconds"]["baseline"] = time.perf_counter() - t0
    gpu_base = 0
    if gpu is not None:
        gpu_base = gpu.allocator()[0]
        result["nvml_baseline_bytes"] = gpu.nvml()["process_bytes"]

    def gpu_phase(name: str) -> None:
        if gpu is None:
            return
        current, peak = gpu.allocator()
        nv = gpu.nvml()
        result.setdefault("gpu", {})[name] = {
            "allocator_peak_bytes": max(peak - gpu_base, 0),
            "allocator_current_bytes": max(current - gpu_base, 0),
            "nvml_used_bytes": nv["used_bytes"],
            "nvml_process_bytes": nv["process_bytes"],
            "nvml_total_bytes": nv["total_bytes"],
        }

    _phase("load")
    hwm.reset()
    if gpu is not None:
        gpu.reset()
    t0 = time.perf_counter()
    from kmemopt.api import load_model

    custom = spec.get("custom_objects")
    # Weights allocated as keras.models.load_model does: the phases below measure what a user's own
    # script would see on top of them (shrink's lean loader would leave a different allocator state).
    model = load_model(spec["path"], custom_objects=custom, compile=False, lean=False)
    if keras.backend.backend() == "tensorflow":
        from kmemopt.passes.fidelity import check_tensorflow_names

        check_tensorflow_names(model)  # exit 3 with the name, not a failure deep inside tf.function
    result["load_peak_bytes"] = hwm.peak() - baseline
    _trim()
    result["load_bytes"] = rss_bytes() - baseline
    result["seconds"]["load"] = time.perf_counter() - t0
    gpu_phase("load")

    data = _load_data(spec.get("data"))
    runs = []
    for batch in spec["batch_sizes"]:
        row: dict = {"batch_size": batch}
        x = _as_model_input(model, make_inputs(model, spec["inputs"], batch, data))
        if "inference" in spec.get("phases", ["inference", "training"]):
            _phase(f"inference b={batch}")
            hwm.reset()
            if gpu is not None:
                gpu.reset()
            t0 = time.perf_counter()
            outputs = model.predict_on_batch(x)
            row["inference_peak_bytes"] = hwm.peak() - baseline
            row["inference_seconds"] = time.perf_counter() - t0
            gpu_phase(f"inference b={batch}")
        else:
            outputs = model.predict_on_batch(x)
        if "training" in spec.get("phases", ["inference", "training"]):
            _phase(f"training b={batch}")
            losses, sources = output_losses(keras, model, outputs, spec.get("loss"))
            y = make_targets(model, outputs, losses)
            loss = keras.tree.pack_sequence_as(outputs, losses) if len(losses) > 1 else losses[0]
            del outputs
            from kmemopt.load.build import make_optimizer

            model.compile(optimizer=make_optimizer(spec.get("optimizer") or "adam"), loss=loss)
            hwm.reset()
            if gpu is not None:
                gpu.reset()
            t0 = time.perf_counter()
            model.train_on_batch(x, y)
            row["training_peak_bytes"] = hwm.peak() - baseline
            row["training_seconds"] = time.perf_counter() - t0
            names = [_loss_name(one) for one in losses]
            row["loss"] = names[0] if len(set(names)) == 1 else ", ".join(names)
            row["losses"] = names
            row["loss_source"] = sources[0] if len(set(sources)) == 1 else "mixed"
            gpu_phase(f"training b={batch}")
            del y
        else:
            del outputs
        runs.append(row)
        del x
    result["runs"] = runs

    if spec.get("layers"):
        _phase("layers")
        batch = spec["batch_sizes"][0]
        x = _as_model_input(model, make_inputs(model, spec["inputs"], batch, data))
        result["layers"] = _record_layers(model, x)
        result["layers_batch_size"] = batch
    return result


def measure_in_child(request: dict, arrays: list) -> tuple[dict, list]:
    """The sandbox entry point: run the phases in the child's scratch folder (the warm-up writes a file)."""
    from kmemopt.sandbox import scratch_dir

    os.chdir(scratch_dir())
    return run(request), []
