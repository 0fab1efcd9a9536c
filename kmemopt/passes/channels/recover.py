"""Training a pruned model back: distillation from the original (inputs only) or fine-tuning (labels).

`distill` uses Keras's own `keras.distillation.Distiller` (Keras 3.12 and later) with the original
model as a frozen teacher and the student's supervised loss weighted 0: it needs inputs only. The
loss compares the outputs themselves: KL divergence where the model ends in a softmax, mean squared
error elsewhere. `finetune` compiles the pruned model with the original's own compile config
(`get_compile_config`) and trains it on the labels. Both hold out a split of the data, cut the
learning rate by 0.3x when the held-out loss stalls (`keras.callbacks.ReduceLROnPlateau`) and stop early
when it stops improving, keeping the best weights.

Distillation's learning rate is, unless given, the one the original was trained with (its optimizer's,
else its compile config's), else Adam's 1e-3: a pruned model recovers at the pace its weights were
learned at. On the digits CNN (sample_models) pruned 50%, three seeds each, test accuracy 99.11% before:
early stop alone at 1e-3 gave 97.56-98.22%; with the plateau cut at the model's own 2e-3,
98.89-99.11% (benchmarks/suite_prune.py measures the committed row). Training is seeded
(`keras.utils.set_random_seed(seed)`), so one command gives one model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from kmemopt.errors import UsageError


class Recovery(str, Enum):
    distill = "distill"
    finetune = "finetune"


@dataclass
class RecoveryResult:
    mode: str
    method: str  # what trained it, in words
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    learning_rate: float | None = None  # the starting rate (finetune: the compile config's)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "method": self.method,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "history": list(self.history),
            "learning_rate": self.learning_rate,
        }


def _ends_in_softmax(model: Any) -> bool:
    last = model.layers[-1] if model.layers else None
    if last is None:
        return False
    if type(last).__name__ == "Softmax":
        return True
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def _split(arrays: list[Any], held_out: float, seed: int) -> tuple[list[Any], list[Any]]:
    n = len(arrays[0])
    order = np.random.default_rng(seed).permutation(n)
    cut = n - max(1, int(round(n * held_out))) if held_out > 0 and n > 1 else n
    return [a[order[:cut]] for a in arrays], [a[order[cut:]] for a in arrays]


def recover(
    student: Any,
    teacher: Any,
    x: Any,
    y: Any = None,
    *,
    mode: Recovery | str = Recovery.distill,
    epochs: int = 5,
    batch_size: int = 32,
    held_out: float = 0.1,
    patience: int = 6,
    learning_rate: float | None = None,
    seed: int = 0,
    compile_config: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> RecoveryResult:
    """Train `student` (the pruned model) in place; `teacher` is the original and is not changed.

    `x` is one array or a list (one per model input); `compile_config` (finetune) defaults to the
    teacher's own `get_compile_config()`. `patience`: epochs without a better held-out loss before
    stopping; the learning rate is cut after a third of that. `learning_rate` (distill): None reads the
    teacher's (see the module docstring)."""
    from kmemopt._keras import import_keras

    keras = import_keras()
    mode = Recovery(mode)
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1. Received: {epochs}.")
    if patience < 1:
        raise UsageError(f"patience must be at least 1 epoch. Received: {patience}.")
    if learning_rate is not None and not learning_rate > 0:
        raise UsageError(f"--learning-rate must be a positive number. Received: {learning_rate!r}.")
    keras.utils.set_random_seed(seed)  # shuffling, dropout and the held-out split: one command, one model
    xs = [np.asarray(a) for a in x] if isinstance(x, (list, tuple)) else [np.asarray(x)]
    was_trainable = teacher.trainable  # the Distiller freezes the teacher, which is the caller's model
    say = progress or (lambda message: None)

    def on_epoch_end(epoch: int, logs: dict[str, Any] | None = None) -> None:
        shown = ", ".join(f"{k} {float(v):.4g}" for k, v in sorted((logs or {}).items()) if k.endswith("loss"))
        say(f"{mode.value} epoch {epoch + 1}/{epochs}: {shown}")

    def feed(arrays: list[Any]) -> Any:
        return arrays[0] if len(arrays) == 1 else list(arrays)

    fit_args: tuple[Any, ...]
    val: tuple[Any, ...] | None
    if mode is Recovery.finetune:
        if y is None:
            raise UsageError("--recover finetune needs labels (a 'y' array in --data); use --recover distill.")
        if compile_config is None and hasattr(teacher, "get_compile_config"):
            compile_config = teacher.get_compile_config()
        if not compile_config:
            raise UsageError(
                "--recover finetune trains with the model's own compile config, and this model was saved "
                "without one; use --recover distill."
            )
        train, held = _split([*xs, np.asarray(y)], held_out, seed)
        student.compile_from_config(compile_config)
        trainer, fit_args = student, (feed(train[:-1]), train[-1])
        val = (feed(held[:-1]), held[-1]) if len(held[-1]) else None
        rate = trained_learning_rate(student)[0]
        method = f"fine-tuning with the model's own compile config (learning rate {rate:g})"
    else:
        distillation = getattr(keras, "distillation", None)
        train, held = _split(xs, held_out, seed)
        loss = "kl_divergence" if _ends_in_softmax(teacher) else "mse"
        rate, source = (
            (learning_rate, "given") if learning_rate is not None else trained_learning_rate(teacher, compile_config)
        )
        if distillation is None:  # Keras before 3.12: a plain fit on the teacher's predictions
            targets = teacher.predict(feed(train), batch_size=batch_size, verbose=0)
            student.compile(optimizer=keras.optimizers.Adam(rate), loss=loss)
            trainer, fit_args = student, (feed(train), targets)
            val = (feed(held), teacher.predict(feed(held), batch_size=batch_size, verbose=0)) if len(held[0]) else None
            method = (
                f"fit on the original's predictions ({loss}), Adam at {rate:g} ({source}); "
                "keras.distillation is not available"
            )
        else:
            trainer = distillation.Distiller(
                teacher=teacher,
                student=student,
                distillation_losses=distillation.FeatureDistillation(loss=loss),
                student_loss_weight=0.0,
            )
            trainer.compile(optimizer=keras.optimizers.Adam(rate), loss=loss)
            fit_args = (feed(train),)
            val = (feed(held),) if len(held[0]) else None
            method = f"keras.distillation.Distiller, {loss} on the outputs, inputs only, Adam at {rate:g} ({source})"
    callbacks: list[Any] = [keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)]
    stopper = None
    if val is not None:
        stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        callbacks.append(stopper)
        plateau = plateau_callback(keras, trainer.optimizer, patience, rate)
        if plateau is not None:
            callbacks.append(plateau)
    try:
        history = trainer.fit(
            *fit_args,
            validation_data=val,
            epochs=epochs,
            batch_size=batch_size,
            callbacks=callbacks,
            verbose=0,
            shuffle=True,
        )
    finally:
        teacher.trainable = was_trainable
    rows = [
        {k: float(v[i]) for k, v in history.history.items()} for i in range(len(next(iter(history.history.values()))))
    ]
    stopped = bool(stopper is not None and stopper.stopped_epoch > 0)
    return RecoveryResult(mode.value, method, len(rows), stopped, rows, rate)


