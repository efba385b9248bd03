"""The study's trained models as *members*: saved, keyed by what made them, reused when unchanged.

Every trained model of the study (an image backbone, the caption model, a fusion head, an ablation
variant) becomes a *member*: a folder with its checkpoint, ``log.csv``, ``val_probs.npz`` and
``test_probs.npz`` (ImageIDs + probabilities) and ``member.json``. Later stages read members, never
notebook variables. A member whose inputs are unchanged (its ``key``: configuration, split and
data) is reused instead of retrained, so the ablation's baseline and re-runs cost nothing.
The key also holds a hash of the source of the code that trains it (:data:`MEMBER_CODE`) and, for
members that read images, of the image files' sizes and modification times: edit the training loop or
replace an image, and the next run retrains instead of reporting old numbers.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from mlc_utils.core.fingerprint import data_fingerprint, digest, source_digest
from mlc_utils.core.io import atomic_save, atomic_write_text, sha256_file
from mlc_utils.core.progress import MemberEnded, MemberStarted, emit
from mlc_utils.evaluation.ensemble import FOLD_DIR, Member
from mlc_utils.evaluation.probs import load_probs, save_probs
from mlc_utils.train.config import BEST_CHECKPOINT, WHOLE_MODEL  # what a member names as its checkpoint

MEMBER_FILE = "member.json"

# the code each kind of member is made by (modules, or packages with all their modules): part of its key
_TRAINING_CODE = ("mlc_utils.core", "mlc_utils.data.csvio", "mlc_utils.data.labels", "mlc_utils.data.split",
                  "mlc_utils.models.checkpoint", "mlc_utils.evaluation", "mlc_utils.train",
                  "mlc_utils.study.context", "mlc_utils.study.members")
MEMBER_CODE = {
    "image": _TRAINING_CODE + ("mlc_utils.data.images", "mlc_utils.models.image", "mlc_utils.models.weights",
                               "mlc_utils.models.hub", "mlc_utils.study.image"),
    "caption": _TRAINING_CODE + ("mlc_utils.data.captions", "mlc_utils.data.caption_tokens", "mlc_utils.models.caption",
                                 "mlc_utils.models.tfidf", "mlc_utils.models.hub", "mlc_utils.study.caption"),
    "fusion": _TRAINING_CODE + ("mlc_utils.data", "mlc_utils.models", "mlc_utils.study.fusion"),
}


def member_key(ctx, config: dict, kind: str, rows: dict | None = None) -> str:
    """What a member's result depends on: its configuration, the code that trains a member of this
    ``kind``, the split file (or, for one cross-validation fold, the ImageIDs of its ``rows``), the
    data CSVs and (for members that read images) the image files."""
    root = ctx.params.data_path(ctx.root)
    split = sha256_file(ctx.dir_of("split") / "split.csv") if rows is None else digest(rows)
    return digest({"config": config, "code": source_digest(MEMBER_CODE[kind]), "split": split,
                   "data": data_fingerprint(root, images=kind != "caption"), "num_classes": ctx.params.num_classes})


def save_member(member: Member, key: str) -> Member:
    member.key = key
    save_probs(member.out_dir / "val_probs.npz", member.val_ids, member.val_probs)
    save_probs(member.out_dir / "test_probs.npz", member.test_ids, member.test_probs)
    atomic_write_text(member.out_dir / MEMBER_FILE, json.dumps(
        {"name": member.name, "kind": member.kind, "key": key, "seconds": round(member.seconds, 2),
         "checkpoint": member.checkpoint, "info": member.info}, indent=1, default=str))
    return member


def load_member(out_dir: Path, key: str | None = None) -> Member | None:
    """The saved member in ``out_dir``; None when absent, incomplete, or saved under another key."""
    out_dir = Path(out_dir)
    try:
        meta = json.loads((out_dir / MEMBER_FILE).read_text())
        val, test = load_probs(out_dir / "val_probs.npz"), load_probs(out_dir / "test_probs.npz")
    except (OSError, ValueError):
        return None
    if key is not None and meta.get("key") != key:
        return None
    checkpoint = meta["checkpoint"] if "checkpoint" in meta else _found_checkpoint(out_dir)
    return Member.from_tables(meta["name"], val, test, kind=meta["kind"], out_dir=out_dir,
                              seconds=meta.get("seconds", 0.0), reused=True, info=meta.get("info", {}),
                              key=meta.get("key", ""), checkpoint=checkpoint)


def _found_checkpoint(out_dir: Path) -> str:
    """The checkpoint of a member saved before member.json named it: the whole model where one was
    saved (a head on frozen features keeps its own best epoch beside it), else the best epoch."""
    return next((name for name in (WHOLE_MODEL, BEST_CHECKPOINT) if (out_dir / name).is_file()), "")


def reuse_or_train(ctx, out_dir: Path, config: dict, train: Callable[[], Member], log=print,
                   alternates: tuple[Path, ...] = (), *, kind: str, rows: dict | None = None,
                   name: str = "", fold: tuple[int, int] = (0, 0)) -> Member:
    """Load the member saved under the same key (in ``out_dir`` or an ``alternates`` folder), else train it.

    ``kind`` (a key of :data:`MEMBER_CODE`) says which code and data the member is made from;
    ``rows`` (``{"train": ids, "val": ids}``) keys a cross-validation fold by its rows instead of the split file.
    ``name`` (default: the folder's) and ``fold`` ((k, K), 1-based) name it in the events ``run`` reads
    (:class:`~mlc_utils.core.progress.MemberStarted`, for the time left and to say where a stop happened).
    """
    import shutil
    key = member_key(ctx, config, kind, rows)
    name = name or Path(out_dir).name
    saved = load_member(out_dir, key)
    if saved is not None:
        log(f"{saved.name}: unchanged configuration, code, split and data; reusing {out_dir}")
        emit(MemberEnded(name, *fold, reused=True))
        return saved
    for other in alternates:
        found = load_member(other, key)
        if found is not None:
            log(f"{out_dir.name}: same configuration as {other}; reusing its result")
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in ("log.csv", "metrics.json", BEST_CHECKPOINT, WHOLE_MODEL):
                if (other / name).is_file():
                    (out_dir / name).unlink(missing_ok=True)
                    try:  # checkpoints are large: a hard link where the filesystem allows
                        os.link(other / name, out_dir / name)
                    except OSError:
                        atomic_save(out_dir / name, lambda tmp, name=name: shutil.copyfile(other / name, tmp))
            found.name, found.out_dir = out_dir.name, out_dir
            emit(MemberEnded(name, *fold, reused=True))
            return save_member(found, key)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MEMBER_FILE).unlink(missing_ok=True)
    # every member starts from the study's seed: its initial weights (a fresh head, a model from
    # scratch) must depend on its key alone, not on what the kernel happened to train before it
    from mlc_utils.core.device import seed_everything
    seed_everything(ctx.params.seed)
    emit(MemberStarted(name, *fold))
    started = time.time()
    member = train()
    member.seconds = time.time() - started
    save_member(member, key)
    emit(MemberEnded(name, *fold))
    return member


def cross_fit_member(ctx, name: str, kind: str, out_dir: Path, config: dict,
                     fit_fold: Callable[[tuple, Path], Member], log=print) -> Member:
    """The member ``name`` trained once per cross-validation fold, as one out-of-fold member.

    Fold k trains on the other folds' rows (``fit_fold((train_df, val_df, y_train, y_val), fold_dir)``)
    and is saved in ``out_dir/fold<k>`` under a key of its own rows, so an interrupted or repeated run
    reuses every fold it already has. The member in ``out_dir`` holds each labelled row's probabilities
    from the fold model that did not train on it, and test probabilities averaged over the fold models.
    """
    from mlc_utils.evaluation.ensemble import out_of_fold
    out_dir = Path(out_dir)
    folds = []
    all_rows = ctx.cv_labelled_folds()
    for k, rows in enumerate(all_rows):
        fold_dir = out_dir / FOLD_DIR.format(k)
        ids = {"train": list(rows[0].ImageID), "val": list(rows[1].ImageID)}
        log(f"{name}: fold {k + 1}, {len(ids['train'])} train / {len(ids['val'])} out-of-fold rows")
        folds.append(reuse_or_train(ctx, fold_dir, config, lambda rows=rows, fold_dir=fold_dir: fit_fold(rows, fold_dir),
                                    log, kind=kind, rows=ids, name=name, fold=(k + 1, len(all_rows))))
    member = out_of_fold(name, folds, list(ctx.data.train.ImageID), kind=kind, out_dir=out_dir)
    return save_member(member, digest([m.key for m in folds]))


def member_model(member: Member):
    """The model ``member.checkpoint`` holds, in eval mode."""
    from mlc_utils.models.checkpoint import load_checkpoint
    if not member.checkpoint:
        raise FileNotFoundError(f"{member.name}: no checkpoint of one model in {member.out_dir} (a cross-validated, "
                                "re-predicting or combined member)")
    return load_checkpoint(member.out_dir / member.checkpoint)[0].eval()




