"""The planner's own strategies: each a `Strategy` (strategy.py) that changes the model spec only.

None of them computes a saving: the planner prices the spec each returns (pricing.py). Structured
channel pruning joins them when `kmemopt.passes.channels` provides `ChannelPruning`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kmemopt.plan.strategy import Cost, ModelSpec, Setting, Strategy

TRAIN = frozenset({"train"})
INFER = frozenset({"infer"})
BOTH = frozenset({"train", "infer"})
OPTIMIZERS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("sgd", "SGD", {"momentum": 0.9}, "keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)"),
    ("adafactor", "Adafactor", {}, "keras.optimizers.Adafactor()"),
    ("lion", "Lion", {}, "keras.optimizers.Lion(learning_rate=1e-4)"),
    ("adam", "Adam", {}, "keras.optimizers.Adam()"),
)


LEAVES_CODE = (
    "def leaves(m, prefix=''):  # (path, layer), nested models expanded\n"
    "    for layer in m.layers:\n"
    "        if isinstance(layer, keras.Model):\n"
    "            yield from leaves(layer, prefix + layer.name + '/')\n"
    "        else:\n"
    "            yield prefix + layer.name, layer\n"
)


def _optimizer_name(spec: ModelSpec) -> str:
    config = spec.optimizer_config
    if config is None:
        return "Adam"
    if isinstance(config, str):
        return config
    return str(config.get("class_name", "Adam"))


@dataclass
class BatchSize:
    """A smaller batch; in training, with gradient accumulation to keep the effective batch."""

    name: str = "batch_size"
    phases: frozenset[str] = BOTH
    applies_to_file: bool = True  # the accumulation steps (the batch size is fit's argument)
    max_halvings: int = 6

    def settings(self, spec: ModelSpec, phase: str) -> Iterable[Setting]:
        b = spec.batch_size
        sizes: list[int] = []
        while b > 1 and len(sizes) < self.max_halvings:
            b = max(1, b // 2)
            sizes.append(b)
        for b in sizes:
            if phase == "train" and spec.batch_size % b == 0:
                k = spec.batch_size // b
                yield Setting(
                    self.name,
                    {"batch_size": b, "gradient_accumulation_steps": k},
                    f"batch {b} x {k} accumulation steps",
                    penalty=0.25 * math.log2(k),  # compute only: more, smaller steps
                )
            yield Setting(
                self.name,
                {"batch_size": b, "gradient_accumulation_steps": None},
                f"batch {b}" + (" (effective batch smaller)" if phase == "train" else ""),
                penalty=(2.0 if phase == "train" else 0.0) + 0.25 * math.log2(spec.batch_size / b),
            )

    def apply(self, spec: ModelSpec, setting: Setting) -> ModelSpec:
        return spec.with_changes(
            batch_size=int(setting.settings["batch_size"]),
            gradient_accumulation_steps=setting.settings.get("gradient_accumulation_steps"),
        )

    def cost(self, spec: ModelSpec, setting: Setting) -> Cost:
        k = setting.settings.get("gradient_accumulation_steps")
        b = setting.settings["batch_size"]
        if k:
            return Cost(
                extra_compute=f"{k} steps of batch {b} per optimizer update (same samples; smaller kernels run slower)",
                accuracy_risk="same effective batch; BatchNormalization statistics over batches of " + str(b),
                evidence="estimated",
            )
        return Cost(
            extra_compute=f"{math.ceil(spec.batch_size / b)}x more steps per epoch",
            accuracy_risk=None
            if "infer" in self._phase_hint(setting)
            else f"effective batch {b} instead of {spec.batch_size}: retune the learning rate",
            evidence="estimated",
        )

    @staticmethod
    def _phase_hint(setting: Setting) -> str:
        return "infer" if "effective" not in setting.label else "train"

    def keras_code(self, setting: Setting) -> str:
        b = setting.settings["batch_size"]
        k = setting.settings.get("gradient_accumulation_steps")
        if k:
            return (
                f"optimizer = keras.optimizers.Adam(gradient_accumulation_steps={k})  # your optimizer, with this argument\n"
                f"model.fit(x, y, batch_size={b})"
            )
        return f"model.fit(x, y, batch_size={b})  # or model.predict(x, batch_size={b})"


@dataclass
class MixedPrecision:
    """16-bit activations with float32 master weights (`mixed_float16` adds loss scaling)."""

    name: str = "mixed_precision"
    phases: frozenset[str] = BOTH
    applies_to_file: bool = True

    def settings(self, spec: ModelSpec, phase: str) -> Iterable[Setting]:
        if spec.dtype_policy:
            return
        yield Setting(self.name, {"policy": "mixed_bfloat16"}, "mixed_bfloat16", penalty=1.0)
        yield Setting(self.name, {"policy": "mixed_float16"}, "mixed_float16 (loss scaling)", penalty=1.1)

    def apply(self, spec: ModelSpec, setting: Setting) -> ModelSpec:
        return spec.with_changes(dtype_policy=setting.settings["policy"])

    def cost(self, spec: ModelSpec, setting: Setting) -> Cost:
        policy = setting.settings["policy"]
        risk = (
            "float16 range: loss scaling (LossScaleOptimizer, added by compile); keep a softmax output in float32"
            if policy == "mixed_float16"
            else "bfloat16 precision (8 bits of mantissa); fast only where the hardware has bfloat16"
        )
        return Cost(
            extra_compute="casts; faster on GPUs with tensor cores", accuracy_risk=risk, evidence="not measured"
        )

    def keras_code(self, setting: Setting) -> str:
        return f'keras.mixed_precision.set_global_policy("{setting.settings["policy"]}")  # before the model is built or loaded'


@dataclass
class Optimizer:
    """Another Keras optimizer: its real slots, built over the model."""

    name: str = "optimizer"
    phases: frozenset[str] = TRAIN
    applies_to_file: bool = True

    def settings(self, spec: ModelSpec, phase: str) -> Iterable[Setting]:
        current = _optimizer_name(spec).lower()
        for key, class_name, config, _code in OPTIMIZERS:
            if class_name.lower() == current:
                continue
            label = class_name + (f" (momentum {config['momentum']})" if "momentum" in config else "")
            yield Setting(self.name, {"optimizer": key, "class_name": class_name, "config": config}, label, penalty=2.0)

    def apply(self, spec: ModelSpec, setting: Setting) -> ModelSpec:
        s = setting.settings
        return spec.with_changes(
            optimizer_config={"module": "keras.optimizers", "class_name": s["class_name"], "config": dict(s["config"])}
        )

    def cost(self, spec: ModelSpec, setting: Setting) -> Cost:
        return Cost(
            accuracy_risk=f"{_optimizer_name(spec)} -> {setting.settings['class_name']}: different training dynamics; "
            "retune the learning rate",
            evidence="not measured",
        )

    def keras_code(self, setting: Setting) -> str:
        code = next(c for k, _, _, c in OPTIMIZERS if k == setting.settings["optimizer"])
        return f"optimizer = {code}"


def weighted_leaves(spec_model) -> list[tuple[str, Any, int]]:
    """(path, layer, trainable params) of the model's leaf layers that train, in graph order."""
    from kmemopt.keras_compat.layers import model_leaves

    out = []
    for path, layer in model_leaves(spec_model):
        n = sum(math.prod(int(d) for d in v.shape) for v in layer.trainable_weights)
        if n:
            out.append((path, layer, n))
    return out


