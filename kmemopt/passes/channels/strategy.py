"""Channel pruning as a `kmemopt plan` strategy: the config with the pruned widths, priced by the planner.

Under a uniform amount the widths depend only on the amount and the layer graph, so `apply` needs no
weights: it rewrites `model_config` and the planner's static profile prices the smaller network like
any other spec. What pruning costs in accuracy is not known until the pruned model is trained back.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kmemopt.plan.strategy import Cost, ModelSpec, Setting

BOTH = frozenset({"train", "infer"})


def _analysis(config: dict[str, Any]):
    from kmemopt.passes.channels.graph import NotAGraph, analyze

    config = copy.deepcopy(config)
    config.pop("compile_config", None)
    model = None
    if config.get("class_name") == "Sequential":  # its config records no tensor shapes: build it, unallocated
        from kmemopt.load.build import build_from_config

        model = build_from_config(copy.deepcopy(config))
    try:
        return analyze(config, model)
    except NotAGraph:
        return None


@dataclass
class ChannelPruning:
    """Remove a fraction of every prunable group's channels (filters, units, attention heads)."""

    name: str = "channel_pruning"
    phases: frozenset[str] = BOTH
    applies_to_file: bool = True  # kmemopt shrink --prune-channels writes it
    fractions: tuple[float, ...] = (0.25, 0.5)
    # (id of the source config, fraction) -> (the source config, the pruned one). The planner applies a
    # setting to the same config in every combination it prices; a spec's config is never mutated, so the
    # graph analysis and the rewrite run once per source and fraction. The source is held so that its id
    # is not reused while the entry lives.
    _pruned: dict[tuple[int, float], tuple[Any, dict[str, Any] | None]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def settings(self, spec: ModelSpec, phase: str) -> Iterable[Setting]:
        analysis = _analysis(dict(spec.model_config))
        if analysis is None or not analysis.prunable():
            return
        for fraction in self.fractions:
            yield Setting(
                self.name,
                {"fraction": fraction},
                f"prune {fraction:.0%} of channels",
                penalty=3.0 + 4.0 * fraction,  # the network itself changes, and needs training back
            )

    def apply(self, spec: ModelSpec, setting: Setting) -> ModelSpec:
        from kmemopt.passes.channels.rewrite import pruned_config
        from kmemopt.passes.channels.select import Amount, select

        fraction = float(setting.settings["fraction"])
        key = (id(spec.model_config), fraction)
        known = self._pruned.get(key)
        if known is None or known[0] is not spec.model_config:
            config = dict(spec.model_config)
            analysis = _analysis(config)
            pruned = None if analysis is None else pruned_config(select(analysis, Amount(fraction)))
            if pruned is not None and "compile_config" in config:
                pruned["compile_config"] = copy.deepcopy(config["compile_config"])
            known = self._pruned[key] = (spec.model_config, pruned)
        pruned = known[1]
        if pruned is None:
            return spec
        extra = {**dict(spec.extra), "channel_pruning": {"fraction": fraction}}
        return spec.with_changes(model_config=pruned, extra=extra)

    def cost(self, spec: ModelSpec, setting: Setting) -> Cost:
        return Cost(
            accuracy_risk="not measured; needs recovery training (kmemopt shrink --recover distill or finetune)",
            evidence="not measured",
        )

    def keras_code(self, setting: Setting) -> str:
        fraction = float(setting.settings["fraction"])
        return (
            "from kmemopt.passes.channels import prune_channels\n"
            f"model = prune_channels(model, {fraction!r}).model  # smaller widths, plain Keras layers\n"
            "# then train it back: model.compile(...); model.fit(...), or distill from the original"
        )
