"""The plan as the user reads it: a line per stage (time, disk, peak memory) and its work."""
from __future__ import annotations

from mlc_utils.core.allocator import TCMALLOC_INSTALL
from mlc_utils.core.progress import duration
from mlc_utils.study.plan.costs import IMAGE_KINDS


def render_plan(plan) -> str:
    gpus = plan.params.image.gpus
    lines = [f"plan of run '{plan.params.run}' ({plan.params.source or 'defaults'}): {plan.rows[0]:,} labelled "
             f"and {plan.rows[1]:,} test rows ({plan.rows_from}); device {plan.device}"
             + (f", allocator {plan.allocator}" if plan.allocator else "")
             + (f", {gpus} GPU processes for fine-tuning" if gpus > 1 else "")]
    if plan.allocator and plan.allocator != "tcmalloc":
        saving = plan.allocator_saving_s
        lines.append(f"  without tcmalloc: the calibration's batches spent CPU time in the kernel, faulting in memory "
                     f"that glibc's malloc maps afresh; tcmalloc would save about {duration(saving)} "
                     f"({_saved_share(plan):.0%} of the timed work). Install it: {TCMALLOC_INSTALL}")
    if plan.note:
        lines.append(f"  {plan.note}")
    for s in plan.stages:
        peak = "peak memory small" if not s.peak_bytes else f"peak memory {human_size(s.peak_bytes)} a process" \
            if all(t.peak_measured for t in s.trainings if t.peak_bytes) else \
            f"peak memory >= {human_size(s.peak_bytes)} a process (weights, gradients, optimizer; activations not measured)"
        lines.append(f"  {s.stage:<9} time {time_text(s)}, disk {human_size(s.disk_bytes)}, {peak}")
        lines.append(f"            {s.work}")
    total = duration(plan.seconds) if plan.seconds is not None else "not measurable here"
    if plan.seconds_range:
        total = f"~{total}{range_text(plan.seconds_range)}"
    hub = f"; hub downloads {human_size(plan.hub_bytes)}" if plan.hub_bytes else ""
    lines.append(f"  total     time {total}, disk {human_size(plan.disk_bytes)}{hub}")
    lines.extend(f"  {line}" for line in plan.sources)
    return "\n".join(lines)


def _saved_share(plan) -> float:
    """The share of the timed trainings' planned seconds that tcmalloc would save."""
    timed = sum(t.seconds or 0.0 for s in plan.stages for t in s.trainings if t.build is not None)
    return plan.allocator_saving_s / timed if timed else 0.0


def time_text(stage) -> str:
    if stage.seconds is None:
        return stage.time_note
    if stage.seconds_range:
        return f"~{duration(stage.seconds)}{range_text(stage.seconds_range)}"
    measured = any(t.seconds is not None and t.build is not None for t in stage.trainings)
    return ("" if measured else "~") + duration(stage.seconds)


def range_text(seconds_range) -> str:
    return f" ({duration(seconds_range[0])} to {duration(seconds_range[1])})"


def human_size(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"




def work_line(t) -> str:
    runs = f"{t.runs} fits x " if t.runs > 1 else ""
    if t.kind == "tfidf":
        return f"{t.label}: {runs}{t.train_rows:,} captions"
    if t.kind.endswith("predict"):
        return f"{t.label}: predicts {t.eval_rows:,} {'images' if t.kind in IMAGE_KINDS else 'captions'} (no training)"
    if t.kind.endswith("features"):
        runtime = " (OpenVINO)" if t.runtime == "openvino" else ""
        return f"{t.label}: features of {t.once_rows:,} rows once{runtime}, then a head {runs}{t.epochs} epochs x {t.train_rows:,}"
    what = "images" if t.kind == "image" else "captions"
    return f"{t.label}: {runs}{t.epochs} epochs x {t.train_rows:,} {what} (+ {t.eval_rows:,} predicted per fit)"
