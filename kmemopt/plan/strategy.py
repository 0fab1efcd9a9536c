"""The interface between `kmemopt plan` and the strategies it weighs (issue 14), pruning among them.

A strategy never guesses a saving. It says how a change alters the *model spec* (the architecture's
config, the optimizer, the batch, the dtype policy, what trains, ...); the planner rebuilds that spec
unallocated and runs the same static profile as `kmemopt profile` on it, so every predicted peak comes
from one estimator. A strategy also says what the change costs and how a user applies it.

Implementations: the planner's own strategies live in `kmemopt.plan`; structured channel pruning
(`kmemopt.passes.channels`) provides `ChannelPruning`, a `Strategy` whose `apply` returns the config
with the pruned widths (the widths depend only on the amount and the layer graph, not on which
channels go, so the prediction needs no weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class ModelSpec:
    """Everything the static profile needs to price a training or inference step.

    `model_config` is the Keras serialized model (`{"class_name", "config", ...}`, as in a `.keras`
    file's config.json) and is never mutated: strategies return a new spec (`with_changes`).
    """

    model_config: Mapping[str, Any]
    optimizer_config: Mapping[str, Any] | None
    batch_size: int
    dtype_policy: str | None = None  # a global policy ("mixed_float16"); None: as saved
    frozen: tuple[str, ...] = ()  # layer-path regexes whose weights do not train
    lora_rank: int | None = None
    gradient_accumulation_steps: int | None = None
    remat: str | None = None  # a keras.RematScope mode, or None
    weight_dtype: str | None = None  # inference: "int8", "int4", "float16" (shrink's passes)
    placement: Any = None  # plan.devices.Placement: the step spread over devices (--devices), or None
    extra: Mapping[str, Any] = field(default_factory=dict)  # strategy-specific, carried for the report

    def with_changes(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)


@dataclass(frozen=True)
class Cost:
    """What a strategy gives up, concretely; every field is optional and said only where it applies."""

    extra_compute: str | None = None  # "1 extra forward pass per step (remat: full)", "4 steps per update"
    not_trained: str | None = None  # "layers below block_5 (12.3 M params) frozen"
    accuracy_risk: str | None = None  # "measured: 99.1% top-1 agreement on --data", or "not measured"
    evidence: str = "not measured"  # "measured", "estimated" or "not measured"

    def to_dict(self) -> dict[str, Any]:
        return {
            "extra_compute": self.extra_compute,
            "not_trained": self.not_trained,
            "accuracy_risk": self.accuracy_risk,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class Setting:
    """One way to use a strategy (e.g. batch 16, or prune 30% of channels), as shown in the table."""

    strategy: str
    settings: Mapping[str, Any]
    label: str  # "batch 16 x 4 accumulation steps"
    # What the setting gives up, for ranking plans (lower is cheaper; a plan's penalty is the sum of its
    # settings'). Scale: 0.5 compute only (remat, accumulation), 1 numerics (mixed precision), 2 training
    # dynamics (another optimizer, a smaller effective batch), 3+ what is trained or the network itself
    # (LoRA, freezing, pruning). A strategy that does not say is ranked as changing the network.
    penalty: float = 5.0


@runtime_checkable
class Strategy(Protocol):
    """A lever on the memory of a step. The planner calls these; it never special-cases a strategy."""

    name: str  # stable JSON name: "batch_size", "mixed_precision", "channel_pruning", ...
    phases: frozenset[str]  # the phases it can help: {"train"}, {"infer"} or both
    applies_to_file: bool  # whether `plan --apply` can write it into a .keras file

    def settings(self, spec: ModelSpec, phase: str) -> Iterable[Setting]:
        """The settings worth pricing for this model (may be none: the strategy does not apply)."""
        ...

    def apply(self, spec: ModelSpec, setting: Setting) -> ModelSpec:
        """The spec with this setting applied (a new spec: the input is not changed)."""
        ...

    def cost(self, spec: ModelSpec, setting: Setting) -> Cost:
        """What the setting costs, for the report."""
        ...

    def keras_code(self, setting: Setting) -> str:
        """Keras code that applies the setting to the user's own training script."""
        ...
