"""XLA's own accounting of the compiled steps, on the JAX backend: a second estimate beside kmemopt's.

The inference step (`model.stateless_call`, training=False) and a training step (forward, loss,
`jax.value_and_grad`, `optimizer.stateless_apply`, the state donated as Keras's JAX trainer donates it)
are lowered with `jax.ShapeDtypeStruct`s only and compiled; `compiled.memory_analysis()` then says
how many bytes XLA's buffer assignment gives the arguments (weights, optimizer state, the batch),
the outputs, the outputs that reuse an argument's buffer (aliased), and the temporaries (activations
kept for the backward pass, gradients, workspace). No weight is allocated: the model is the
unallocated one the static profile built, and tracing runs inside `keras_compat.variables.unallocated`.

What XLA counts is the compiled program's buffers: the same quantity as kmemopt's tensors (weights,
activations, gradients, optimizer slots, the batch), not the runtime's own costs (the process, the
compiled code on CPU, allocator slack). It holds on accelerators too (the buffer assignment is the
device's), where kmemopt's runtime terms (calibrated on TensorFlow's CPU runtime) do not.

Compiling costs time (seconds for small models, a minute or more for a MobileNetV2 training step on
a busy CPU): `KMEMOPT_XLA=0` skips it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

ENV_XLA = "KMEMOPT_XLA"  # "0" skips XLA's analysis on JAX


@dataclass(frozen=True)
class XlaStep:
    """One compiled step's buffers, from `Compiled.memory_analysis()` (bytes)."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written into an argument's (donated) buffer: counted once
    temp_bytes: int
    generated_code_bytes: int

    @property
    def total_bytes(self) -> int:
        """Every buffer the step holds at once by XLA's assignment: arguments, outputs not aliased to an
        argument, temporaries and generated code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.generated_code_bytes

    @classmethod
    def from_analysis(cls, stats: Any) -> XlaStep:
        return cls(
            argument_bytes=int(stats.argument_size_in_bytes),
            output_bytes=int(stats.output_size_in_bytes),
            alias_bytes=int(stats.alias_size_in_bytes),
            temp_bytes=int(stats.temp_size_in_bytes),
            generated_code_bytes=int(stats.generated_code_size_in_bytes),
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "argument_bytes": self.argument_bytes,
            "output_bytes": self.output_bytes,
            "alias_bytes": self.alias_bytes,
            "temp_bytes": self.temp_bytes,
            "generated_code_bytes": self.generated_code_bytes,
            "total_bytes": self.total_bytes,
        }


@dataclass(frozen=True)
class XlaEstimate:
    """XLA's analysis of both steps at one batch size, and kmemopt's estimate of the same tensors.

    `kmemopt_*_tensor_bytes` are kmemopt's peaks without its runtime terms (what XLA does not count);
    `compared` gives kmemopt's figure as a ratio of XLA's (1.10: kmemopt counts 10 % more)."""

    batch_size: int
    platform: str
    loss: str
    inference: XlaStep
    training: XlaStep
    seconds: float
    kmemopt_inference_tensor_bytes: int | None = None
    kmemopt_training_tensor_bytes: int | None = None

    @property
    def inference_bytes(self) -> int:
        return self.inference.total_bytes

    @property
    def training_bytes(self) -> int:
        return self.training.total_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "platform": self.platform,
            "loss": self.loss,
            "inference_bytes": self.inference_bytes,
            "training_bytes": self.training_bytes,
            "inference": self.inference.to_dict(),
            "training": self.training.to_dict(),
            "seconds": round(self.seconds, 2),
            "compared": {
                "kmemopt_inference_tensor_bytes": self.kmemopt_inference_tensor_bytes,
                "kmemopt_training_tensor_bytes": self.kmemopt_training_tensor_bytes,
                "inference_ratio": _ratio(self.kmemopt_inference_tensor_bytes, self.inference_bytes),
                "training_ratio": _ratio(self.kmemopt_training_tensor_bytes, self.training_bytes),
            },
        }


def _ratio(ours: int | None, xla: int) -> float | None:
    return round(ours / xla, 3) if ours is not None and xla > 0 else None


def wanted(model_file: Any) -> bool:
    """Whether a profile makes XLA's analysis by default: on JAX, for a model file, unless KMEMOPT_XLA=0."""
    if model_file is None or os.environ.get(ENV_XLA, "1") == "0":
        return False
    import keras

    return keras.backend.backend() == "jax"


