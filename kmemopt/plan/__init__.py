"""`kmemopt plan`: from a budget that is not met to a verified way to meet it (see strategy.py).

The package is also the public function: `kmemopt.plan("model.keras", budget="8GiB")` runs
`kmemopt.plan.run.run`. (Importing a submodule such as `kmemopt.plan.strategy` binds the package to the
name `kmemopt.plan`, so a separate function of that name could not survive it; the package is callable
instead.) Nothing heavy is imported here.

Example:
    >>> import kmemopt
    >>> result = kmemopt.plan("model.keras", budget="8GiB", batch_size=64)
    >>> result.plan.fits, print(result.plan.keras_code)
    >>> kmemopt.plan("model.keras", budget="8GiB", apply=True, out="model.plan.keras").output
"""

from __future__ import annotations

import sys
import types
from typing import Any


def plan(path_or_model: Any, **options: Any):
    """Price every strategy on the model rebuilt with it, propose the cheapest combination that fits
    `budget` (bytes or "8GiB"), and on request write it (`apply=True`, `out=`) and measure it
    (`measure=True`). Options: `kmemopt.plan.request.make_request`'s, and `progress` (a callable that
    takes a message). Returns a `PlanResult` (`to_dict()` is the JSON in docs/plan.md)."""
    from kmemopt.plan.request import make_request
    from kmemopt.plan.run import run

    progress = options.pop("progress", None)
    return run(path_or_model, make_request(**options), progress=progress)


class _CallablePackage(types.ModuleType):
    def __call__(self, path_or_model: Any, **options: Any):
        return plan(path_or_model, **options)


sys.modules[__name__].__class__ = _CallablePackage
