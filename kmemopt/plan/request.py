"""What one `kmemopt plan` is asked to do: checked once (`make_request`, called by the CLI and by
`kmemopt.plan(...)`) and passed unchanged to `run` and the planner, like shrink's `ShrinkRequest`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmemopt.errors import UsageError

PHASES = ("train", "infer")


@dataclass(frozen=True)
class PlanRequest:
    """One plan's settings. Defaults: a training step at batch 32, every strategy, nothing written or run."""

    budget_bytes: int
    batch_size: int = 32
    phase: str = "train"  # "train" or "infer"
    optimizer: Any = None  # for the training step (default: the file's, else adam)
    freeze: str | None = None  # a layer-path regex for the freezing strategy
    train_last: int | None = None  # ... or train only the last N weighted layers
    only: tuple[str, ...] | None = None  # the strategies to use (None: all)
    apply: bool = False  # write the plan's model
    out: Path | None = None  # where (None: <stem>.plan.keras beside the input)
    force: bool = False  # overwrite an existing output (never the input)
    measure: bool = False  # run the baseline and the plan's model in the measuring child
    data: Path | None = None  # inputs for the reload check and the measurement
    samples: int | None = None
    device: str = "cpu"
    gpu_index: int = 0
    input_shapes: Mapping[str, tuple[int, ...]] | None = None
    seq_len: int | None = None
    custom_objects: Any = None
    max_memory_bytes: int | None = None  # what running the model may take; None: the sandbox's default
    timeout: float | None = None  # seconds a child may run; None: its default
    devices: int | None = None  # spread the step over this many devices (keras.distribution); budget per device


def make_request(
    *,
    budget: int | str,
    batch_size: int = 32,
    phase: str = "train",
    optimizer: Any = None,
    freeze: str | None = None,
    train_last: int | None = None,
    only: Sequence[str] | None = None,
    apply: bool = False,
    out: str | os.PathLike | None = None,
    force: bool = False,
    measure: bool = False,
    data: str | os.PathLike | None = None,
    samples: int | None = None,
    device: str = "cpu",
    gpu_index: int = 0,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    seq_len: int | None = None,
    custom_objects: Any = None,
    max_memory: int | str | None = None,
    timeout: float | None = None,
    devices: int | None = None,
) -> PlanRequest:
    """The request, each argument checked (a bad one is a UsageError, exit 2)."""
    from kmemopt.units import parse_size

    if phase not in PHASES:
        raise UsageError(f"--phase must be train or infer. Received: {phase!r}.")
    if batch_size < 1:
        raise UsageError(f"The batch size must be at least 1. Received: batch_size={batch_size}.")
    budget_bytes = parse_size(budget) if isinstance(budget, str) else int(budget)
    if budget_bytes <= 0:
        raise UsageError(f"--budget must be a positive size such as 8GiB. Received: {budget!r}.")
    if freeze is not None:
        try:
            re.compile(freeze)
        except re.error as exc:
            raise UsageError(f"--freeze is not a valid regular expression ({exc}). Received: {freeze!r}.") from None
    if devices is not None and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 2):
        raise UsageError(f"--devices must be a whole number of at least 2. Received: {devices!r}.")
    if devices is not None and (apply or measure):
        raise UsageError(
            "--devices plans a distributed step, which --apply cannot write into a file and --measure cannot run "
            "on one machine's CPU; drop --apply/--measure (or --devices)."
        )
    if out is not None and not apply:
        raise UsageError("-o names the file --apply writes; add --apply (or drop -o).")
    if data is not None and not Path(data).is_file():
        raise UsageError(f"--data {data} is not a readable file (.npy, or .npz keyed by input name or 'x').")
    return PlanRequest(
        budget_bytes=budget_bytes,
        batch_size=batch_size,
        phase=phase,
        optimizer=optimizer,
        freeze=freeze,
        train_last=train_last,
        only=tuple(only) if only else None,
        apply=apply,
        out=Path(out) if out is not None else None,
        force=force,
        measure=measure,
        data=Path(data) if data is not None else None,
        samples=samples,
        device=device,
        gpu_index=gpu_index,
        input_shapes=dict(input_shapes) if input_shapes else None,
        seq_len=seq_len,
        custom_objects=custom_objects,
        max_memory_bytes=parse_size(max_memory) if isinstance(max_memory, str) else max_memory,
        timeout=timeout,
        devices=devices,
    )
