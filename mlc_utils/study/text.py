"""The caption stage (04_text): fine-tune the caption model of ``text`` as a member."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from mlc_utils.core.config import to_dict
from mlc_utils.evaluation.ensemble import Member
from mlc_utils.study.members import cross_fit_member, load_member, reuse_or_train


def text_member_name(ctx) -> str:
    return "caption:" + Path(str(ctx.params.text.model_name)).name



def train_text(ctx, log=print) -> Member:
    """Fine-tune the caption model of ``text`` (or reuse it) and predict validation and test rows;
    with ``split.folds``, one model per fold and the out-of-fold member."""
    text_params = ctx.params.text
    cfg = text_params.training(seed=ctx.params.seed, threshold=ctx.params.threshold)
    out_dir = ctx.stage_dir / "caption"
    config = {"text": to_dict(text_params), "train": asdict(cfg)}
    if ctx.cross_validated:
        return cross_fit_member(ctx, text_member_name(ctx), "text", out_dir, config,
                                lambda rows, fold_dir: _train_text(ctx, text_params, cfg, fold_dir, log, rows), log)
    return reuse_or_train(ctx, out_dir, config,
                          lambda: _train_text(ctx, text_params, cfg, out_dir, log, ctx.labelled_folds()), log,
                          kind="text")


def _train_text(ctx, text_params, cfg, out_dir: Path, log, rows: tuple) -> Member:
    """One caption model trained on ``rows`` = (train_frame, val_frame, y_train, y_val)."""
    from mlc_utils.data.caption_tokens import trim_padding_collate
    from mlc_utils.evaluation.predict import predict_probs
    from mlc_utils.models.text import caption_dataset_for, create_caption_model
    from mlc_utils.train.loop import fit
    train_df, val_df, y_train, y_val = rows
    test = ctx.data.test
    model = create_caption_model(text_params.model_name, ctx.params.num_classes, text_params.pooling,
                                 text_params.pretrained, text_params.dropout, text_params.max_length,
                                 text_params.cleaning)
    log(f"{text_member_name(ctx)}: {model.source} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"parameters), {len(train_df)} train / {len(val_df)} val captions")
    sets = {name: caption_dataset_for(model, list(frame.Caption), targets)
            for name, frame, targets in (("train", train_df, y_train), ("val", val_df, y_val), ("test", test, None))}
    fit(model, sets["train"], sets["val"], cfg, out_dir, collate_fn=trim_padding_collate)

    def predict(name: str):
        return predict_probs(model, sets[name], batch_size=cfg.batch_size * 2, device=cfg.device,
                             collate_fn=trim_padding_collate)
    return Member(text_member_name(ctx), "text", out_dir, list(val_df.ImageID), predict("val"), list(test.ImageID),
                  predict("test"), info={"truncated_val_captions": sets["val"].truncated_fraction})


def caption_examples(ctx, member: Member, n: int = 8) -> pd.DataFrame:
    """Validation captions, raw and as the model reads them, with true and predicted labels."""
    val_df, _ = ctx.scored_rows()
    cleaner = ctx.params.text.cleaning
    pick = np.random.default_rng(ctx.params.seed).choice(len(val_df), size=min(n, len(val_df)), replace=False)
    predicted = ctx.labels.decode(member.val_probs[pick], ctx.params.threshold, at_least_one=True)
    return pd.DataFrame({"ImageID": val_df.ImageID.iloc[pick].to_numpy(),
                         "caption": [" ".join(str(c).split()) for c in val_df.Caption.iloc[pick]],
                         "cleaned": [cleaner(c) for c in val_df.Caption.iloc[pick]],
                         "labels": [ctx.labels.format(l) for l in val_df.Labels.iloc[pick]],
                         "predicted": [ctx.labels.format(p) for p in predicted]})



def text_member(ctx) -> Member:
    member = load_member(ctx.dir_of("text") / "caption")
    if member is None:
        raise FileNotFoundError(f"no caption model in {ctx.dir_of('text') / 'caption'}: run the text stage first")
    return member
