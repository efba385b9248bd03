"""The study's stage steps: what each notebook does, as tested functions over a StageContext.

Every trained model of the study (an image backbone, the caption model, a fusion head, an ablation
variant) becomes a *member*: a folder with its checkpoint, ``log.csv``, ``val_probs.npz`` and
``test_probs.npz`` (ImageIDs + probabilities) and ``member.json``. Later stages read members, never
notebook variables. A member whose inputs are unchanged (its ``key``: configuration, split and
data) is reused instead of retrained, so the ablation's baseline and re-runs cost nothing.
The key also holds a hash of the source of the code that trains it (:data:`MEMBER_CODE`) and, for
members that read images, of the image files' sizes and modification times: edit the engine or
replace an image, and the next run retrains instead of reporting old numbers.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import metrics
from .fingerprint import data_fingerprint, digest, source_digest
from .io import atomic_write_text, sha256_file

MEMBER_FILE = "member.json"

# the code each kind of member is made by (modules or packages): part of its key
_COMMON_CODE = ("mlc_utils.config", "mlc_utils.csvio", "mlc_utils.labels", "mlc_utils.split", "mlc_utils.engine",
                "mlc_utils.losses", "mlc_utils.metrics", "mlc_utils.study")
MEMBER_CODE = {
    "image": _COMMON_CODE + ("mlc_utils.images", "mlc_utils.features", "mlc_utils.predict", "mlc_utils.train",
                             "mlc_utils.models.image", "mlc_utils.models.weights"),
    "text": _COMMON_CODE + ("mlc_utils.text", "mlc_utils.models.text"),
    "fusion": _COMMON_CODE + ("mlc_utils.images", "mlc_utils.text", "mlc_utils.models", "mlc_utils.ensemble"),
}


@dataclass
class Member:
    """One trained model's validation and test probabilities, aligned to ImageIDs."""
    name: str
    kind: str                      # image | text | fusion | late_fusion | ensemble
    out_dir: Path
    val_ids: list[str]
    val_probs: np.ndarray
    test_ids: list[str]
    test_probs: np.ndarray
    seconds: float = 0.0
    reused: bool = False
    info: dict = field(default_factory=dict)
    key: str = ""                  # what it was trained from (see member_key)

    def history(self) -> pd.DataFrame:
        path = self.out_dir / "log.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    def score(self, y_val: np.ndarray, threshold: float = 0.5) -> float:
        return metrics.sample_f1(y_val, self.val_probs, threshold)


def member_key(ctx, config: dict, kind: str) -> str:
    """What a member's result depends on: its configuration, the code that trains a member of this
    ``kind``, the split file, the data CSVs and (for members that read images) the image files."""
    root = ctx.params.data_path(ctx.root)
    return digest({"config": config, "code": source_digest(MEMBER_CODE[kind]),
                   "split": sha256_file(ctx.dir_of("split") / "split.csv"),
                   "data": data_fingerprint(root, images=kind != "text"), "num_classes": ctx.params.num_classes})


def save_member(member: Member, key: str) -> Member:
    from .ensemble import save_probs
    member.key = key
    save_probs(member.out_dir / "val_probs.npz", member.val_ids, member.val_probs)
    save_probs(member.out_dir / "test_probs.npz", member.test_ids, member.test_probs)
    atomic_write_text(member.out_dir / MEMBER_FILE, json.dumps(
        {"name": member.name, "kind": member.kind, "key": key, "seconds": round(member.seconds, 2),
         "info": member.info}, indent=1, default=str))
    return member


def load_member(out_dir: Path, key: str | None = None) -> Member | None:
    """The saved member in ``out_dir``; None when absent, incomplete, or saved under another key."""
    from .ensemble import load_probs
    out_dir = Path(out_dir)
    try:
        meta = json.loads((out_dir / MEMBER_FILE).read_text())
        val, test = load_probs(out_dir / "val_probs.npz"), load_probs(out_dir / "test_probs.npz")
    except (OSError, ValueError):
        return None
    if key is not None and meta.get("key") != key:
        return None
    return Member(meta["name"], meta["kind"], out_dir, val.ids, val.probs, test.ids, test.probs,
                  meta.get("seconds", 0.0), reused=True, info=meta.get("info", {}), key=meta.get("key", ""))