def frozen_pattern(paths: Iterable[str]) -> str:
    return "^(?:" + "|".join(re.escape(p) for p in paths) + ")$"


@dataclass
class Freeze:
    """Weights that do not train: no gradients, no slots, no activations kept below the first trainable layer.

    `pattern` (--freeze REGEX) freezes the matching layer paths; otherwise all but the last N weighted
    layers (`train_last`, or a few N the planner tries)."""

    model: Any = None  # the baseline variant's model (layer paths and sizes); set by the planner
    pattern: str | None = None
    train_last: int | None = None
    name: str = "freeze"
    phases: frozenset[str] = TRAIN
    applies_to_file: bool = True

    def settings(self, spec: ModelSpec, phase: str) -> Iterable[Setting]:
        if self.model is None:
            return
        leaves = weighted_leaves(self.model)
        total = sum(n for _, _, n in leaves) or 1
        if self.pattern is not None:
            rx = re.compile(self.pattern)
            frozen = [(p, n) for p, _, n in leaves if rx.search(p)]
            if frozen:
                yield self._setting(frozen, total, f"freeze layers matching {self.pattern!r}", self.pattern)
            return
        counts = (
            [self.train_last]
            if self.train_last
            else sorted({1, math.ceil(len(leaves) / 4), math.ceil(len(leaves) / 2)})
        )
        for keep in counts:
            if not 0 < keep < len(leaves):
                continue
            frozen = [(p, n) for p, _, n in leaves[: len(leaves) - keep]]
            yield self._setting(
                frozen, total, f"train the last {keep} weighted layer(s)", frozen_pattern(p for p, _ in frozen)
            )

    def _setting(self, frozen, total: int, label: str, pattern: str) -> Setting:
        params = sum(n for _, n in frozen)
        share = params / total
        return Setting(
            self.name,
            {"pattern": pattern, "layers": len(frozen), "frozen_params": params, "frozen_share": round(share, 4)},
            label,
            penalty=3.0 + 4.0 * share,
        )

    def apply(self, spec: ModelSpec, setting: Setting) -> ModelSpec:
        return spec.with_changes(frozen=(*spec.frozen, setting.settings["pattern"]))

    def cost(self, spec: ModelSpec, setting: Setting) -> Cost:
        s = setting.settings
        return Cost(
            not_trained=f"{s['layers']} layer(s), {s['frozen_params']:,} parameters ({s['frozen_share']:.0%}) frozen",
            accuracy_risk="fine-tuning only: the frozen layers keep their weights",
            evidence="not measured",
        )

    def keras_code(self, setting: Setting) -> str:
        pattern = setting.settings["pattern"]
        return (
            "import re\n" + LEAVES_CODE + "for path, layer in leaves(model):\n"
            f"    if re.search({pattern!r}, path):\n"
            "        layer.trainable = False  # then compile again"
        )


