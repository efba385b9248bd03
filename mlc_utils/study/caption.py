"""The caption stage (04_caption): the caption members of ``caption.members`` (finetune, frozen_encoder, tfidf)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mlc_utils.core.config import to_dict
from mlc_utils.core.fingerprint import digest
from mlc_utils.evaluation.ensemble import Member
from mlc_utils.study.members import cross_fit_member, load_member, reuse_or_train
from mlc_utils.study.params import caption_member_name
from mlc_utils.train.config import BEST_CHECKPOINT, WHOLE_MODEL


def _member_dir(ctx, kind: str) -> Path:
    return ctx.dir_of("caption") / ("caption" if kind == "finetune" else f"caption-{kind}")


def train_caption_members(ctx, log=print) -> list[Member]:
    """Every caption member of ``caption.members`` (trained, or reused when unchanged), validation and
    test probabilities; with ``split.folds``, one model per fold and the out-of-fold member."""
    caption_params = ctx.params.caption
    members = []
    for kind in caption_params.members:
        trainer = CAPTION_TRAINERS[kind]
        cfg = trainer.config(ctx)
        config = {"caption": to_dict(caption_params), "member": kind, "train": asdict(cfg) if cfg else None}
        out_dir, name = _member_dir(ctx, kind), caption_member_name(ctx.params.caption.model_name, kind)
        if ctx.cross_validated:
            members.append(cross_fit_member(
                ctx, name, "caption", out_dir, config,
                lambda rows, fold_dir, trainer=trainer, cfg=cfg, name=name: trainer.fit(ctx, name, cfg, fold_dir, log, rows),
                log))
        else:
            members.append(reuse_or_train(
                ctx, out_dir, config,
                lambda trainer=trainer, cfg=cfg, out_dir=out_dir, name=name: trainer.fit(
                    ctx, name, cfg, out_dir, log, ctx.labelled_folds()),
                log, kind="caption"))
    return members


def _create_model(ctx):
    from mlc_utils.models.caption import create_caption_model
    return create_caption_model(ctx.params.caption.model_config(), ctx.params.num_classes)


def _fit_finetuned(ctx, name: str, cfg, out_dir: Path, log, rows: tuple) -> Member:
    """The encoder and a linear head fine-tuned on ``rows`` = (train_frame, val_frame, y_train, y_val)."""
    from mlc_utils.core.inference import probabilities
    from mlc_utils.data.caption_tokens import trim_padding_collate
    from mlc_utils.models.caption import caption_dataset_for, caption_outputs
    from mlc_utils.train.loop import fit
    train_df, val_df, y_train, y_val = rows
    test = ctx.data.test
    model = _create_model(ctx)
    log(f"{name}: {model.source} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"parameters), {len(train_df)} train / {len(val_df)} val captions")
    sets = {split: caption_dataset_for(model, list(frame.Caption), targets)
            for split, frame, targets in (("train", train_df, y_train), ("val", val_df, y_val))}
    fit(model, sets["train"], sets["val"], cfg, out_dir, collate_fn=trim_padding_collate)

    def predict(frame):
        return caption_outputs(model, frame.Caption, ctx.inference, probabilities, name=f"{name} predictions", progress=False)
    return Member(name, "caption", out_dir, list(val_df.ImageID), predict(val_df), list(test.ImageID),
                  predict(test), info={"truncated_val_captions": sets["val"].truncated_fraction}, checkpoint=BEST_CHECKPOINT)


def _fit_frozen_encoder(ctx, name: str, cfg, out_dir: Path, log, rows: tuple) -> Member:
    """The encoder run once over every caption (no gradients); its linear head trained on the pooled
    embeddings of ``rows``. Cheap enough to repeat per fold: the embeddings are computed once per process."""
    import torch
    from torch.utils.data import TensorDataset

    from mlc_utils.evaluation.predict import predict_probs
    from mlc_utils.models.caption import CaptionEmbeddingHead
    from mlc_utils.models.checkpoint import save_model
    from mlc_utils.train.loop import fit
    train_df, val_df, y_train, y_val = rows
    model, embeddings = _caption_embeddings(ctx, log)
    log(f"{name}: linear head on the {model.feature_dim}-d embeddings of {model.source}, "
        f"{len(train_df)} train / {len(val_df)} val captions")

    def dataset(split: str, frame, targets=None):
        index = embeddings[split][0]
        x = torch.from_numpy(embeddings[split][1][[index[i] for i in frame.ImageID]])
        y = torch.zeros(len(x), ctx.params.num_classes) if targets is None else \
            torch.from_numpy(np.asarray(targets, dtype=np.float32))
        return TensorDataset(x, y)
    sets = {"train": dataset("train", train_df, y_train), "val": dataset("train", val_df, y_val),
            "test": dataset("test", ctx.data.test)}
    head = CaptionEmbeddingHead(model)  # shares model.head: training it trains the model's head
    fit(head, sets["train"], sets["val"], cfg, out_dir)
    save_model(model, out_dir / WHOLE_MODEL, params={**asdict(cfg), "mode": "frozen_encoder"})

    def predict(split: str):
        return predict_probs(head, sets[split], ctx.inference, name=f"{name} head")
    return Member(name, "caption", out_dir, list(val_df.ImageID), predict("val"), list(ctx.data.test.ImageID),
                  predict("test"), checkpoint=WHOLE_MODEL)


_EMBEDDINGS: dict[str, tuple] = {}
TFIDF_FILE = "model.joblib"   # the tfidf member's model (scikit-learn, not a torch checkpoint)


def _caption_embeddings(ctx, log) -> tuple:
    """The caption model and the pooled embeddings of every labelled and test caption, as
    ``{"train"|"test": ({ImageID: row}, array)}``; computed once per process and caption set."""
    from mlc_utils.models.caption import embed_captions
    data = ctx.data
    key = digest([to_dict(ctx.params.caption), ctx.params.num_classes, ctx.params.seed,
                  list(data.train.ImageID), list(data.train.Caption), list(data.test.ImageID), list(data.test.Caption)])
    if key not in _EMBEDDINGS:
        model = _create_model(ctx)
        log(f"embedding {len(data.train) + len(data.test)} captions with {model.source} (once for every fold)")
        _EMBEDDINGS.clear()  # one caption set at a time: the arrays are large
        _EMBEDDINGS[key] = (model, {split: ({image_id: n for n, image_id in enumerate(frame.ImageID)},
                                            embed_captions(model, list(frame.Caption), ctx.inference))
                                    for split, frame in (("train", data.train), ("test", data.test))})
    model, arrays = _EMBEDDINGS[key]
    return model, arrays


def _fit_tfidf(ctx, name: str, cfg, out_dir: Path, log, rows: tuple) -> Member:
    """Word and character TF-IDF n-grams with a logistic regression per label (seconds on a CPU)."""
    from mlc_utils.models.tfidf import TfidfCaptionClassifier
    train_df, val_df, y_train, _ = rows
    log(f"{name}: TF-IDF word 1-2 and character 2-5 grams, logistic regression per label (C "
        f"{ctx.params.caption.tfidf_c}), {len(train_df)} train / {len(val_df)} val captions")
    model = TfidfCaptionClassifier(ctx.params.num_classes, C=ctx.params.caption.tfidf_c,
                                   cleaning=ctx.params.caption.cleaning, seed=ctx.params.seed)
    model.fit(list(train_df.Caption), y_train)
    model.save(Path(out_dir) / TFIDF_FILE)
    return Member(name, "caption", Path(out_dir), list(val_df.ImageID), model.predict_proba(list(val_df.Caption)),
                  list(ctx.data.test.ImageID), model.predict_proba(list(ctx.data.test.Caption)),
                  checkpoint=TFIDF_FILE)


@dataclass(frozen=True)
class CaptionTrainer:
    """How one kind of caption member is trained: its TrainConfig (None: not trained by the training loop)
    and ``fit(ctx, name, cfg, out_dir, log, rows) -> Member``."""
    config: Callable
    fit: Callable


CAPTION_TRAINERS: dict[str, CaptionTrainer] = {
    "finetune": CaptionTrainer(lambda ctx: ctx.params.caption.training(**ctx.params.training_defaults()), _fit_finetuned),
    "frozen_encoder": CaptionTrainer(lambda ctx: ctx.params.caption.head_training(**ctx.params.training_defaults()),
                                     _fit_frozen_encoder),
    "tfidf": CaptionTrainer(lambda ctx: None, _fit_tfidf),
}


def caption_examples(ctx, member: Member, n: int = 8) -> pd.DataFrame:
    """Validation captions, raw and as the model reads them, with true and predicted labels."""
    val_df, _ = ctx.scored_rows()
    cleaner = ctx.params.caption.cleaning
    pick = np.random.default_rng(ctx.params.seed).choice(len(val_df), size=min(n, len(val_df)), replace=False)
    predicted = ctx.labels.decode(member.val_probs[pick], ctx.params.threshold, at_least_one=True)
    return pd.DataFrame({"ImageID": val_df.ImageID.iloc[pick].to_numpy(),
                         "caption": [" ".join(str(c).split()) for c in val_df.Caption.iloc[pick]],
                         "cleaned": [cleaner(c) for c in val_df.Caption.iloc[pick]],
                         "labels": [ctx.labels.format(l) for l in val_df.Labels.iloc[pick]],
                         "predicted": [ctx.labels.format(p) for p in predicted]})



def caption_members(ctx) -> list[Member]:
    """The caption stage's members, in ``caption.members`` order (a missing one is an error naming it)."""
    members = []
    for kind in ctx.params.caption.members:
        member = load_member(_member_dir(ctx, kind))
        if member is None:
            raise FileNotFoundError(f"no {kind} caption member in {_member_dir(ctx, kind)}: run the caption stage first")
        members.append(member)
    return members


def caption_member(ctx) -> Member:
    """The caption member the fusion heads read: the one with the best sample-F1 on the scored rows."""
    members = caption_members(ctx)
    if len(members) == 1:
        return members[0]
    _, y_val = ctx.scored_rows()
    return max(members, key=lambda m: m.score(y_val))
