"""Checks that run before any stage: problems that would stop a stage hours in, found in seconds."""
from __future__ import annotations

from mlc_utils.study.context import PROJECT_ROOT


# stages that predict test.csv (the data stages, eda and split, read only train.csv)
PREDICTING = ("image", "text", "fusion", "ablation", "ensemble", "explore")


def data_problems(params, stages, root=None) -> list[str]:
    """A data folder whose ``train.csv`` (or, for a study that predicts, ``test.csv``) has no rows."""
    from mlc_utils.data.folder import empty_tables, table_rows
    from mlc_utils.data.labels import LabelSpace
    root = params.data_path(root or PROJECT_ROOT)
    rows = table_rows(root, LabelSpace(params.num_classes))
    return [f"data_dir: {p}" for p in empty_tables(root, rows, need_test=any(s in PREDICTING for s in stages))]


def preflight(params, stages, root=None) -> list[str]:
    """Problems that would stop a stage hours in, found in seconds: weights that cannot be had.

    Offline, a hub model name fails here with the offline choices, before EDA or the split run.
    """
    problems = data_problems(params, stages, root)
    if "image" in stages or "ablation" in stages:
        from mlc_utils.models.weights import resolve_pretrained
        for spec in params.image.models:
            if spec.pretrained is False:
                continue
            try:
                resolve_pretrained(spec.name, spec.pretrained)
            except Exception as err:  # OfflineWeightsError, a missing checkpoint path ...
                problems.append(f"image.models[{spec.label}].pretrained: {err}")
    if "text" in stages and params.text.pretrained:
        from mlc_utils.models.text import resolve_model_source
        try:
            resolve_model_source(params.text.model_name)
        except Exception as err:
            problems.append(f"text.model_name: {err}")
    return problems