@dataclass
class Lora:
    """LoRA of rank r on every Dense/EinsumDense/Embedding (Keras's `enable_lora`; int8 layers too)."""

    model: Any = None
    ranks: tuple[int, ...] = (8,)  # each rank is one more build; memory barely depends on it
    name: str = "lora"
    phases: frozenset[str] = TRAIN
    # Keras 3.15 saves `lora_rank` but its loader zeroes both adapter matrices (all their gradients are
    # then zero): a loaded LoRA layer never trains, so LoRA is enabled in the script, after loading.
    applies_to_file: bool = False

    def settings(self, spec: ModelSpec, phase: str) -> Iterable[Setting]:
        from kmemopt.plan.pricing import lora_target

        if self.model is None or spec.lora_rank:
            return
        from kmemopt.keras_compat.layers import model_leaves

        targets = [layer for _, layer in model_leaves(self.model) if lora_target(layer)]
        if not targets:
            return
        frozen = sum(
            math.prod(int(d) for d in v.shape)
            for layer in targets
            for v in layer.trainable_weights
            if v.path.endswith(("kernel", "embeddings"))
        )
        for r in self.ranks:
            yield Setting(
                self.name,
                {"rank": r, "layers": len(targets), "frozen_params": frozen},
                f"LoRA rank {r} on {len(targets)} layer(s)",
                penalty=3.0,
            )

    def apply(self, spec: ModelSpec, setting: Setting) -> ModelSpec:
        return spec.with_changes(lora_rank=int(setting.settings["rank"]))

    def cost(self, spec: ModelSpec, setting: Setting) -> Cost:
        s = setting.settings
        return Cost(
            extra_compute="the merged kernel W + A@B is computed in every call",
            not_trained=f"kernels of {s['layers']} layer(s) ({s['frozen_params']:,} parameters) frozen, trained "
            f"through rank-{s['rank']} adapters",
            accuracy_risk="low-rank updates only",
            evidence="estimated",
        )

    def keras_code(self, setting: Setting) -> str:
        r = setting.settings["rank"]
        return (
            LEAVES_CODE + "for path, layer in leaves(model):\n"
            "    if type(layer) in (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding):\n"
            f"        layer.enable_lora({r})  # freezes the kernel; trains rank-{r} adapters"
        )


