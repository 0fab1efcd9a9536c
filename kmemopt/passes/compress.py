"""--compress: write the .keras container with deflate (lossless; plain Keras still loads it)."""

from __future__ import annotations

from kmemopt.passes.base import Action, Pass, PassResult, ShrinkOptions


class Compress(Pass):
    name = "compress"

    def enabled(self, options: ShrinkOptions) -> bool:
        return options.compress or (options.prune is not None and options.prune > 0)

    def prepare(self, ctx, result: PassResult) -> None:
        ctx.compress = True
        result.apply("(container)", "zip", Action.DEFLATE)
        if not ctx.options.compress:
            result.notes.append("enabled by --prune")