def xla_estimate(
    model,
    inputs: dict[str, tuple[tuple[int | None, ...], str]],
    batch_size: int,
    optimizer: Any,
    loss_config: Any = None,
) -> XlaEstimate:
    """Compile the model's inference and training steps from shapes alone and read XLA's buffer sizes.

    `inputs`: {name: (shape with the batch None, dtype)}, as the static profile resolved them;
    `optimizer`: a name, config or Optimizer, built over the model unallocated; `loss_config`: the
    file's compiled loss (else a default from each output's last layer, as the measuring child picks).
    Example: xla_estimate(model, {"x": ((None, 16), "float32")}, 8, "adam").inference_bytes
    """
    import jax
    import keras
    from keras import tree

    from kmemopt.keras_compat.variables import unallocated
    from kmemopt.profiling._child import _as_model_input, _loss_name, output_losses, target_spec

    started = time.perf_counter()

    def struct(shape, dtype) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(tuple(int(d) for d in shape), jax.dtypes.canonicalize_dtype(dtype))

    def structs(variables) -> list:
        return [struct(v.shape, v.dtype) for v in variables]

    x = _as_model_input(
        model, {name: struct((batch_size,) + tuple(shape[1:]), dtype) for name, (shape, dtype) in inputs.items()}
    )
    trainable, non_trainable = structs(model.trainable_variables), structs(model.non_trainable_variables)
    opt = _built_optimizer(keras, optimizer, model)
    opt_vars = structs(opt.variables)

    def infer(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    with unallocated():  # a variable created while tracing stays unallocated too
        outputs = jax.eval_shape(infer, trainable, non_trainable, x)
        losses, _ = output_losses(keras, model, outputs, loss_config)
        flat = tree.flatten(outputs)
        targets = [struct(*target_spec(one, tuple(y.shape))) for y, one in zip(flat, losses, strict=True)]
        fns = [keras.losses.get(one) if isinstance(one, str) else one for one in losses]

        def train(trainable, non_trainable, opt_vars, x, y):
            def loss_of(trainable):
                pred, new_non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
                total = 0.0
                for fn, target, out in zip(fns, y, tree.flatten(pred), strict=True):
                    total = total + keras.ops.mean(fn(target, out))
                return total, new_non_trainable

            (value, new_non_trainable), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
            new_trainable, new_opt_vars = opt.stateless_apply(opt_vars, grads, trainable)
            return value, new_trainable, new_non_trainable, new_opt_vars

        inference = jax.jit(infer).lower(trainable, non_trainable, x).compile()
        # The state is donated, as Keras's JAX trainer donates it: updated weights and slots reuse its buffers.
        training = (
            jax.jit(train, donate_argnums=(0, 1, 2)).lower(trainable, non_trainable, opt_vars, x, targets).compile()
        )
    names = [_loss_name(one) for one in losses]
    return XlaEstimate(
        batch_size=batch_size,
        platform=jax.default_backend(),
        loss=names[0] if len(set(names)) == 1 else ", ".join(names),
        inference=XlaStep.from_analysis(inference.memory_analysis()),
        training=XlaStep.from_analysis(training.memory_analysis()),
        seconds=time.perf_counter() - started,
    )


def _built_optimizer(keras, identifier: Any, model):
    """The optimizer the static profile counts (profiling.optimizer.optimizer_state), built unallocated:
    a LossScaleOptimizer around it for a mixed_float16 model, as Keras's compile wraps it."""
    from kmemopt.keras_compat.optimizer import use_backend_neutral_methods
    from kmemopt.keras_compat.variables import unallocated
    from kmemopt.load.build import make_optimizer

    optimizer = make_optimizer(identifier)
    if getattr(model.dtype_policy, "name", "") == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    for opt in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if opt is not None:
            use_backend_neutral_methods(opt)
    with unallocated(allow_constants=True):
        optimizer.build(model.trainable_variables)
    return optimizer