@dataclass
class Remat:
    """`keras.RematScope`: only mode "activations" runs on the TensorFlow backend (see docs/plan.md)."""

    name: str = "remat"
    phases: frozenset[str] = TRAIN
    applies_to_file: bool = False  # a scope at load time, not in the file

    def settings(self, spec: ModelSpec, phase: str) -> Iterable[Setting]:
        from kmemopt.plan.pricing import REMAT_MODES

        if spec.remat:
            return
        for mode in REMAT_MODES:
            yield Setting(self.name, {"mode": mode}, f'RematScope(mode="{mode}")', penalty=0.5)

    def apply(self, spec: ModelSpec, setting: Setting) -> ModelSpec:
        return spec.with_changes(remat=setting.settings["mode"])

    def cost(self, spec: ModelSpec, setting: Setting) -> Cost:
        return Cost(
            extra_compute="each layer's activation function runs again in the backward pass",
            accuracy_risk=None,
            evidence="estimated",
        )

    def keras_code(self, setting: Setting) -> str:
        mode = setting.settings["mode"]
        return f'with keras.RematScope(mode="{mode}"):  # layers made inside rematerialize\n    model = keras.models.load_model("model.keras")'


@dataclass
class WeightDtype:
    """Weights stored in int8/int4 (Keras's `model.quantize`) or float16, for inference (shrink's passes)."""

    model: Any = None
    name: str = "weight_dtype"
    phases: frozenset[str] = INFER
    applies_to_file: bool = False  # written by `kmemopt shrink`, which also measures fidelity

    def settings(self, spec: ModelSpec, phase: str) -> Iterable[Setting]:
        from kmemopt.keras_compat.layers import model_leaves
        from kmemopt.plan.pricing import QUANTIZABLE

        if spec.weight_dtype:
            return
        quantizable = self.model is not None and any(
            type(layer).__name__ in QUANTIZABLE and layer.weights for _, layer in model_leaves(self.model)
        )
        yield Setting(self.name, {"weights": "float16"}, "float16 weights", penalty=0.5)
        if quantizable:
            yield Setting(self.name, {"weights": "int8"}, "int8 weights (Dense/EinsumDense/Embedding)", penalty=1.0)
            yield Setting(self.name, {"weights": "int4"}, "int4 weights (Dense/EinsumDense/Embedding)", penalty=2.0)

    def apply(self, spec: ModelSpec, setting: Setting) -> ModelSpec:
        return spec.with_changes(weight_dtype=setting.settings["weights"])

    def cost(self, spec: ModelSpec, setting: Setting) -> Cost:
        return Cost(
            accuracy_risk="not measured: `kmemopt shrink -q "
            + setting.settings["weights"]
            + " --data d.npz` measures it",
            evidence="not measured",
        )

    def keras_code(self, setting: Setting) -> str:
        mode = setting.settings["weights"]
        if mode == "float16":
            return 'keras.config.set_dtype_policy("float16")  # before loading; or kmemopt shrink -q float16'
        return f'model.quantize("{mode}")'


def builtin_strategies(model, *, freeze: str | None = None, train_last: int | None = None) -> list[Strategy]:
    return [
        BatchSize(),
        MixedPrecision(),
        Remat(),
        Optimizer(),
        Lora(model=model),
        Freeze(model=model, pattern=freeze, train_last=train_last),
        WeightDtype(model=model),
    ]


def contributed_strategies() -> list[Strategy]:
    """Strategies other modules provide (structured channel pruning), when they are installed."""
    found: list[Strategy] = []
    try:
        from kmemopt.passes.channels import ChannelPruning  # type: ignore[import-not-found,attr-defined,unused-ignore]
    except ImportError:
        return found
    try:
        strategy = ChannelPruning()
    except TypeError:
        return found
    if isinstance(strategy, Strategy):
        found.append(strategy)
    return found
