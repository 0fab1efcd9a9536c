"""The few errors kmemopt raises on purpose, each with its documented exit code.

The CLI catches :class:`KmemoptError` once and prints its message as one sentence; anything else is
an internal error (exit 4). The table is the stable interface documented in the README.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmemopt.passes.pipeline import ShrinkResult


class ExitCode(IntEnum):
    OK = 0
    GATE_FAILED = 1  # a budget or fidelity gate failed
    USAGE = 2  # bad arguments, unreadable path
    UNSAFE = 3  # model rejected as unsafe or malformed
    INTERNAL = 4  # a bug in kmemopt


class KmemoptError(Exception):
    """Base class: a sentence for the user plus an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL
    # Set on an error raised again in the parent from a child process (kmemopt.sandbox): the name of the
    # child's exception class and its traceback.
    child_type: str | None = None
    child_traceback: str = ""

    def __init__(self, message: str, *, rule: str | None = None, where: str | None = None):
        from kmemopt.report.safe import visible

        # Messages quote names from the model file: whoever prints the exception (the CLI, or a user's
        # own script through the API) gets one line with no terminal escape codes in it.
        message = visible(message)
        where = visible(where) if where is not None else None
        super().__init__(message)
        self.message = message
        self.rule = rule
        self.where = where

    def __str__(self) -> str:
        text = self.message
        if self.rule:
            text = f"[{self.rule}] {text}"
        if self.where:
            text = f"{text} (at {self.where})"
        return text

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "rule": self.rule,
            "where": self.where,
            "exit_code": int(self.exit_code),
        }


class UsageError(KmemoptError):
    """Bad arguments or a path that cannot be read (exit 2)."""

    exit_code = ExitCode.USAGE


class UnsafeModelError(KmemoptError):
    """The model file names something outside the allowlist, or breaks an archive rule (exit 3)."""

    exit_code = ExitCode.UNSAFE


class MalformedModelError(KmemoptError):
    """The file is not a valid Keras model (exit 3)."""

    exit_code = ExitCode.UNSAFE


class GateFailed(KmemoptError):
    """A budget or fidelity gate failed (exit 1)."""

    exit_code = ExitCode.GATE_FAILED
    # `shrink` sets the report of the run that failed the gate (nothing was written).
    result: ShrinkResult | None = None


def clip(text: str, limit: int = 240) -> str:
    """`text` on one line and at most about `limit` characters, cut at a word boundary (never mid-word)."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    cut = flat.rfind(" ", 0, limit)
    return (flat[: cut if cut > limit // 2 else limit]).rstrip(" ,;:") + " ..."
