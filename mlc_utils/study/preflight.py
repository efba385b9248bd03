"""Checks that run before any stage: problems that would stop a stage hours in, found in seconds."""
from __future__ import annotations


def preflight(params, stages) -> list[str]:
    """Problems that would stop a stage hours in, found in seconds: weights that cannot be had.

    Offline, a hub model name fails here with the offline choices, before EDA or the split run.
    """
    problems = []
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
