"""Checks that run before any stage: problems that would stop a stage hours in, found in seconds."""
from __future__ import annotations

from pathlib import Path

from mlc_utils.study.context import PROJECT_ROOT

# stages that predict test.csv (the data stages, eda and split, read only train.csv)
PREDICTING = ("image", "caption", "fusion", "ablation", "ensemble", "explore")


def data_problems(params, stages, root=None) -> list[str]:
    """A data folder whose ``train.csv`` (or, for a study that predicts, ``test.csv``) has no rows."""
    from mlc_utils.data.folder import empty_tables, table_rows
    from mlc_utils.data.labels import LabelSpace
    root = params.data_path(root or PROJECT_ROOT)
    rows = table_rows(root, LabelSpace(params.num_classes))
    return [f"data_dir: {p}" for p in empty_tables(root, rows, need_test=any(s in PREDICTING for s in stages))]


def device_problems(params, stages, log=print) -> list[str]:
    """The study's ``device`` and ``image.gpus`` against the CUDA devices visible here, so a GPU
    profile never trains on the CPU unless ``device: cpu`` says so; a card without native bf16
    is said (training takes fp16 with a GradScaler there, :mod:`mlc_utils.train.loop`)."""
    if params.device == "cpu" or not any(s in PREDICTING for s in stages):
        return []
    from mlc_utils.core.device import visible_cuda_devices
    count, why = visible_cuda_devices()
    gpus = params.image.gpus if ("image" in stages or "ablation" in stages) else 0
    device = params.device
    if count == 0:
        if device.startswith("cuda"):
            return [(f"device: {device!r} but no CUDA device is usable here ({why}); install a torch built "
                     "for this machine's driver, or set device: cpu to run on the CPU")]
        if gpus:
            return [(f"image.gpus: {gpus} but no CUDA device is usable here ({why}), and device: auto would "
                     "train on the CPU; fix CUDA, or set device: cpu and image.gpus: 0 to run on the CPU")]
        return []
    index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
    if index >= count:
        return [(f"device: {device!r} but {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1}); "
                 "set device: auto or a visible cuda:N")]
    if gpus > count:
        return [(f"image.gpus: {gpus} but {count} CUDA device(s) are visible; set image.gpus: {count} "
                 "(or make the others visible with CUDA_VISIBLE_DEVICES)")]
    import torch

    from mlc_utils.core.device import native_autocast_dtype
    card = torch.device("cuda", index)
    if native_autocast_dtype(card) == torch.float16:
        log(f"note: {torch.cuda.get_device_name(card)} has no native bf16: training sections with "
            "amp_dtype: bfloat16 train in float16 with a GradScaler (set amp_dtype: float16 to silence this)")
    return []


def _free_bytes(path: Path) -> tuple[Path, int, int]:
    """(the nearest existing folder of ``path``, its free bytes, its filesystem)."""
    import shutil
    while not path.exists() and path != path.parent:
        path = path.parent
    return path, shutil.disk_usage(path).free, path.stat().st_dev


def disk_problems(params, stages, root=None) -> list[str]:
    """What the run writes (every model's checkpoints in every fold, features, probabilities, reports:
    :mod:`mlc_utils.study.plan`) against the free space of ``runs/`` and of the hub cache."""
    from mlc_utils.models.hub import cache_dir
    from mlc_utils.study.context import StudyPaths
    from mlc_utils.study.plan import human_size, make_plan
    root = Path(root or PROJECT_ROOT)
    plan = make_plan(params, root, stages, calibration=False)
    run_dir, run_free, run_fs = _free_bytes(StudyPaths(root, params.run).run_dir)
    hub_dir, hub_free, hub_fs = _free_bytes(cache_dir())
    need, hub_need = plan.disk_bytes, plan.hub_bytes
    if hub_fs == run_fs:
        need, hub_need = need + hub_need, 0
    problems = []
    if need > run_free:
        problems.append(f"run: '{params.run}' writes about {human_size(need)} (checkpoints of every model and fold, "
                        f"features, probabilities, reports{', hub downloads' if hub_fs == run_fs and plan.hub_bytes else ''}) "
                        f"but {run_dir} has {human_size(run_free)} free; free space there, or train fewer models or folds "
                        "(image.models, split.folds)")
    if hub_need > hub_free:
        problems.append(f"hub cache: the run downloads about {human_size(hub_need)} of weights but {hub_dir} has "
                        f"{human_size(hub_free)} free; set HF_HOME to a folder on a disk with room")
    return problems


def preflight(params, stages, root=None, log=print) -> list[str]:
    """Problems that would stop a stage hours in (or waste them), found in seconds: empty tables, a
    device that is not there, weights that cannot be had. Notes that do not stop it go to ``log``.

    Offline, a hub model name fails here with the offline choices, before EDA or the split run.
    """
    problems = data_problems(params, stages, root) + device_problems(params, stages, log) + \
        disk_problems(params, stages, root)
    if "image" in stages or "ablation" in stages:
        from mlc_utils.models.weights import resolve_pretrained
        for spec in params.image.models:
            if spec.pretrained is False:
                continue
            try:
                resolve_pretrained(spec.name, spec.pretrained)
            except Exception as err:  # OfflineWeightsError, a missing checkpoint path ...
                problems.append(f"image.models[{spec.label}].pretrained: {err}")
    if "caption" in stages and params.caption.pretrained:
        from mlc_utils.models.caption import resolve_model_source
        try:
            resolve_model_source(params.caption.model_name)
        except Exception as err:
            problems.append(f"caption.model_name: {err}")
    return problems
