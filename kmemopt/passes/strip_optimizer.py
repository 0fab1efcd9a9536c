"""--strip-optimizer (default, lossless): drop saved optimizer state and the compile config."""

from __future__ import annotations

from kmemopt.passes.base import Action, Pass, PassResult, Reason, ShrinkOptions

MODEL = "(model)"


class StripOptimizer(Pass):
    name = "strip-optimizer"

    def enabled(self, options: ShrinkOptions) -> bool:
        return True  # always reports: either it dropped the state, or why it kept it

    def prepare(self, ctx, result: PassResult) -> None:
        info = ctx.file_info or {}
        n_vars, n_bytes = info.get("optimizer_variables", 0), info.get("optimizer_bytes", 0)
        compiled = info.get("compiled", False)
        if not compiled and not n_vars:
            result.skip(MODEL, "Model", Reason.NOT_COMPILED)
            return
        if ctx.options.strip_optimizer:
            # A file is loaded without its optimizer; a caller's compiled model still has one, which a
            # save would write: rebuild it uncompiled (the caller's model is left as it is).
            ctx.force_rebuild = getattr(ctx.model, "optimizer", None) is not None
            result.apply(MODEL, "Model", Action.DROPPED_OPTIMIZER, optimizer_variables=n_vars, optimizer_bytes=n_bytes)
        elif ctx.will_rewrite:
            result.apply(
                MODEL,
                "Model",
                Action.DROPPED_OPTIMIZER,
                optimizer_variables=n_vars,
                optimizer_bytes=n_bytes,
                why=Reason.OPTIMIZER_INVALIDATED.value,
            )
            result.notes.append("--keep-optimizer was ignored: " + Reason.OPTIMIZER_INVALIDATED.value + ".")
        else:
            ctx.keep_optimizer = True
            result.apply(MODEL, "Model", Action.KEPT_OPTIMIZER, optimizer_variables=n_vars, optimizer_bytes=n_bytes)
