"""Structured channel pruning (issue 15): a smaller network, rebuilt from plain Keras layers.

`graph` finds which channels are tied together, `select` decides how many each group keeps and which,
`rewrite` builds the smaller config and slices the weights, `prune` puts them together with a
report, `recover` trains the pruned model back (distillation or fine-tuning), and `strategy` offers
pruning to `kmemopt plan`. Keras is imported inside functions only.
"""

from __future__ import annotations

from kmemopt.passes.channels.prune import (
    ChannelReport,
    LayerWidth,
    PruneResult,
    prune_channels,
    pruned_model_config,
)
from kmemopt.passes.channels.select import Amount, Criterion, Ranking
from kmemopt.passes.channels.strategy import ChannelPruning

__all__ = [
    "Amount",
    "ChannelPruning",
    "ChannelReport",
    "Criterion",
    "LayerWidth",
    "PruneResult",
    "Ranking",
    "prune_channels",
    "pruned_model_config",
]
