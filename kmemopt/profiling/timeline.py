"""The training step as a timeline: the static estimate's own accounting, one step a layer call.

The static training peak is `weights + gradients + optimizer state + activations kept + the largest
backward transient + runtime` (static.py). This module spreads the same terms over the step so a
report can draw them: the forward pass in call order (activations kept for the backward pass pile
up, the live tensors nothing keeps are transient), then the backward pass in reverse order (every
gradient buffer and every kept activation held, as the estimate holds them, plus the one layer's
d(inputs) and d(outputs)), then the optimizer update (activations released).

So the timeline's highest step is the estimate's training peak, at the layer whose backward step
holds the most: the same number, the same memory model, no second estimator. The fixed terms
(weights, gradients, optimizer state, runtime) are the profile's totals; a step holds only the two
terms that move: `activations` (kept so far) and `transient`.
"""

from __future__ import annotations

from typing import Any

from kmemopt.profiling import graph as g


def training_timeline(graph: g.Graph, batch_size: int) -> list[dict[str, Any]]:
    """The steps of one training step at `batch_size`: forward calls, backward calls, the update.

    Each step: {"phase": "forward" | "backward" | "update", "layer": call path or None,
    "activations": bytes kept for the backward pass so far, "transient": bytes alive only now}.
    """
    kept = g.kept_tensors(graph)

    def size(t: int) -> int:
        return graph.tensors[t].size.at(batch_size)

    last_use: dict[int, int] = {}
    for i, call in enumerate(graph.calls):
        for t in call.inputs:
            last_use[t] = i
    for t in graph.outputs:
        last_use[t] = len(graph.calls)

    steps: list[dict[str, Any]] = []
    live: set[int] = set()
    counted: set[int] = set()  # kept tensors already added to `activations`
    activations = loose = 0  # kept so far; live tensors nothing keeps
    for t in graph.inputs:
        if t in live:
            continue
        live.add(t)
        if t in kept:
            counted.add(t)
            activations += size(t)
        else:
            loose += size(t)
    for i, call in enumerate(graph.calls):
        for t in call.outputs:
            if t in live:
                continue
            live.add(t)
            if t in kept:
                if t not in counted:
                    counted.add(t)
                    activations += size(t)
            else:
                loose += size(t)
        activations += call.saved_extra.at(batch_size)
        steps.append(
            {
                "phase": "forward",
                "layer": call.path,
                "activations": activations,
                "transient": loose + call.transient.at(batch_size),
            }
        )
        for t in set(call.inputs) | set(call.outputs):
            if last_use.get(t, i) <= i and t in live:
                live.discard(t)
                if t not in kept:
                    loose -= size(t)
    for call in reversed(graph.calls):
        held = sum(size(t) for t in set(call.inputs) | set(call.outputs)) + call.backward_transient.at(batch_size)
        steps.append({"phase": "backward", "layer": call.path, "activations": activations, "transient": held})
    steps.append({"phase": "update", "layer": None, "activations": 0, "transient": 0})
    return steps


def timeline_dict(result: Any) -> dict[str, Any] | None:
    """The timeline of a `ProfileResult` for its `to_dict()`; None when the graph is not kept."""
    graph = getattr(result, "_graph", None)
    if graph is None:
        return None
    t = result.totals
    steps = training_timeline(graph, result.batch_size)
    fixed = t.param_bytes + t.optimizer_bytes + t.runtime_training_bytes

    def total(step: dict[str, Any]) -> int:
        grads = 0 if step["phase"] == "forward" else t.gradient_bytes
        return fixed + grads + step["activations"] + step["transient"]

    peak = max(range(len(steps)), key=lambda i: total(steps[i]))
    return {
        "batch_size": result.batch_size,
        "steps": steps,
        "peak_step": peak,
        "peak_bytes": total(steps[peak]),
    }
