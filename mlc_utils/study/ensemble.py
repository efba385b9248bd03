"""The ensemble stage (07_ensemble): weigh the saved members, tune the threshold, write the submission."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mlc_utils.core.fingerprint import digest
from mlc_utils.evaluation import metrics
from mlc_utils.evaluation.ensemble import Member
from mlc_utils.study.artifacts import F1_AT_05, F1_TUNED
from mlc_utils.study.caption import caption_members
from mlc_utils.study.image import image_members
from mlc_utils.study.members import MEMBER_FILE, load_member, save_member
from mlc_utils.study.paper import PAPER_TABLE2


def study_members(ctx) -> list[Member]:
    """Every saved member of the image, caption and fusion stages (the ensemble's candidates)."""
    members = image_members(ctx) + caption_members(ctx)
    fusion_dir = ctx.dir_of("fusion")
    for path in sorted(fusion_dir.glob(f"*/{MEMBER_FILE}")) if fusion_dir.is_dir() else []:
        member = load_member(path.parent)
        if member is not None:
            members.append(member)
    return members



def run_ensemble(ctx, log=print):
    """Weighted average of the chosen members, validation-tuned threshold, the test submission."""
    from mlc_utils.evaluation.ensemble import build_ensemble
    ensemble_params = ctx.params.ensemble
    val_df, y_val = ctx.scored_rows()
    candidates = study_members(ctx)
    if ensemble_params.members:
        known = {m.name: m for m in candidates}
        missing = [name for name in ensemble_params.members if name not in known]
        if missing:
            raise ValueError(f"ensemble.members: {missing} are not saved members; available: {sorted(known)}")
        chosen = [known[name] for name in ensemble_params.members]
    else:
        chosen = candidates
    options = {"weights": ensemble_params.weights,
               "threshold": "class" if ensemble_params.per_class_thresholds else "global"}
    result = build_ensemble(chosen, list(val_df.ImageID), y_val, test_ids=list(ctx.data.test.ImageID), **options)
    submission = result.write_submission(ctx.run_dir / "submission.csv")
    info = {"weights": result.weights}
    if ctx.cross_validated:  # weights and threshold tuned on the out-of-fold rows; the honest score refits them per fold
        from mlc_utils.evaluation.ensemble import cross_fitted_ensemble_f1
        honest = cross_fitted_ensemble_f1(chosen, list(val_df.ImageID), y_val, ctx.scored_folds, **options)
        info.update(oof=True, tuned_in_sample=True, cross_fitted_f1=honest)
        ctx.headline(ensemble_cross_fitted_f1=honest)
        log(f"ensemble: {result.val_f1:.4f} with weights and threshold tuned on the out-of-fold rows, "
            f"{honest:.4f} with them fitted on the other folds")
    member = Member("ensemble", "ensemble", ctx.stage_dir, result.val_ids, result.val_probs, result.test_ids,
                    result.test_probs, info=info)
    save_member(member, digest([[m.key for m in chosen], result.weights]))
    log(f"submission: {submission} ({len(result.test_ids)} rows)")
    return result, candidates, member, submission




def best_per_input(members: list[Member], y_val: np.ndarray) -> pd.DataFrame:
    """The paper's Table 2: the best validation sample-F1 for image, caption and image+caption inputs."""
    groups = {"image": ("image",), "caption": ("caption",), "image+caption": ("fusion", "late_fusion", "ensemble")}
    rows = []
    for name, kinds in groups.items():
        pool = [m for m in members if m.kind in kinds]
        if not pool:
            continue
        scored = [(m, metrics.tune_global_threshold(y_val, m.val_probs)) for m in pool]
        best, (t, tuned) = max(scored, key=lambda item: item[0].score(y_val))
        paper = PAPER_TABLE2.get(name)
        rows.append({"input": name, "best model": best.name, F1_AT_05: best.score(y_val),
                     F1_TUNED: tuned, "paper (tuned, in-sample)": f"{paper[1]:.4f} ({paper[0]})" if paper else "not quoted"})
    return pd.DataFrame(rows)
