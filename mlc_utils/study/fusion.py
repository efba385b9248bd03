"""The fusion stage (05_fusion): the paper's concat and bilinear heads, and late fusion, on two members."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from mlc_utils.core.fingerprint import digest
from mlc_utils.evaluation.ensemble import Member
from mlc_utils.study.members import cross_fit_member, member_model, reuse_or_train, save_member
from mlc_utils.train.config import BEST_CHECKPOINT, WHOLE_MODEL


def sub_model_outputs(ctx, member: Member, fusion_input: str, ids_by_split: dict[str, list[str]]) -> dict:
    """A sub-model's logits or penultimate features on each split's rows, cached beside the fusion stage.

    Image members saved whole (a head trained on cached backbone features) read their backbone outputs from
    the feature cache; others run their checkpoint over the rows once. The cache file is keyed by the member's own key.
    """
    cache = ctx.stage_dir / "inputs" / f"{member.name.replace(':', '_')}-{fusion_input}-{member.key}.npz"
    if cache.is_file():
        with np.load(cache) as saved:
            if all(list(saved[f"{s}_ids"].astype(str)) == list(ids) for s, ids in ids_by_split.items()):
                return {s: saved[s] for s in ids_by_split}
    from mlc_utils.models.fusion import compute_outputs
    model = member_model(member)
    root = ctx.params.data_path(ctx.root)
    out = {}
    for split, ids in ids_by_split.items():
        if member.kind == "image" and member.checkpoint == WHOLE_MODEL:
            from mlc_utils.train.features import FeatureCache, cached_features, head_outputs
            features = cached_features(model, root, ids, "center", ctx.inference,
                                       FeatureCache(Path(ctx.root, ctx.params.image.cache_dir, "features")))
            out[split] = features if fusion_input == "features" else head_outputs(model, features, ctx.inference)
        elif member.kind == "image":
            from mlc_utils.data.images import image_dataset
            dataset = image_dataset(root, ids, None, model.spec["data"], num_classes=ctx.params.num_classes)
            out[split] = compute_outputs(model, dataset, fusion_input, ctx.inference,
                                         name=f"{member.name} {fusion_input}, {split} rows")
        else:
            from mlc_utils.models.caption import caption_outputs
            from mlc_utils.models.fusion import sub_model_output
            out[split] = caption_outputs(model, _captions(ctx, ids), ctx.inference,
                                         lambda m, batch: sub_model_output(m, batch, fusion_input),
                                         name=f"{member.name} {fusion_input}, {split} rows")
    from mlc_utils.core.io import atomic_save
    arrays = {**out, **{f"{s}_ids": np.array(ids) for s, ids in ids_by_split.items()}}
    atomic_save(cache, lambda tmp: np.savez(tmp, **arrays))
    return out



def _captions(ctx, ids) -> list[str]:
    table = pd.concat([ctx.data.train[["ImageID", "Caption"]], ctx.data.test[["ImageID", "Caption"]]])
    return table.set_index("ImageID").loc[list(ids), "Caption"].tolist()



def fusion_config(ctx, head: str):
    return ctx.params.fusion.training(**ctx.params.training_defaults())



def train_fusion_heads(ctx, image: Member, caption: Member, log=print) -> list[Member]:
    """The paper's heads (concat, bilinear) on the two sub-models' outputs, trained on the train rows.

    With ``split.folds`` each head is stacked: trained per fold on the sub-models' out-of-fold logits
    of the other folds' rows, so it never learns from outputs of a model that trained on their rows.
    """
    fusion_params = ctx.params.fusion
    if fusion_params.mode == "end_to_end":
        return [train_fusion_end_to_end(ctx, image, caption, head, log) for head in fusion_params.heads]
    if ctx.cross_validated:
        return [_stacked_head(ctx, image, caption, head, log) for head in fusion_params.heads]
    train_df, val_df, y_train, y_val = ctx.labelled_folds()
    ids = {"train": list(train_df.ImageID), "val": list(val_df.ImageID), "test": list(ctx.data.test.ImageID)}
    members = []
    for head in fusion_params.heads:
        cfg = fusion_config(ctx, head)
        out_dir = ctx.stage_dir / head

        def run(head=head, cfg=cfg, out_dir=out_dir):
            image_inputs = sub_model_outputs(ctx, image, fusion_params.fusion_input, ids)
            caption_inputs = sub_model_outputs(ctx, caption, fusion_params.fusion_input, ids)
            return _fit_head(ctx, head, cfg, image_inputs, caption_inputs, ids, {"train": y_train, "val": y_val},
                             out_dir, log, image, caption)
        members.append(reuse_or_train(ctx, out_dir, _head_config(ctx, head, cfg, image, caption), run, log, kind="fusion"))
    return members


def _head_config(ctx, head: str, cfg, image: Member, caption: Member) -> dict:
    return {"head": head, "input": ctx.params.fusion.fusion_input, "image": image.name, "caption": caption.name,
            "image_key": image.key, "caption_key": caption.key, "train": asdict(cfg)}


def _fit_head(ctx, head: str, cfg, image_inputs: dict, caption_inputs: dict, ids: dict, targets: dict,
              out_dir: Path, log, image: Member, caption: Member) -> Member:
    """One fusion head trained on the ``train`` inputs, predicting the ``val`` and ``test`` rows."""
    from mlc_utils.evaluation.predict import predict_probs
    from mlc_utils.models.fusion import ArrayPairDataset, PrecomputedFusion
    from mlc_utils.train.loop import fit
    fusion_input = ctx.params.fusion.fusion_input
    sets = {s: ArrayPairDataset(image_inputs[s], caption_inputs[s], targets.get(s), ctx.params.num_classes)
            for s in ("train", "val", "test")}
    model = PrecomputedFusion(head, image_inputs["train"].shape[1], caption_inputs["train"].shape[1], ctx.params.num_classes)
    log(f"fusion:{head} on {fusion_input} ({image_inputs['train'].shape[1]} + {caption_inputs['train'].shape[1]} inputs)")
    fit(model, sets["train"], sets["val"], cfg, out_dir)
    probs = {s: predict_probs(model, sets[s], ctx.inference, name=f"fusion:{head}") for s in ("val", "test")}
    return Member(f"fusion:{head}", "fusion", out_dir, ids["val"], probs["val"], ids["test"], probs["test"],
                  info={"image": image.name, "caption": caption.name, "input": fusion_input}, checkpoint=BEST_CHECKPOINT)


def oof_logits(member: Member, ids, split: str) -> np.ndarray:
    """A member's probabilities of ``ids`` (some of its validation rows, or its test rows) as logits
    (float32): the stacking heads' inputs."""
    from mlc_utils.evaluation.ensemble import subset
    p = member.probs_for(ids, "test") if split == "test" else subset(member, ids).val_probs
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return (np.log(p) - np.log1p(-p)).astype(np.float32)


