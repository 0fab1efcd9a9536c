"""Per-device memory under keras.distribution, checked on JAX's own shards (8 virtual CPU devices).

For each architecture (built from its constructor, random weights, saved as a .keras file), kmemopt's
static profile is split over 8 devices (`kmemopt.profiling.distribution.per_device`) for
DataParallel and for ModelParallel with the auto (FSDP-style) layout on the default 1 x 8 mesh and on
a 2 x 4 mesh; then `verify` distributes the file for real with Keras's own `keras.distribution` on JAX
(XLA_FLAGS=--xla_force_host_platform_device_count=8, in a child) and sums each device's addressable
shards. A row gives kmemopt's per-device weights, gradients and optimizer bytes beside JAX's (they must
be equal), and kmemopt's per-device activation estimate (kept + backward transient) beside XLA's
temporaries of the sharded forward and backward passes, and its training-step tensors beside XLA's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

KEY = "distribution"
TITLE = "Per-device memory under keras.distribution (verified on JAX's shards)"
DEVICES = 8
CONFIGS = (("data", None), ("model", None), ("model", "2x4"))


def _models(keras):
    """(name, build, batch, seq_len): small inputs, so that 8 replicas and XLA's compiles fit a 2-core CPU."""

    def mobilenet():
        return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), classes=100)

    def resnet():
        return keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=100)

    def gpt2():
        import keras_hub

        return keras_hub.models.GPT2Backbone(
            vocabulary_size=8192,
            num_layers=2,
            num_heads=4,
            hidden_dim=256,
            intermediate_dim=1024,
            max_sequence_length=128,
        )

    return [
        ("MobileNetV2 96x96", mobilenet, 16, None),
        ("ResNet50 64x64", resnet, 16, None),
        ("GPT2Backbone (keras-hub, 2 layers, 256 wide)", gpt2, 8, 64),
    ]


def run(log) -> list[dict]:
    import kmemopt
    from kmemopt._keras import import_keras
    from kmemopt.profiling.distribution import distribute

    keras = import_keras()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, batch, seq_len in _models(keras):
            path = Path(tmp) / f"{name.split()[0]}.keras"
            build().save(path)
            result = kmemopt.profile(path, batch_size=batch, seq_len=seq_len)
            for kind, mesh in CONFIGS:
                started = time.time()
                log(f"distribution: {name} {kind} {mesh or ''}")
                try:
                    dist = distribute(result, path, devices=DEVICES, kind=kind, mesh=mesh, verify=True).distribution
                except Exception as exc:  # a row that says why, not a suite that stops
                    rows.append({"model": name, "kind": kind, "mesh": mesh, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                d = dist.per_device[0]
                v = dist.verified
                first = {k: next(iter(vals.values())) for k, vals in v.measured.items()}
                rows.append(
                    {
                        "model": name,
                        "kind": kind,
                        "mesh": "x".join(map(str, dist.mesh.shape)),
                        "batch": batch,
                        "batch_per_device": dist.batch_per_device,
                        "params": result.totals.params,
                        "sharded_weights": len(dist.layout.rules),
                        "param_bytes": d.param_bytes,
                        "param_bytes_jax": first["weights"],
                        "gradient_bytes": d.gradient_bytes,
                        "gradient_bytes_jax": first["gradients"],
                        "optimizer_bytes": d.optimizer_bytes,
                        "optimizer_bytes_jax": first["optimizer"],
                        "equal": v.equal,
                        "activation_bytes": v.compared["kmemopt_activation_bytes"],
                        "allreduce_pending_bytes": d.allreduce_pending_bytes,
                        "activation_bytes_xla": v.compared["xla_activation_bytes"],
                        "activation_ratio": v.compared["activation_ratio"],
                        "activation_bytes_xla_one_device": v.compared["xla_one_device_activation_bytes"],
                        "split_ratio": v.compared["split_ratio"],
                        "training_tensor_bytes": v.compared["kmemopt_training_tensor_bytes"],
                        "training_bytes_xla": v.xla["training"]["total_bytes"],
                        "training_ratio": v.compared["training_ratio"],
                        "seconds": round(time.time() - started, 1),
                    }
                )
    return rows


def _mib(n) -> str:
    return f"{n / 1024**2:,.2f}" if isinstance(n, (int, float)) else "-"


def markdown(rows: list[dict]) -> str:
    out = [
        "Each row: one architecture split over 8 devices, kmemopt's static per-device numbers beside what "
        "Keras's own `keras.distribution` holds on JAX (8 virtual CPU devices; `verify` in "
        "kmemopt/profiling/distribution.py). MiB per device. Weights, gradients and optimizer state must be "
        "equal (exact); activations (kept + backward transient + the local gradients awaiting their "
        "all-reduce over the batch axis, an estimate; under model parallel the outputs of layers whose kernel is "
        "sharded on its output axis counted at their slice) are compared with XLA's "
        "temporaries of the sharded forward and backward passes, the training step's tensors with XLA's "
        "buffers of the whole step (ratio = kmemopt / XLA). The split ratio is XLA's per-device temporaries "
        "over XLA's own for one device running the per-device batch unsharded: near 1, splitting the batch "
        "is all the distribution changes, and kmemopt's per-device error is its single-device error; below "
        "1, XLA splits activations over the model axis too.",
        "",
        "| model | kind | mesh | batch/device | sharded | weights (kmemopt / JAX) | gradients | optimizer "
        "| equal | activations (kmemopt / XLA) | of which all-reduce | ratio | XLA, 1 device at the per-device batch | split ratio "
        "| training step (kmemopt / XLA) | ratio | s |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | {r['kind']} | {r['mesh'] or '-'} | | | failed: {r['error'][:120]} |")
            continue
        out.append(
            f"| {r['model']} | {r['kind']} | {r['mesh']} | {r['batch_per_device']} | {r['sharded_weights']} "
            f"| {_mib(r['param_bytes'])} / {_mib(r['param_bytes_jax'])} "
            f"| {_mib(r['gradient_bytes'])} / {_mib(r['gradient_bytes_jax'])} "
            f"| {_mib(r['optimizer_bytes'])} / {_mib(r['optimizer_bytes_jax'])} | {'yes' if r['equal'] else 'NO'} "
            f"| {_mib(r['activation_bytes'])} / {_mib(r['activation_bytes_xla'])} "
            f"| {_mib(r.get('allreduce_pending_bytes'))} | {r['activation_ratio']} "
            f"| {_mib(r['activation_bytes_xla_one_device'])} | {r['split_ratio']} "
            f"| {_mib(r['training_tensor_bytes'])} / {_mib(r['training_bytes_xla'])} | {r['training_ratio']} "
            f"| {r['seconds']} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import json

    print(json.dumps(run(print), indent=1))
