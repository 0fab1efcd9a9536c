"""The shrink passes, one a file, run in this fixed order (documented in docs/shrink.md):

1. strip-optimizer  drop optimizer state and compile config (default; lossless)
2. prune            magnitude pruning of kernels (weights are pruned before they are quantized)
3. quantize         int8/int4 (Keras, plus float16 or kmemopt int8 convolutions), or float16/bfloat16
4. mixed-precision  a mixed dtype policy for training (after quantize: quantized layers keep float32)
5. compress         deflate the container

Each pass returns a `PassResult`: per layer, what it applied, and what it skipped and why.
"""

from __future__ import annotations

from kmemopt.passes.base import (
    Action,
    LayerAction,
    MixedPrecision,
    Pass,
    PassResult,
    QuantizeMode,
    Reason,
    ShrinkOptions,
)
from kmemopt.passes.compress import Compress
from kmemopt.passes.mixed_precision import MixedPrecisionPass
from kmemopt.passes.prune import Prune
from kmemopt.passes.quantize import Quantize
from kmemopt.passes.strip_optimizer import StripOptimizer

PASSES: tuple[type[Pass], ...] = (StripOptimizer, Prune, Quantize, MixedPrecisionPass, Compress)

__all__ = [
    "PASSES",
    "Action",
    "LayerAction",
    "MixedPrecision",
    "Pass",
    "PassResult",
    "QuantizeMode",
    "Reason",
    "ShrinkOptions",
    "enabled_passes",
]


def enabled_passes(options: ShrinkOptions) -> list[Pass]:
    return [p for p in (cls() for cls in PASSES) if p.enabled(options)]
