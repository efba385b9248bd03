"""``python -m mlc_utils plan --params FILE``: what a run will do before it does it, stage by stage.

For each stage: the work (models x folds x epochs over images x views, captions x epochs), the time
(from a short calibration of each architecture on this machine's device: a few timed batches forward
and backward at the run's batch size and precision, with random weights of the same architecture,
so nothing is downloaded), the disk it writes and the peak memory of one process. Where this
machine lacks the profile's device the time is "not measurable here" and the rest still shows;
``--gpu CARD`` then plans a CUDA profile's GPU stages from published throughputs scaled to that card
(:mod:`.published`), with a range and the figures' sources. A calibration on CUDA wins over them.

Row counts come from ``--rows TRAIN/TEST``, else the data folder, else the data the profile names:
``data/demo`` is the demo generator's defaults, anything else the competition's 30,000 labelled
and 10,000 test rows. Small steps (EDA, the split, heads on saved outputs, TF-IDF, the ensemble)
have nominal times, marked ``~``.

The model of time follows what each stage does: every stage pays ``STAGE_OVERHEAD_S`` (kernel start,
imports, report rendering); a fine-tuned image model pays, per fit, its epochs of training batches
and of decoded, augmented images plus each epoch's validation pass, then the forward passes that
predict the validation and test rows in each TTA view; a frozen one pays one feature pass over
every image and view (cached, shared by its folds and by the ablation) and cheap head epochs; the
ablation's baseline is the image stage's model where the image stage has no folds, and its TTA
switch only predicts again; caption models likewise (the frozen one embeds every caption once).
On the holdout the fusion heads' inputs are one more pass of the fused image and caption models
over every row; the heads' epochs are nominal. Epochs that train a head alone (``freeze_epochs``)
cost a third of a step, and every epoch writes its checkpoints (``CHECKPOINT_BYTES_S``).

Calibration runs at the run's settings (training batch size, inference batch size of the device,
precision, torch's thread count), one untimed warm-up batch then ``steps`` timed ones, and times the
decoding + transform of a few of the data folder's images. Caption batches are cut to their longest
caption, so captions are timed at the padded length the run's batches will have, measured on the
data folder's captions (sorted for embeddings, shuffled for training). Its results are kept in
``<cache_dir>/plan/calibration.json`` keyed by architecture, settings and machine (device name,
torch version, thread count, CPU model, and on a CPU the allocator): a second plan on the same
machine calibrates nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlc_utils.study.context import PROJECT_ROOT
from mlc_utils.study.plan.calibration import (
    CalibrationCache,
    calibrate,
    calibration_path,
    machine_facts,
    plan_device,
)
from mlc_utils.study.plan.costs import STAGE_OVERHEAD_S, memory_floor
from mlc_utils.study.plan.render import human_size
from mlc_utils.study.plan.work import Plan, StagePlan, Training, row_counts, stage_plans

__all__ = ["CalibrationCache", "Plan", "STAGE_OVERHEAD_S", "StagePlan", "Training", "calibrate", "calibration_path",
           "cli", "human_size", "machine_facts", "make_plan", "row_counts", "stage_plans"]


def make_plan(params, root: Path = PROJECT_ROOT, stages=None, rows: tuple[int, int] | None = None,
              calibration: bool = True, budget_s: float | None = None, log=None, gpu: str | None = None) -> Plan:
    """``gpu``: the card (:func:`.published.gpu`) to plan a CUDA profile's time on from published
    figures where this machine has no CUDA; where it has, the calibration measured here wins."""
    (n_train, n_test), rows_from = row_counts(params, Path(root), rows)
    device, why = plan_device(params)
    data_dir = params.data_path(Path(root))
    eval_batch = None
    if device is not None:
        from mlc_utils.core.inference import Inference
        eval_batch = Inference(device, params.inference.batch_size).batch_for("tokens")
    plans = stage_plans(params, n_train, n_test, stages or params.stages, data_dir, eval_batch)
    plan = Plan(params, plans, (n_train, n_test), rows_from, device or params.device, device is not None)
    for stage in plans:
        for t in stage.trainings:
            if t.peak_bytes is None and t.params:
                t.peak_bytes = memory_floor(t)
        if device is None and any(t.build is not None for t in stage.trainings):
            stage.time_note = why if gpu else f"{why}; `plan --gpu CARD` plans it from published figures"
    if device is None and gpu:
        from mlc_utils.study.plan.published import plan_on_gpu
        plan_on_gpu(plan, gpu)
    if device is not None and not calibration:
        plan.note = "time: not calibrated (--no-calibrate)"
        for stage in plans:
            if any(t.seconds is None for t in stage.trainings):
                stage.time_note = "not calibrated (--no-calibrate)"
    elif calibration:
        calibrate(plan, budget_s=budget_s, log=log, cache=CalibrationCache(calibration_path(params, Path(root))),
                  data_dir=data_dir)
    if device is not None and gpu:
        plan.note = "; ".join(filter(None, [plan.note, f"--gpu {gpu} not used: times are measured on this machine's {device}"]))
    for stage in plans:  # a stage with a training nothing could time (no architecture available here)
        if not stage.time_note and any(t.seconds is None for t in stage.trainings):
            stage.time_note = "not measurable here (the model's configuration is not available offline)"
    return plan


def _rows(text: str) -> tuple[int, int]:
    try:
        train, test = (int(v.replace(",", "").replace("_", "")) for v in text.split(":" if ":" in text else "/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rows: expected TRAIN/TEST row counts such as 30000/10000 (got {text!r})")
    return train, test


def cli(argv: list[str]) -> int:
    from mlc_utils.study.params import ParamError, load_params
    parser = argparse.ArgumentParser(prog="python -m mlc_utils plan",
                                     description="Print, stage by stage, the work, time, disk and peak memory of a run.")
    parser.add_argument("--params", required=True, help="params YAML, e.g. params/comp5329-gpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, as for run")
    parser.add_argument("--rows", type=_rows, metavar="TRAIN/TEST",
                        help="row counts to plan for (default: the data folder's, see the docs)")
    parser.add_argument("--no-calibrate", action="store_true", help="skip the timed batches (no times)")
    parser.add_argument("--gpu", metavar="CARD",
                        help="without CUDA here: plan the GPU stages on this card (a4000, 3090, 4090, a100, h100, ...) "
                             "from published throughputs, as many as image.gpus (--set image.gpus=N for another count)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
        if args.gpu:
            from mlc_utils.study.plan.published import gpu
            gpu(args.gpu)
    except (ParamError, ValueError) as err:
        print(f"mlc_utils plan: {err}", file=sys.stderr)
        return 2
    print(make_plan(params, rows=args.rows, calibration=not args.no_calibrate, gpu=args.gpu).render())
    return 0