def plateau_callback(keras: Any, optimizer: Any, patience: int, rate: float) -> Any:
    """`ReduceLROnPlateau` (0.3x after a third of `patience` without a better held-out loss, down to
    rate / 100), or None for an optimizer whose rate is a schedule: it already decays, and Keras refuses
    to set a schedule's rate (the callback would fail on its first cut)."""
    if isinstance((optimizer.get_config() or {}).get("learning_rate"), dict):
        return None
    return keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=0.3, patience=max(1, patience // 3), min_lr=rate / 100
    )


def trained_learning_rate(model: Any, compile_config: dict[str, Any] | None = None) -> tuple[float, str]:
    """The learning rate `model` was trained with, and where it was read: its optimizer's configured
    rate (a schedule's initial rate), else its compile config's (`compile_config`, the file's, else the
    model's own), else Adam's default 1e-3."""
    optimizer = getattr(model, "optimizer", None)
    configs: list[tuple[Any, str]] = []
    if optimizer is not None and hasattr(optimizer, "get_config"):
        configs.append((optimizer.get_config(), "the model's optimizer"))
    if compile_config is None and hasattr(model, "get_compile_config"):
        compile_config = model.get_compile_config()
    compiled = (compile_config or {}).get("optimizer")
    if isinstance(compiled, dict):
        configs.append((compiled.get("config") or {}, "the model's compile config"))
    for config, source in configs:
        rate = config.get("learning_rate") if isinstance(config, dict) else None
        if isinstance(rate, dict):  # a serialized schedule: where it starts
            rate = (rate.get("config") or {}).get("initial_learning_rate")
        if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
            return float(rate), source
    return 1e-3, "Adam's default; the model carries no learning rate"