def _stacked_head(ctx, image: Member, caption: Member, head: str, log) -> Member:
    cfg = fusion_config(ctx, head)
    test_ids = list(ctx.data.test.ImageID)

    def fit_fold(rows, fold_dir):
        train_df, val_df, y_train, y_val = rows
        ids = {"train": list(train_df.ImageID), "val": list(val_df.ImageID), "test": test_ids}
        inputs = [{s: oof_logits(m, ids[s], "test" if s == "test" else "val") for s in ids} for m in (image, caption)]
        return _fit_head(ctx, head, cfg, *inputs, ids, {"train": y_train, "val": y_val}, fold_dir, log, image, caption)
    return cross_fit_member(ctx, f"fusion:{head}", "fusion", ctx.stage_dir / head,
                            {**_head_config(ctx, head, cfg, image, caption), "stacked": "out-of-fold"}, fit_fold, log)



def train_fusion_end_to_end(ctx, image: Member, caption: Member, head: str, log=print) -> Member:
    """Both sub-models fine-tuned through the fusion head (GPU-sized; the CPU path is ``frozen_submodels``)."""
    from mlc_utils.data.images import image_dataset
    from mlc_utils.evaluation.predict import predict_probs
    from mlc_utils.models.caption import caption_dataset_for
    from mlc_utils.models.fusion import FusionModel, ImageCaptionDataset
    from mlc_utils.train.loop import fit
    fusion_params = ctx.params.fusion
    cfg = fusion_config(ctx, head)
    out_dir = ctx.stage_dir / f"{head}-end_to_end"
    config = {"head": head, "input": fusion_params.fusion_input, "mode": "end_to_end", "image": image.name,
              "caption": caption.name, "image_key": image.key, "caption_key": caption.key, "train": asdict(cfg)}

    def run():
        train_df, val_df, y_train, y_val = ctx.labelled_folds()
        root = ctx.params.data_path(ctx.root)
        image_model, caption_model = member_model(image), member_model(caption)
        model = FusionModel(image_model, caption_model, head, fusion_params.fusion_input, "end_to_end", ctx.params.num_classes)

        def pair(frame, targets, train):
            images = image_dataset(root, list(frame.ImageID), targets, image_model.spec["data"], train=train,
                                   num_classes=ctx.params.num_classes)
            return ImageCaptionDataset(images, caption_dataset_for(caption_model, list(frame.Caption), targets))
        sets = {"train": pair(train_df, y_train, True), "val": pair(val_df, y_val, False),
                "test": pair(ctx.data.test, None, False)}
        fit(model, sets["train"], sets["val"], cfg, out_dir)
        probs = {s: predict_probs(model, sets[s], ctx.inference, name=f"fusion:{head}-e2e, {s} rows")
                 for s in ("val", "test")}
        return Member(f"fusion:{head}-e2e", "fusion", out_dir, list(val_df.ImageID), probs["val"],
                      list(ctx.data.test.ImageID), probs["test"], info={"mode": "end_to_end"}, checkpoint=BEST_CHECKPOINT)
    return reuse_or_train(ctx, out_dir, config, run, log, kind="fusion")



def late_fusion_member(ctx, image: Member, caption: Member) -> tuple[Member, object]:
    """The baseline: a weighted average of the two models' probabilities, weight tuned on validation."""
    from mlc_utils.evaluation.late_fusion import tune_late_fusion
    val_df, y_val = ctx.scored_rows()
    val_ids = list(val_df.ImageID)
    p_img, p_cap = image.probs_for(val_ids, "val"), caption.probs_for(val_ids, "val")
    result = tune_late_fusion(y_val, p_img, p_cap)
    test_ids = list(ctx.data.test.ImageID)
    info = {"image_weight": result.weight, "threshold": result.threshold}
    if ctx.cross_validated:  # weight and threshold tuned on the out-of-fold rows they score; and the honest score
        from mlc_utils.evaluation.ensemble import cross_fitted_f1

        def fit_predict(fit, score):
            tuned = tune_late_fusion(y_val[fit], p_img[fit], p_cap[fit])
            return tuned.apply(p_img[score], p_cap[score]), tuned.threshold
        info.update(oof=True, tuned_in_sample=True, cross_fitted_f1=cross_fitted_f1(y_val, ctx.scored_folds, fit_predict))
    member = Member("late fusion", "late_fusion", ctx.stage_dir / "late_fusion", val_ids, result.apply(p_img, p_cap),
                    test_ids, result.apply(image.probs_for(test_ids, "test"), caption.probs_for(test_ids, "test")),
                    info=info)
    save_member(member, digest([image.key, caption.key, result.weight]))
    return member, result
