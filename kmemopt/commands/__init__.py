"""One module a command, each with a `command(...)` function that `kmemopt.cli` registers; what they
share (the error-to-exit-code mapping, output, progress, common options) is in `_common`."""