def reuse_or_train(ctx, out_dir: Path, config: dict, train: Callable[[], Member], log=print,
                   alternates: tuple[Path, ...] = (), *, kind: str) -> Member:
    """Load the member saved under the same key (in ``out_dir`` or an ``alternates`` folder), else train it.

    ``kind`` (a key of :data:`MEMBER_CODE`) says which code and data the member is made from.
    """
    import shutil
    key = member_key(ctx, config, kind)
    saved = load_member(out_dir, key)
    if saved is not None:
        log(f"{saved.name}: unchanged configuration, code, split and data; reusing {out_dir}")
        return saved
    for other in alternates:
        found = load_member(other, key)
        if found is not None:
            log(f"{out_dir.name}: same configuration as {other}; reusing its result")
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in ("log.csv", "metrics.json", "best.pt", "model.pt"):
                if (other / name).is_file():
                    (out_dir / name).unlink(missing_ok=True)
                    try:  # checkpoints are large: a hard link where the filesystem allows
                        os.link(other / name, out_dir / name)
                    except OSError:
                        shutil.copyfile(other / name, out_dir / name)
            found.name, found.out_dir = out_dir.name, out_dir
            return save_member(found, key)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MEMBER_FILE).unlink(missing_ok=True)
    started = time.time()
    member = train()
    member.seconds = time.time() - started
    return save_member(member, key)


# --------------------------------------------------------------------------------------------
# image models (03_image, 06_ablation)

def image_train_config(ctx, spec, extra: dict | None = None):
    """TrainConfig = study seed + the stage's ``image.train`` + the model's own ``train`` (+ ``extra``)."""
    from .engine import TrainConfig
    values = {"seed": ctx.params.seed, "threshold": ctx.params.threshold,
              **ctx.params.image.train, **spec.train, **(extra or {})}
    return TrainConfig.from_dict(values, f"image.models[{spec.label}].train")


def train_image(ctx, spec, out_dir: Path | None = None, log=print, alternates: tuple[Path, ...] = ()) -> Member:
    """Train (or reuse) one image model of ``image.models`` and predict validation and test rows.

    ``mode: frozen`` trains the head on cached backbone features (CPU-fast); ``finetune`` trains
    the whole model, through torchrun when ``image.gpus > 1``. Validation and test probabilities
    average the TTA views (``image.tta``; ``center`` only when the model's ``tta`` is off).
    """
    cfg = image_train_config(ctx, spec)
    stage = ctx.params.image
    views = list(stage.tta) if spec.tta else ["center"]
    out_dir = Path(out_dir or ctx.stage_dir / spec.label)
    # the label names the result but does not change it: left out of the key so equal runs are shared
    config = {"spec": {k: v for k, v in asdict(spec).items() if k != "label"}, "train": asdict(cfg),
              "views": views, "gpus": stage.gpus}
    return reuse_or_train(ctx, out_dir, config, lambda: _train_image(ctx, spec, cfg, views, out_dir, log), log,
                          alternates, kind="image")


def _frames(ctx):
    train_df, val_df = ctx.folds()
    return train_df, val_df, ctx.labels.encode(list(train_df.Labels)), ctx.labels.encode(list(val_df.Labels))


