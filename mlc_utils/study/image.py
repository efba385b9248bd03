"""The image stage (03_image): train or reuse each backbone of ``image.models`` as a member.

``mode: frozen_backbone`` trains the head on cached backbone features (CPU-fast); ``finetune`` trains the
whole model, through torchrun when ``image.gpus > 1`` or ``image.launcher: torchrun``.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from mlc_utils.evaluation.ensemble import Member
from mlc_utils.study.members import cross_fit_member, load_member, reuse_or_train
from mlc_utils.train.config import BEST_CHECKPOINT, WHOLE_MODEL, merge_settings


def image_train_config(ctx, spec):
    """TrainConfig = the study's seed, threshold and device, then the stage's ``image.train``, then the
    model's own ``train``."""
    return merge_settings(f"image.models[{spec.label}].train", ctx.params.training_defaults(), ctx.params.image.train, spec.train)


def train_image(ctx, spec, out_dir: Path | None = None, log=print, alternates: tuple[Path, ...] = (),
                cross_validate: bool | None = None) -> Member:
    """Train (or reuse) one image model of ``image.models`` and predict validation and test rows.

    ``mode: frozen_backbone`` trains the head on cached backbone features (CPU-fast); ``finetune`` trains
    the whole model, through torchrun when ``image.gpus > 1`` (or ``launcher: torchrun``). Validation and test probabilities
    average the TTA views (``image.tta``; ``center`` only when the model's ``tta`` is off).
    ``cross_validate`` (default: whether the split has ``split.folds``) trains one model per fold
    and returns the out-of-fold member; False trains on the holdout (the ablation does).
    """
    cfg = image_train_config(ctx, spec)
    stage = ctx.params.image
    views = list(stage.tta) if spec.tta else ["center"]
    out_dir = Path(out_dir or ctx.stage_dir / spec.label)
    # the label names the result but does not change it: left out of the key so equal runs are shared
    config = {"spec": {k: v for k, v in asdict(spec).items() if k != "label"}, "train": asdict(cfg),
              "views": views, "gpus": stage.gpus,
              **({"launcher": stage.launcher} if stage.launcher != "auto" else {})}
    if ctx.cross_validated if cross_validate is None else cross_validate:
        return cross_fit_member(ctx, spec.label, "image", out_dir, config,
                                lambda rows, fold_dir: _train_image(ctx, spec, cfg, views, fold_dir, log, rows), log)
    return reuse_or_train(ctx, out_dir, config,
                          lambda: _train_image(ctx, spec, cfg, views, out_dir, log, ctx.labelled_folds()), log,
                          alternates, kind="image")



def _train_image(ctx, spec, cfg, views, out_dir: Path, log, rows: tuple) -> Member:
    """One model trained on ``rows`` = (train_frame, val_frame, y_train, y_val)."""
    from mlc_utils.evaluation.predict import predict_images
    from mlc_utils.models import create_image_model
    root = ctx.params.data_path(ctx.root)
    train_df, val_df, y_train, y_val = rows
    test_ids = list(ctx.data.test.ImageID)
    model = create_image_model(spec.model_config(), ctx.params.num_classes, views)
    log(f"{spec.label}: {spec.name} ({model.spec['weights']}), {spec.mode}, {spec.img_size}px, "
        f"{len(train_df)} train / {len(val_df)} val images")
    if spec.mode == "frozen_backbone":
        from mlc_utils.train.features import FeatureCache, fit_head, predict_head
        cache = FeatureCache(Path(ctx.root, ctx.params.image.cache_dir, "features"))
        _, val_probs = fit_head(model, root, list(train_df.ImageID), y_train, list(val_df.ImageID), y_val, cfg,
                                out_dir, ctx.inference, views=views, cache=cache)
        test_probs = predict_head(model, root, test_ids, views, ctx.inference, cache)
        info = {"feature_cache": {"hits": cache.hits, "misses": cache.misses, "computed_images": cache.computed}}
        checkpoint = WHOLE_MODEL
    else:
        if ctx.params.image.torchrun_processes():
            model = _fit_torchrun(ctx, spec, cfg, views, out_dir, log, rows)
        else:
            from mlc_utils.data.images import image_dataset
            from mlc_utils.train.loop import fit
            auto_augment = spec.auto_augment or None
            train_set = image_dataset(root, list(train_df.ImageID), y_train, model.spec["data"], train=True,
                                      auto_augment=auto_augment, num_classes=ctx.params.num_classes)
            val_set = image_dataset(root, list(val_df.ImageID), y_val, model.spec["data"], train=False,
                                    num_classes=ctx.params.num_classes)
            teacher = _teacher(spec)
            fit(model, train_set, val_set, cfg, out_dir, teacher=teacher)
        val_probs = predict_images(model, root, list(val_df.ImageID), views, ctx.inference, progress=cfg.progress)
        test_probs = predict_images(model, root, test_ids, views, ctx.inference, progress=cfg.progress)
        info, checkpoint = {}, BEST_CHECKPOINT
    info.update(weights=model.spec["weights"], mode=spec.mode, views=views)
    return Member(spec.label, "image", out_dir, list(val_df.ImageID), val_probs, test_ids, test_probs, info=info,
                  checkpoint=checkpoint)



