"""What `kmemopt plan` and `kmemopt.plan(...)` run: the plan, then on request its file and its measurement.

`--apply` writes the plan's file only when the plan fits the budget (like a failed gate, a plan that
does not fit writes nothing). `--measure` runs the baseline file and the file `--apply` writes (a
scratch copy when no `-o` is given) in the measuring child, each at its own batch size, and puts each
measured peak beside the planner's prediction.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kmemopt.errors import KmemoptError, UsageError
from kmemopt.plan.planner import PlanResult, plan
from kmemopt.plan.request import PlanRequest


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}.plan.keras")


def run(path_or_model: Any, request: PlanRequest, *, progress: Callable[[str], None] | None = None) -> PlanResult:
    """The plan (see `kmemopt.plan.planner.plan`), written (`request.apply`) and measured
    (`request.measure`) on request. `request`: `kmemopt.plan.request.make_request`."""
    say = progress or (lambda message: None)
    is_path = isinstance(path_or_model, (str, os.PathLike))
    if (request.apply or request.measure) and not is_path:
        raise UsageError("--apply and --measure read the model's weights from its file: give plan() a path.")
    src = Path(path_or_model) if is_path else None
    target = None
    if request.apply and src is not None:
        target = request.out if request.out is not None else default_output(src)
        from kmemopt.write.save import check_output

        check_output(src, target, request.force)  # before the search: a bad -o is a usage error at once

    say("Pricing every strategy ...")
    result = plan(path_or_model, request)
    notes = list(result.notes)
    output = None
    if target is not None and src is not None:
        if result.plan is not None and result.plan.fits:
            from kmemopt.plan.apply import write_plan

            say(f"Writing {target} ...")
            output = write_plan(
                result,
                src,
                target,
                force=request.force,
                custom_objects=request.custom_objects,
                data=request.data,
                samples=request.samples,
                max_memory_bytes=request.max_memory_bytes,
                timeout_s=request.timeout,
                input_shapes=_shapes(request),
                seq_len=request.seq_len,
            )
        else:
            notes.append(f"Nothing was written to {target}: no plan fits the budget.")
    result = dataclasses.replace(result, output=output, notes=tuple(notes))
    if request.measure and src is not None:
        measured = measure_plan(
            result,
            src,
            Path(output["path"]) if output else None,
            custom_objects=request.custom_objects,
            data=request.data,
            device=request.device,
            gpu_index=request.gpu_index,
            timeout_s=request.timeout,
            max_memory_bytes=request.max_memory_bytes,
            say=say,
            input_shapes=_shapes(request),
            seq_len=request.seq_len,
        )
        result = dataclasses.replace(result, measured=measured)
    return result


def _shapes(request: PlanRequest) -> dict[str, tuple[int, ...]] | None:
    return dict(request.input_shapes) if request.input_shapes else None


def measure_plan(
    result: PlanResult,
    src: Path,
    plan_file: Path | None,
    *,
    custom_objects: Any = None,
    data: str | os.PathLike | None = None,
    device: str = "cpu",
    gpu_index: int = 0,
    timeout_s: float | None = None,
    max_memory_bytes: int | None = None,
    say: Callable[[str], None] = lambda message: None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    seq_len: int | None = None,
) -> dict[str, Any]:
    """The baseline file and the plan's file (`plan_file`, else a scratch one written like --apply's)
    measured in the measuring child; each measured peak beside its prediction."""
    from kmemopt.api import profile as run_profile
    from kmemopt.profiling.measure import DEFAULT_TIMEOUT_S, compare, measure_profile

    key = "training_peak_bytes" if result.phase == "train" else "inference_peak_bytes"
    common = dict(
        custom_objects=custom_objects,
        data=data,
        device=device,
        gpu_index=gpu_index,
        timeout_s=timeout_s or DEFAULT_TIMEOUT_S,
        max_memory_bytes=max_memory_bytes,
    )

    def one(path: Path, batch_size: int, predicted: int, optimizer: Any = None) -> dict[str, Any]:
        profiled = run_profile(
            path,
            batch_size=batch_size,
            optimizer=optimizer,
            custom_objects=custom_objects,
            input_shapes=input_shapes,
            seq_len=seq_len,
        )
        measured = measure_profile(profiled, path, optimizer=optimizer, **common).measured
        m = measured.to_dict() if measured is not None else {}
        value = m.get(key)
        return {
            "batch_size": batch_size,
            "predicted_peak_bytes": predicted,
            "measured_peak_bytes": value,
            "error_pct": compare(predicted, value),
            "status": m.get("status"),
            "measurement": m,
        }

    say("Measuring the baseline ...")
    # A copy: Keras's optimizer deserialization lower-cases the class name of the dict it is given.
    base_opt = copy.deepcopy(result.base_spec.optimizer_config) if result.base_spec is not None else None
    out: dict[str, Any] = {
        "phase": result.phase,
        "baseline": one(src, result.batch_size, result.baseline_priced.peak_bytes, base_opt),
        "plan": None,
    }
    out["device"] = out["baseline"]["measurement"].get("device")
    proposal = result.plan
    if proposal is None:
        return out
    from kmemopt.plan.apply import split_settings, write_plan

    _, rest = split_settings(proposal.settings)
    unmeasured = [s.label for s in rest if s.strategy != "batch_size"]
    written = result.output
    with tempfile.TemporaryDirectory(prefix="kmemopt-plan-") as scratch:
        path = plan_file
        if path is None:
            say("Writing the plan's model to a scratch file ...")
            path = Path(scratch) / "plan.keras"
            try:
                written = write_plan(
                    result,
                    src,
                    path,
                    custom_objects=custom_objects,
                    verify=False,
                    input_shapes=input_shapes,
                    seq_len=seq_len,
                )
            except KmemoptError as exc:
                out["plan_not_measured"] = str(exc)
                return out
        say("Measuring the plan ...")
        measured = one(path, proposal.spec.batch_size, proposal.predicted.peak_bytes)
    measured["file"] = str(plan_file) if plan_file is not None else None
    # What the file cannot hold is not in the measured run either (remat, LoRA, quantized weights, and
    # freezing inside a nested model whose config does not hold its layers' flags).
    lost = [e["label"] for e in (written or {}).get("not_in_file", []) if e.get("weights")]
    measured["not_measured"] = unmeasured + lost
    value = measured["measured_peak_bytes"]
    measured["fits_measured"] = value is not None and value <= result.budget_bytes
    out["plan"] = measured
    return out