def _train_image(ctx, spec, cfg, views, out_dir: Path, log) -> Member:
    from .models import create_image_model
    from .predict import predict_images
    root = ctx.params.data_path(ctx.root)
    train_df, val_df, y_train, y_val = _frames(ctx)
    test_ids = list(ctx.data.test.ImageID)
    model = create_image_model(spec.name, ctx.params.num_classes, spec.head, spec.pretrained, spec.img_size,
                               spec.drop_rate, tta_views=views, crop_mode=spec.crop_mode,
                               global_pool=spec.global_pool)
    log(f"{spec.label}: {spec.name} ({model.spec['weights']}), {spec.mode}, {spec.img_size}px, "
        f"{len(train_df)} train / {len(val_df)} val images")
    if spec.mode == "frozen":
        from .features import FeatureCache, fit_head, predict_head
        cache = FeatureCache(Path(ctx.root, ctx.params.image.cache_dir, "features"))
        _, val_probs = fit_head(model, root, list(train_df.ImageID), y_train, list(val_df.ImageID), y_val, cfg,
                                out_dir, views=views, cache=cache)
        test_probs = predict_head(model, root, test_ids, views, cache)
        info = {"feature_cache": {"hits": cache.hits, "misses": cache.misses, "computed_images": cache.computed}}
    else:
        if ctx.params.image.gpus > 1:
            model = _fit_torchrun(ctx, spec, cfg, views, out_dir, log)
        else:
            from .engine import fit
            from .images import image_dataset
            auto_augment = spec.auto_augment or None
            train_set = image_dataset(root, list(train_df.ImageID), y_train, model.spec["data"], train=True,
                                      auto_augment=auto_augment, num_classes=ctx.params.num_classes)
            val_set = image_dataset(root, list(val_df.ImageID), y_val, model.spec["data"], train=False,
                                    num_classes=ctx.params.num_classes)
            teacher = _teacher(spec)
            fit(model, train_set, val_set, cfg, out_dir, teacher=teacher)
        val_probs = predict_images(model, root, list(val_df.ImageID), views, batch_size=cfg.batch_size * 2,
                                   device=cfg.device, progress=cfg.progress)
        test_probs = predict_images(model, root, test_ids, views, batch_size=cfg.batch_size * 2,
                                    device=cfg.device, progress=cfg.progress)
        info = {}
    info.update(weights=model.spec["weights"], mode=spec.mode, views=views)
    return Member(spec.label, "image", out_dir, list(val_df.ImageID), val_probs, test_ids, test_probs, info=info)


def _teacher(spec):
    if not spec.teacher:
        return None
    from .engine import load_checkpoint
    return load_checkpoint(spec.teacher)[0]


def _fit_torchrun(ctx, spec, cfg, views, out_dir: Path, log):
    """Several GPUs: the same training through ``torchrun -m mlc_utils.train`` (output streamed here)."""
    from .engine import load_checkpoint
    from .train import launch_torchrun
    config = {
        "model": {"name": spec.name, "pretrained": spec.pretrained, "head": spec.head, "img_size": spec.img_size,
                  "drop_rate": spec.drop_rate, "tta_views": views, "crop_mode": spec.crop_mode,
                  "global_pool": spec.global_pool},
        "data": {"root": str(ctx.params.data_path(ctx.root).resolve()), "split": str(ctx.dir_of("split") / "split.csv"),
                 "num_classes": ctx.params.num_classes, "auto_augment": spec.auto_augment or None},
        "train": asdict(cfg), "out_dir": str(out_dir), "teacher": spec.teacher or None,
    }
    code = launch_torchrun(config, ctx.params.image.gpus, out_dir, echo=log)
    if code != 0:
        raise RuntimeError(f"{spec.label}: torchrun exited with status {code}; its log is above and in {out_dir}")
    return load_checkpoint(out_dir / "best.pt")[0]


# --------------------------------------------------------------------------------------------
# tables and figures shared by the stages

def threshold_rows(members: list[Member], y_val: np.ndarray) -> pd.DataFrame:
    """The paper's Table 1: sample-F1 per model at 0.4 / 0.5 / 0.6 and at thresholds tuned on validation."""
    rows = []
    for member in members:
        table = metrics.threshold_table(y_val, member.val_probs).set_index("threshold")["sample_f1"]
        t_global, _ = metrics.tune_global_threshold(y_val, member.val_probs)
        rows.append({"model": member.name, "input": member.kind, **{f"F1@{t}": table[t] for t in ("0.40", "0.50", "0.60")},
                     "F1 tuned global": table[f"tuned global ({t_global:.2f})"], "tuned threshold": t_global,
                     "F1 tuned per class": table["tuned per class"]})
    return pd.DataFrame(rows)


def epoch_curves(members: list[Member]):
    """Per-epoch training loss and validation sample-F1 of every member with a log."""
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(11, 3.6))
    for member in members:
        log = member.history()
        if log.empty:
            continue
        x = log["epoch"] + 1 if "epoch" in log else np.arange(1, len(log) + 1)
        if "train_loss" in log:
            ax_loss.plot(x, log["train_loss"], marker="o", label=member.name)
        if "sample_f1" in log:
            ax_f1.plot(x, log["sample_f1"], marker="o", label=member.name)
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_f1.set(title="validation sample-F1 (threshold 0.5)", xlabel="epoch")
    for ax in (ax_loss, ax_f1):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_class_table(members: list[Member], y_val: np.ndarray, names=None) -> pd.DataFrame:
    table = None
    for member in members:
        scores = metrics.per_class_f1(y_val, member.val_probs)
        if table is None:
            table = scores[["class", "support"]].copy()
            if names:
                table.insert(1, "name", list(names))
        table[member.name] = scores["f1"].to_numpy()
    return table


