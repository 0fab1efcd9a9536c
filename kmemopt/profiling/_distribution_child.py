"""The child of `profiling.distribution.verify`: the model distributed for real by Keras on JAX.

Runs through `kmemopt.sandbox` with KERAS_BACKEND=jax, JAX_PLATFORMS=cpu and
XLA_FLAGS=--xla_force_host_platform_device_count=N (JAX on a CPU then shows N devices). Under
`keras.distribution.set_distribution(DataParallel | ModelParallel(LayoutMap))` it loads the model
(after kmemopt's checks, weights and all) and builds its optimizer, then sums each device's
addressable shard bytes (`v.value.addressable_shards`, `shard.data.nbytes`) of the weights, the
trainable weights and the optimizer's variables; then compiles, sharded, the forward and backward
passes with the gradients in their weights' layout (as the optimizer's update consumes them; XLA left
free may split a gradient further), the inference step and the training step (the state donated,
its layouts kept as Keras's JAX trainer keeps them, the batch split over the "batch" axis), and reads
XLA's per-device `memory_analysis()` of each; and, for scale, the same forward and backward passes on
one device at the per-device batch with nothing sharded.
"""

from __future__ import annotations

import time
from typing import Any


def verify_in_child(request: dict[str, Any], arrays: list) -> tuple[dict[str, Any], list]:
    import jax
    import keras
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
    from keras import distribution as kd
    from keras import tree

    from kmemopt.api import load_model
    from kmemopt.load.archive import read_model_file
    from kmemopt.load.build import make_optimizer
    from kmemopt.profiling._child import _as_model_input, output_losses, target_spec
    from kmemopt.profiling.dtypes import itemsize
    from kmemopt.profiling.static import _optimizer_identifier
    from kmemopt.profiling.xla import XlaStep

    started = time.perf_counter()
    n = int(request["devices"])
    devices = kd.list_devices()
    if len(devices) != n:
        raise RuntimeError(f"JAX shows {len(devices)} devices, {n} were asked for (XLA_FLAGS not applied?)")
    batch_axis, model_axis = request["mesh"]
    if request["kind"] == "data":
        dist = kd.DataParallel(devices=devices)
    else:
        mesh = kd.DeviceMesh((batch_axis, model_axis), ("batch", "model"), devices)
        layout_map = kd.LayoutMap(mesh)
        for pattern, axes in request["rules"]:
            layout_map[pattern] = tuple(axes)
        dist = kd.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    jax_mesh = dist.device_mesh.backend_mesh

    path = request["path"]
    model_file = read_model_file(path)
    ident, _ = _optimizer_identifier(model_file, request.get("optimizer"))
    loss_config = (model_file.compile_config or {}).get("loss")
    with dist.scope():
        model = load_model(path, compile=False, lean=False)
        optimizer = make_optimizer(ident)
        if getattr(model.dtype_policy, "name", "") == "mixed_float16" and not isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer
        ):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)

    names = [str(d.id) for d in jax.devices()]

    def shard_sums(variables) -> dict[str, int]:
        out = dict.fromkeys(names, 0)
        seen: set[int] = set()
        for v in variables:
            if id(v) in seen:
                continue
            seen.add(id(v))
            for shard in v.value.addressable_shards:
                out[str(shard.device.id)] += int(shard.data.nbytes)
        return out

    layouts = {}
    for v in list(model.weights) + list(optimizer.variables):
        layouts[str(v.path)] = [a if a is None or isinstance(a, str) else list(a) for a in v.value.sharding.spec]
    measured = {
        "weights": shard_sums(model.weights),
        "trainable": shard_sums(model.trainable_variables),
        "optimizer": shard_sums(optimizer.variables),
    }

    def data_sharding(rank: int) -> NamedSharding:
        return NamedSharding(jax_mesh, P("batch", *([None] * (rank - 1))))

    def struct(shape, dtype) -> jax.ShapeDtypeStruct:
        shape = tuple(int(d) for d in shape)
        return jax.ShapeDtypeStruct(shape, jax.dtypes.canonicalize_dtype(dtype), sharding=data_sharding(len(shape)))

    batch = int(request["batch_size"])
    x = _as_model_input(model, {name: struct((batch, *shape[1:]), dtype) for name, shape, dtype in request["inputs"]})
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    ov = [v.value for v in optimizer.variables]

    def shardings(values) -> list:
        return [a.sharding for a in values]

    def infer(tv, ntv, x):
        return model.stateless_call(tv, ntv, x, training=False)[0]

    with dist.scope():
        outputs = jax.eval_shape(infer, tv, ntv, x)
        losses, _ = output_losses(keras, model, outputs, loss_config)
        targets = [struct(*target_spec(one, tuple(y.shape))) for y, one in zip(tree.flatten(outputs), losses)]
        fns = [keras.losses.get(one) if isinstance(one, str) else one for one in losses]

        def loss_of(tv, ntv, x, y):
            pred, new_ntv = model.stateless_call(tv, ntv, x, training=True)
            total = 0.0
            for fn, target, out in zip(fns, y, tree.flatten(pred), strict=True):
                total = total + keras.ops.mean(fn(target, out))
            return total, new_ntv

        def grads_only(tv, ntv, x, y):
            return jax.grad(lambda t: loss_of(t, ntv, x, y)[0])(tv)

        def train(tv, ntv, ov, x, y):
            (value, new_ntv), grads = jax.value_and_grad(loss_of, has_aux=True)(tv, ntv, x, y)
            new_tv, new_ov = optimizer.stateless_apply(ov, grads, tv)
            return value, new_tv, new_ntv, new_ov

        # The gradients laid out as the update consumes them (their weights' layout): the step's outputs
        # are then each device's gradient shards, its temporaries the activations and workspace of the
        # forward and backward passes.
        backward = jax.jit(grads_only, out_shardings=shardings(tv)).lower(tv, ntv, x, targets).compile()
        gradient_bytes = dict.fromkeys(names, 0)
        for sharding, g in zip(jax.tree.leaves(backward.output_shardings), tv, strict=True):
            local = sharding.shard_shape(g.shape)
            size = itemsize(str(g.dtype))
            count = 1
            for dim in local:
                count *= int(dim)
            for d in sharding.addressable_devices:
                gradient_bytes[str(d.id)] += count * size
        measured["gradients"] = gradient_bytes
        inference = jax.jit(infer).lower(tv, ntv, x).compile()
        replicated = NamedSharding(jax_mesh, P())
        training = (
            jax.jit(
                train,
                donate_argnums=(0, 1, 2),
                out_shardings=(replicated, shardings(tv), shardings(ntv), shardings(ov)),
            )
            .lower(tv, ntv, ov, x, targets)
            .compile()
        )
    # The same forward and backward passes on one device at the per-device batch, nothing sharded: what
    # XLA gives one device when the batch is split and the activations are not (kmemopt's assumption).
    local = batch // int(batch_axis)

    def plain(shape, dtype) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(tuple(int(d) for d in shape), jax.dtypes.canonicalize_dtype(dtype))

    x_one = _as_model_input(
        model, {name: plain((local, *shape[1:]), dtype) for name, shape, dtype in request["inputs"]}
    )
    y_one = [plain((local, *t.shape[1:]), t.dtype) for t in targets]
    single = (
        jax.jit(grads_only)
        .lower([plain(a.shape, a.dtype) for a in tv], [plain(a.shape, a.dtype) for a in ntv], x_one, y_one)
        .compile()
    )
    return {
        "devices": names,
        "measured": measured,
        "layouts": layouts,
        "xla": {
            "inference": XlaStep.from_analysis(inference.memory_analysis()).to_dict(),
            "training": XlaStep.from_analysis(training.memory_analysis()).to_dict(),
            "backward": XlaStep.from_analysis(backward.memory_analysis()).to_dict(),
            "backward_one_device": XlaStep.from_analysis(single.memory_analysis()).to_dict(),
        },
        "platform": jax.default_backend(),
        "seconds": time.perf_counter() - started,
    }, []