def _teacher(spec):
    if not spec.teacher:
        return None
    from mlc_utils.models.checkpoint import load_checkpoint
    return load_checkpoint(spec.teacher)[0]



def _fit_torchrun(ctx, spec, cfg, views, out_dir: Path, log, rows: tuple):
    """The same training through ``torchrun -m mlc_utils.train`` (output streamed here); its
    ``config.json`` in ``out_dir`` reruns it from the shell, on this node or several (README).

    The rows it trains and validates on are written beside it as ``split.csv`` (the holdout's, or
    one cross-validation fold's), so a fold trains through torchrun as the holdout does."""
    from mlc_utils.data.split import save_split, split_frame
    from mlc_utils.models.checkpoint import load_checkpoint
    from mlc_utils.train.distributed import launch_torchrun
    train_df, val_df = rows[0], rows[1]
    labelled = list(ctx.data.train.ImageID)
    position = {image_id: n for n, image_id in enumerate(labelled)}
    split_path = save_split(split_frame(labelled, [position[i] for i in train_df.ImageID],
                                        [position[i] for i in val_df.ImageID]), Path(out_dir) / "split.csv")
    config = {
        "model": spec.as_dict(), "tta_views": views,
        "data": {"root": str(ctx.params.data_path(ctx.root).resolve()), "split": str(split_path),
                 "num_classes": ctx.params.num_classes, "auto_augment": spec.auto_augment or None},
        "train": asdict(cfg), "out_dir": str(out_dir), "teacher": spec.teacher or None,
    }
    code = launch_torchrun(config, ctx.params.image.torchrun_processes(), out_dir, echo=log)
    if code != 0:
        raise RuntimeError(f"{spec.label}: torchrun exited with status {code}; its log is above and in {out_dir}")
    return load_checkpoint(out_dir / BEST_CHECKPOINT)[0]



def image_members(ctx) -> list[Member]:
    """The image stage's members, in ``image.models`` order (a missing one is an error naming it)."""
    members = []
    for spec in ctx.params.image.models:
        member = load_member(ctx.dir_of("image") / spec.label)
        if member is None:
            raise FileNotFoundError(f"image model '{spec.label}' has no saved predictions in "
                                    f"{ctx.dir_of('image') / spec.label}: run the image stage first")
        members.append(member)
    return members



def pick_image_member(ctx, y_val: np.ndarray) -> Member:
    """``fusion.image_model`` by label, else the image model with the best validation sample-F1."""
    members = image_members(ctx)
    wanted = ctx.params.fusion.image_model
    if wanted:
        found = [m for m in members if m.name == wanted]
        if not found:
            raise ValueError(f"fusion.image_model: '{wanted}' is not one of the image models "
                             f"{[m.name for m in members]}")
        return found[0]
    return max(members, key=lambda m: m.score(y_val))