def plot_per_class(table: pd.DataFrame, members: list[str]):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 3.6))
    present = table[table.support > 0]
    width = 0.8 / max(len(members), 1)
    for i, name in enumerate(members):
        ax.bar(np.arange(len(present)) + i * width, present[name], width=width, label=name)
    labels = present["name"] if "name" in present else present["class"]
    ax.set_xticks(np.arange(len(present)) + 0.4 - width / 2, [str(v) for v in labels], rotation=45, ha="right")
    ax.set(title="validation F1 per class (threshold 0.5)", ylabel="F1", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# captions (04_text)

def text_member_name(ctx) -> str:
    return "caption:" + Path(str(ctx.params.text.model_name)).name


def train_text(ctx, log=print) -> Member:
    """Fine-tune the caption model of ``text`` (or reuse it) and predict validation and test rows."""
    tcfg = ctx.params.text
    defaults = {k: v for k, v in {"seed": ctx.params.seed, "threshold": ctx.params.threshold}.items()
                if k not in tcfg.train}
    cfg = tcfg.to_train_config(**defaults)
    out_dir = ctx.stage_dir / "caption"
    from .config import to_dict
    config = {"text": to_dict(tcfg), "train": asdict(cfg)}
    return reuse_or_train(ctx, out_dir, config, lambda: _train_text(ctx, tcfg, cfg, out_dir, log), log, kind="text")


def _train_text(ctx, tcfg, cfg, out_dir: Path, log) -> Member:
    from .engine import fit, predict_probs
    from .text import trim_padding_collate
    train_df, val_df, y_train, y_val = _frames(ctx)
    test = ctx.data.test
    model = tcfg.create_model(ctx.params.num_classes)
    log(f"{text_member_name(ctx)}: {model.source} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"parameters), {len(train_df)} train / {len(val_df)} val captions")
    sets = {name: tcfg.dataset(model, list(frame.Caption), targets)
            for name, frame, targets in (("train", train_df, y_train), ("val", val_df, y_val), ("test", test, None))}
    fit(model, sets["train"], sets["val"], cfg, out_dir, collate_fn=trim_padding_collate)
    predict = lambda name: predict_probs(model, sets[name], batch_size=cfg.batch_size * 2,  # noqa: E731
                                         device=cfg.device, collate_fn=trim_padding_collate)
    return Member(text_member_name(ctx), "text", out_dir, list(val_df.ImageID), predict("val"), list(test.ImageID),
                  predict("test"), info={"truncated_val_captions": sets["val"].truncated_fraction})


def caption_examples(ctx, member: Member, n: int = 8) -> pd.DataFrame:
    """Validation captions, raw and as the model reads them, with true and predicted labels."""
    _, val_df, _, _ = _frames(ctx)
    cleaner = ctx.params.text.cleaning
    pick = np.random.default_rng(ctx.params.seed).choice(len(val_df), size=min(n, len(val_df)), replace=False)
    predicted = ctx.labels.decode(member.val_probs[pick], ctx.params.threshold, at_least_one=True)
    return pd.DataFrame({"ImageID": val_df.ImageID.iloc[pick].to_numpy(),
                         "caption": [" ".join(str(c).split()) for c in val_df.Caption.iloc[pick]],
                         "cleaned": [cleaner(c) for c in val_df.Caption.iloc[pick]],
                         "labels": [ctx.labels.format(l) for l in val_df.Labels.iloc[pick]],
                         "predicted": [ctx.labels.format(p) for p in predicted]})


# --------------------------------------------------------------------------------------------
# fusion (05_fusion)

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


def text_member(ctx) -> Member:
    member = load_member(ctx.dir_of("text") / "caption")
    if member is None:
        raise FileNotFoundError(f"no caption model in {ctx.dir_of('text') / 'caption'}: run the text stage first")
    return member


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


def _member_model(member: Member):
    from .engine import load_checkpoint
    path = member.out_dir / ("model.pt" if member.info.get("mode") == "frozen" else "best.pt")
    return load_checkpoint(path)[0].eval()


def sub_model_outputs(ctx, member: Member, fusion_input: str, ids_by_split: dict[str, list[str]]) -> dict:
    """A sub-model's logits or penultimate features on each split's rows, cached beside the fusion stage.

    Frozen image members read their backbone outputs from the feature cache; others run their
    checkpoint over the rows once. The cache file is keyed by the member's own key.
    """
    cache = ctx.stage_dir / "inputs" / f"{member.name.replace(':', '_')}-{fusion_input}-{member.key}.npz"
    if cache.is_file():
        with np.load(cache) as saved:
            if all(list(saved[f"{s}_ids"].astype(str)) == list(ids) for s, ids in ids_by_split.items()):
                return {s: saved[s] for s in ids_by_split}
    import torch

    from .models.fusion import compute_outputs
    model = _member_model(member)
    root = ctx.params.data_path(ctx.root)
    out = {}
    for split, ids in ids_by_split.items():
        if member.kind == "image" and member.info.get("mode") == "frozen":
            from .features import FeatureCache, cached_features
            features = cached_features(model, root, ids, "center",
                                       FeatureCache(Path(ctx.root, ctx.params.image.cache_dir, "features")))
            with torch.no_grad():
                out[split] = features if fusion_input == "features" else \
                    model.head(torch.from_numpy(features)).numpy()
        elif member.kind == "image":
            from .images import image_dataset
            dataset = image_dataset(root, ids, None, model.spec["data"], num_classes=ctx.params.num_classes)
            out[split] = compute_outputs(model, dataset, fusion_input)
        else:
            from .models.text import caption_dataset_for
            from .text import trim_padding_collate
            captions = _captions(ctx, ids)
            out[split] = compute_outputs(model, caption_dataset_for(model, captions), fusion_input,
                                         collate_fn=trim_padding_collate)
    from .io import atomic_save
    arrays = {**out, **{f"{s}_ids": np.array(ids) for s, ids in ids_by_split.items()}}
    atomic_save(cache, lambda tmp: np.savez(tmp, **arrays))
    return out


def _captions(ctx, ids) -> list[str]:
    table = pd.concat([ctx.data.train[["ImageID", "Caption"]], ctx.data.test[["ImageID", "Caption"]]])
    return table.set_index("ImageID").loc[list(ids), "Caption"].tolist()


def fusion_config(ctx, head: str):
    from .engine import TrainConfig
    # heads on a few thousand rows of logits: many short epochs at a high rate (measured on the demo
    # data: 20 epochs at 1e-3 left the concat head below the caption model, 60 at 1e-2 well above)
    values = {"seed": ctx.params.seed, "threshold": ctx.params.threshold, "epochs": 60, "lr": 1e-2,
              "batch_size": 64, "scheduler": "cosine", "weight_decay": 1e-3, **ctx.params.fusion.train}
    return TrainConfig.from_dict(values, "fusion.train")


def train_fusion_heads(ctx, image: Member, text: Member, log=print) -> list[Member]:
    """The paper's heads (concat, bilinear) on the two sub-models' outputs, trained on the train rows."""
    fcfg = ctx.params.fusion
    if fcfg.mode == "end_to_end":
        return [train_fusion_end_to_end(ctx, image, text, head, log) for head in fcfg.heads]
    train_df, val_df, y_train, y_val = _frames(ctx)
    ids = {"train": list(train_df.ImageID), "val": list(val_df.ImageID), "test": list(ctx.data.test.ImageID)}
    members = []
    for head in fcfg.heads:
        cfg = fusion_config(ctx, head)
        out_dir = ctx.stage_dir / head
        config = {"head": head, "input": fcfg.fusion_input, "image": image.name, "text": text.name,
                  "image_key": image.key, "text_key": text.key, "train": asdict(cfg)}

        def run(head=head, cfg=cfg, out_dir=out_dir):
            from .engine import fit, predict_probs
            from .models.fusion import ArrayPairDataset, PrecomputedFusion
            xi = sub_model_outputs(ctx, image, fcfg.fusion_input, ids)
            xt = sub_model_outputs(ctx, text, fcfg.fusion_input, ids)
            sets = {s: ArrayPairDataset(xi[s], xt[s], y, ctx.params.num_classes)
                    for s, y in (("train", y_train), ("val", y_val), ("test", None))}
            model = PrecomputedFusion(head, xi["train"].shape[1], xt["train"].shape[1], ctx.params.num_classes)
            log(f"fusion:{head} on {fcfg.fusion_input} ({xi['train'].shape[1]} + {xt['train'].shape[1]} inputs)")
            fit(model, sets["train"], sets["val"], cfg, out_dir)
            probs = {s: predict_probs(model, sets[s], batch_size=512) for s in ("val", "test")}
            return Member(f"fusion:{head}", "fusion", out_dir, ids["val"], probs["val"], ids["test"], probs["test"],
                          info={"image": image.name, "text": text.name, "input": fcfg.fusion_input})
        members.append(reuse_or_train(ctx, out_dir, config, run, log, kind="fusion"))
    return members


def train_fusion_end_to_end(ctx, image: Member, text: Member, head: str, log=print) -> Member:
    """Both sub-models fine-tuned through the fusion head (GPU-sized; the CPU path is ``frozen``)."""
    from .engine import fit, predict_probs
    from .images import image_dataset
    from .models.fusion import FusionModel, ImageCaptionDataset
    from .models.text import caption_dataset_for
    fcfg = ctx.params.fusion
    cfg = fusion_config(ctx, head)
    out_dir = ctx.stage_dir / f"{head}-end_to_end"
    config = {"head": head, "input": fcfg.fusion_input, "mode": "end_to_end", "image": image.name,
              "text": text.name, "image_key": image.key, "text_key": text.key, "train": asdict(cfg)}

    def run():
        train_df, val_df, y_train, y_val = _frames(ctx)
        root = ctx.params.data_path(ctx.root)
        image_model, text_model = _member_model(image), _member_model(text)
        model = FusionModel(image_model, text_model, head, fcfg.fusion_input, "end_to_end", ctx.params.num_classes)

        def pair(frame, targets, train):
            images = image_dataset(root, list(frame.ImageID), targets, image_model.spec["data"], train=train,
                                   num_classes=ctx.params.num_classes)
            return ImageCaptionDataset(images, caption_dataset_for(text_model, list(frame.Caption), targets))
        sets = {"train": pair(train_df, y_train, True), "val": pair(val_df, y_val, False),
                "test": pair(ctx.data.test, None, False)}
        fit(model, sets["train"], sets["val"], cfg, out_dir)
        probs = {s: predict_probs(model, sets[s], batch_size=cfg.batch_size) for s in ("val", "test")}
        return Member(f"fusion:{head}-e2e", "fusion", out_dir, list(val_df.ImageID), probs["val"],
                      list(ctx.data.test.ImageID), probs["test"], info={"mode": "end_to_end"})
    return reuse_or_train(ctx, out_dir, config, run, log, kind="fusion")


def late_fusion_member(ctx, image: Member, text: Member) -> tuple[Member, object]:
    """The baseline: a weighted average of the two models' probabilities, weight tuned on validation."""
    from .models.fusion import tune_late_fusion
    _, val_df, _, y_val = _frames(ctx)
    val_ids = list(val_df.ImageID)
    p_img, p_txt = _aligned(image, val_ids, "val"), _aligned(text, val_ids, "val")
    result = tune_late_fusion(y_val, p_img, p_txt)
    test_ids = list(ctx.data.test.ImageID)
    member = Member("late fusion", "late_fusion", ctx.stage_dir / "late_fusion", val_ids, result.apply(p_img, p_txt),
                    test_ids, result.apply(_aligned(image, test_ids, "test"), _aligned(text, test_ids, "test")),
                    info={"image_weight": result.weight, "threshold": result.threshold})
    save_member(member, digest([image.key, text.key, result.weight]))
    return member, result


def _aligned(member: Member, ids: list[str], split: str) -> np.ndarray:
    from .ensemble import ProbTable
    table = ProbTable(member.val_ids, member.val_probs) if split == "val" else ProbTable(member.test_ids,
                                                                                          member.test_probs)
    return table.aligned_to(ids, f"{member.name} ({split})")


# --------------------------------------------------------------------------------------------
# ablation (06_ablation)

SWITCHES = {
    # switch -> (what it changes, function(spec) -> flipped spec)
    "mixup": ("mixup", lambda spec, stage, alt: _with_train(spec, mixup=not _train_value(spec, stage, "mixup"))),
    "randaugment": ("RandAugment", lambda spec, stage, alt: replace(
        spec, auto_augment="" if spec.auto_augment else "rand-m9-mstd0.5")),
    "tta": ("test-time augmentation", lambda spec, stage, alt: replace(spec, tta=not spec.tta)),
    "loss": ("loss", lambda spec, stage, alt: _with_train(
        spec, loss=alt if _train_value(spec, stage, "loss") != alt else "bce")),
}


def _train_value(spec, stage_train: dict, name: str):
    from .engine import TrainConfig
    return {**stage_train, **spec.train}.get(name, getattr(TrainConfig(), name))


def _with_train(spec, **changes):
    return replace(spec, train={**spec.train, **changes})


def _setting(spec, stage_train: dict, switch: str) -> str:
    if switch == "randaugment":
        return spec.auto_augment or "off"
    if switch == "tta":
        return "on" if spec.tta else "off"
    value = _train_value(spec, stage_train, switch)
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def ablation_specs(ctx) -> list[tuple[str, object]]:
    """(row name, image model spec): the baseline, then one switch flipped per row."""
    acfg, stage = ctx.params.ablation, ctx.params.image
    if not stage.models:
        raise ValueError("ablation: the image stage lists no models to ablate (image.models is empty)")
    base = next((m for m in stage.models if m.label == acfg.base), None) if acfg.base else \
        next((m for m in stage.models if m.mode == "finetune"), stage.models[0])
    if base is None:
        raise ValueError(f"ablation.base: '{acfg.base}' is not one of the image models {[m.label for m in stage.models]}")
    base = _with_train(base, **acfg.train) if acfg.train else base
    rows = [("baseline", replace(base, label=f"{base.label}-baseline"))]
    for switch in acfg.switches:
        flipped = SWITCHES[switch][1](base, {**stage.train}, acfg.alt_loss)
        rows.append((switch, replace(flipped, label=f"{base.label}-{switch}")))
    return rows


def run_ablation(ctx, log=print) -> tuple[pd.DataFrame, list[Member]]:
    """Train each variant with the same seed and budget; the paper's Table 3 as differences to the baseline."""
    _, _, _, y_val = _frames(ctx)
    stage_train = ctx.params.image.train
    members, rows = [], []
    specs = ablation_specs(ctx)
    base_label = specs[0][1].label[: -len("-baseline")]
    for switch, spec in specs:
        if switch == "tta" and spec.mode == "finetune":
            member = _repredict(ctx, members[0], spec, log)   # TTA changes prediction only: no retraining
        else:
            member = train_image(ctx, spec, ctx.stage_dir / spec.label, log,
                                 alternates=(ctx.dir_of("image") / base_label,))
        members.append(member)
        t, tuned = metrics.tune_global_threshold(y_val, member.val_probs)
        what = "baseline" if switch == "baseline" else SWITCHES[switch][0]
        rows.append({"variant": spec.label, "switch": what,
                     "setting": "; ".join(f"{SWITCHES[s][0]} {_setting(spec, stage_train, s)}"
                                          for s in SWITCHES if s in ctx.params.ablation.switches) if switch == "baseline"
                     else _setting(spec, stage_train, switch),
                     "sample_f1@0.5": member.score(y_val), "sample_f1 tuned": tuned, "seconds": round(member.seconds, 1)})
    table = pd.DataFrame(rows)
    table["delta vs baseline"] = table["sample_f1@0.5"] - table["sample_f1@0.5"].iloc[0]
    return table, members


def _repredict(ctx, trained: Member, spec, log) -> Member:
    """``trained``'s checkpoint predicting with ``spec``'s views (the TTA switch of the ablation)."""
    from .predict import predict_images
    views = list(ctx.params.image.tta) if spec.tta else ["center"]
    out_dir = ctx.stage_dir / spec.label

    def run():
        import shutil
        model = _member_model(trained)
        root = ctx.params.data_path(ctx.root)
        out_dir.mkdir(parents=True, exist_ok=True)
        if (trained.out_dir / "log.csv").is_file():
            shutil.copyfile(trained.out_dir / "log.csv", out_dir / "log.csv")
        log(f"{spec.label}: {trained.name}'s weights predicting with views {views}")
        return Member(spec.label, "image", out_dir, trained.val_ids, predict_images(model, root, trained.val_ids, views),
                      trained.test_ids, predict_images(model, root, trained.test_ids, views),
                      info={**trained.info, "views": views, "weights_from": str(trained.out_dir)})
    return reuse_or_train(ctx, out_dir, {"from": trained.key, "views": views}, run, log, kind="image")


# --------------------------------------------------------------------------------------------
# ensemble and submission (07_ensemble)

def study_members(ctx) -> list[Member]:
    """Every saved member of the image, text and fusion stages (the ensemble's candidates)."""
    members = image_members(ctx) + [text_member(ctx)]
    fusion_dir = ctx.dir_of("fusion")
    for path in sorted(fusion_dir.glob(f"*/{MEMBER_FILE}")) if fusion_dir.is_dir() else []:
        member = load_member(path.parent)
        if member is not None:
            members.append(member)
    return members


def run_ensemble(ctx, log=print):
    """Weighted average of the chosen members, validation-tuned threshold, the test submission."""
    from .ensemble import Member as EnsembleMember
    from .ensemble import ProbTable, build_ensemble
    ecfg = ctx.params.ensemble
    _, val_df, _, y_val = _frames(ctx)
    candidates = study_members(ctx)
    if ecfg.members:
        known = {m.name: m for m in candidates}
        missing = [name for name in ecfg.members if name not in known]
        if missing:
            raise ValueError(f"ensemble.members: {missing} are not saved members; available: {sorted(known)}")
        chosen = [known[name] for name in ecfg.members]
    else:
        chosen = candidates
    result = build_ensemble([EnsembleMember(m.name, ProbTable(m.val_ids, m.val_probs), ProbTable(m.test_ids, m.test_probs))
                             for m in chosen], list(val_df.ImageID), y_val, weights=ecfg.weights,
                            threshold="class" if ecfg.per_class_thresholds else "global",
                            test_ids=list(ctx.data.test.ImageID))
    submission = result.write_submission(ctx.run_dir / "submission.csv")
    member = Member("ensemble", "ensemble", ctx.stage_dir, result.val_ids, result.val_probs, result.test_ids,
                    result.test_probs, info={"weights": result.weights})
    save_member(member, digest([[m.key for m in chosen], result.weights]))
    log(f"submission: {submission} ({len(result.test_ids)} rows)")
    return result, candidates, member, submission


PAPER_BEST = {"image": ("Swin-V2-L (paper's best single model)", 0.9079)}


def best_per_input(members: list[Member], y_val: np.ndarray) -> pd.DataFrame:
    """The paper's Table 2: the best validation sample-F1 for image, caption and image+caption inputs."""
    groups = {"image": ("image",), "caption": ("text",), "image+caption": ("fusion", "late_fusion", "ensemble")}
    rows = []
    for name, kinds in groups.items():
        pool = [m for m in members if m.kind in kinds]
        if not pool:
            continue
        scored = [(m, metrics.tune_global_threshold(y_val, m.val_probs)) for m in pool]
        best, (t, tuned) = max(scored, key=lambda item: item[0].score(y_val))
        paper = PAPER_BEST.get(name)
        rows.append({"input": name, "best model": best.name, "sample_f1@0.5": best.score(y_val),
                     "sample_f1 tuned": tuned, "paper": f"{paper[1]:.4f} ({paper[0]})" if paper else "not quoted"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# before any stage runs

def preflight(params, stages) -> list[str]:
    """Problems that would stop a stage hours in, found in seconds: weights that cannot be had.

    Offline, a hub model name fails here with the offline choices, before EDA or the split run.
    """
    problems = []
    if "image" in stages or "ablation" in stages:
        from .models.weights import resolve_pretrained
        for spec in params.image.models:
            if spec.pretrained is False:
                continue
            try:
                resolve_pretrained(spec.name, spec.pretrained)
            except Exception as err:  # OfflineWeightsError, a missing checkpoint path ...
                problems.append(f"image.models[{spec.label}].pretrained: {err}")
    if "text" in stages and params.text.pretrained:
        from .models.text import resolve_model_source
        try:
            resolve_model_source(params.text.model_name)
        except Exception as err:
            problems.append(f"text.model_name: {err}")
    return problems
