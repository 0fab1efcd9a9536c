"""`--target-params 0.3x` / `--target-memory 2GiB`: the smallest amount of channel pruning that reaches a target.

The amount is searched before any weight changes: for a candidate fraction, the pruned widths come
from the layer graph (and, under global ranking, the importance scores computed once), the smaller
config is built unallocated, and its parameters or static training peak are read. Widths only shrink
as the fraction grows, and parameters and peaks with them, so a bisection over fractions in steps of
one per mille finds the smallest step that reaches the target; the model is then pruned once, at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kmemopt.errors import UsageError
from kmemopt.passes.channels.graph import Analysis
from kmemopt.passes.channels.select import Amount, Ranking, select

STEPS = 1000  # fractions searched: 0, 1/1000, ..., 999/1000 (a fraction of 1 would remove every channel)


@dataclass(frozen=True)
class Target:
    """What the pruned model must reach: at most `value` parameters ("params") or bytes of static
    training peak at the report's batch size ("memory"). `ratio` is set when the target was asked as a
    multiple of the original ("0.3x") and `value` is then resolved against the model."""

    kind: str  # "params" or "memory"
    value: int | None = None
    ratio: float | None = None

    @property
    def option(self) -> str:
        return f"--target-{self.kind}"

    def asked(self) -> str:
        if self.ratio is not None:
            return f"{self.ratio:g}x"
        return f"{self.value:,}" + (" bytes" if self.kind == "memory" else " parameters")

    def resolve(self, original: int) -> int:
        if self.ratio is not None:
            return int(np.floor(self.ratio * original))
        return int(self.value or 0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "ratio": self.ratio}


def _ratio(text: str, option: str) -> float | None:
    raw = str(text).strip().lower()
    if not raw.endswith("x"):
        return None
    try:
        ratio = float(raw[:-1])
    except ValueError:
        raise UsageError(f"Cannot read {text!r} as a multiple for {option}; write it like '0.3x'.") from None
    if not 0 < ratio <= 1:
        raise UsageError(f"{option} as a multiple must be above 0x and at most 1x. Received: {text!r}.")
    return ratio


def parse_target(kind: str, text: str | int | float) -> Target:
    """`--target-params`: a multiple of the original ("0.3x") or a count ("1.5M"); `--target-memory`: a
    multiple ("0.5x") or a size ("2GiB") of the static training peak."""
    from kmemopt.units import parse_count, parse_size

    option = f"--target-{kind}"
    ratio = _ratio(str(text), option) if isinstance(text, str) else None
    if ratio is not None:
        return Target(kind, ratio=ratio)
    value = parse_count(text) if kind == "params" else parse_size(text)  # type: ignore[arg-type]
    if value <= 0:
        raise UsageError(f"{option} must be above zero. Received: {text!r}.")
    return Target(kind, value=int(value))


@dataclass
class Search:
    """The outcome: the smallest `fraction` reaching `target` (`reached` its value), and the step just
    below it (`one_step_less`: fraction and value, over the target), with every evaluation made."""

    target: Target
    limit: int
    original: int
    fraction: float
    reached: int
    one_step_less: tuple[float, int] | None
    evaluated: dict[float, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.target.to_dict(),
            "limit": self.limit,
            "original": self.original,
            "fraction": self.fraction,
            "reached": self.reached,
            "one_step_less": (
                {"fraction": self.one_step_less[0], "value": self.one_step_less[1]} if self.one_step_less else None
            ),
            "evaluations": len(self.evaluated),
        }


def search_fraction(
    analysis: Analysis,
    target: Target,
    *,
    ranking: Ranking = Ranking.uniform,
    scores: dict[int, np.ndarray] | None = None,
    batch_size: int = 32,
    optimizer: Any = None,
    seq_len: int | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    weights: dict[int, float] | None = None,
) -> Search:
    """The smallest fraction (in steps of 1/1000) whose pruned config reaches `target` (under sensitivity
    ranking, each group's fraction scaled by its `weights`); `UsageError`
    (exit 2) naming the closest reachable value when even the most pruning does not."""
    from kmemopt.load.build import build_from_config
    from kmemopt.passes.channels.rewrite import pruned_config

    evaluated: dict[float, int] = {}

    def measure(step: int) -> int:
        fraction = step / STEPS
        if fraction not in evaluated:
            model = build_from_config(pruned_config(select(analysis, Amount(fraction, ranking), scores, weights)))
            if target.kind == "params":
                evaluated[fraction] = int(model.count_params())
            else:
                from kmemopt.profiling.static import profile_model

                totals = profile_model(
                    model, batch_size=batch_size, optimizer=optimizer, seq_len=seq_len, input_shapes=input_shapes
                ).totals
                evaluated[fraction] = int(totals.training_peak_bytes)
        return evaluated[fraction]

    original = measure(0)
    limit = target.resolve(original)
    if original <= limit:
        return Search(target, limit, original, 0.0, original, None, evaluated)
    lo, hi = 0, STEPS - 1  # measure(lo) > limit always
    smallest = measure(hi)
    if smallest > limit:
        raise UsageError(
            f"{target.option} {target.asked()} cannot be reached by channel pruning: with every prunable "
            f"channel group down to one channel the model still has {_describe(target.kind, smallest, original)}; "
            "ask for that much or more."
        )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(mid) <= limit:
            hi = mid
        else:
            lo = mid
    return Search(target, limit, original, hi / STEPS, measure(hi), (lo / STEPS, measure(lo)), evaluated)


def _describe(kind: str, value: int, original: int) -> str:
    from kmemopt.units import format_bytes

    ratio = value / original if original else 1.0
    if kind == "params":
        return f"{value:,} parameters ({ratio:.3f}x)"
    return f"a static training peak of {format_bytes(value)} ({ratio:.3f}x)"
