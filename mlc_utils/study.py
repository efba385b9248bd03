"""The study's stage steps: what each notebook does, as tested functions over a StageContext.

Every trained model of the study (an image backbone, the caption model, a fusion head, an ablation
variant) becomes a *member*: a folder with its checkpoint, ``log.csv``, ``val_probs.npz`` and
``test_probs.npz`` (ImageIDs + probabilities) and ``member.json``. Later stages read members, never
notebook variables. A member whose inputs are unchanged (its ``key``: configuration, split and
data) is reused instead of retrained, so the ablation's baseline and re-runs cost nothing.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import metrics
from .io import atomic_write_text, sha256_file

MEMBER_FILE = "member.json"


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

    def history(self) -> pd.DataFrame:
        path = self.out_dir / "log.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    def score(self, y_val: np.ndarray, threshold: float = 0.5) -> float:
        return metrics.sample_f1(y_val, self.val_probs, threshold)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def member_key(ctx, config: dict) -> str:
    """What a member's result depends on: its configuration, the split file and the data CSVs."""
    root = ctx.params.data_path(ctx.root)
    return _digest({"config": config, "split": sha256_file(ctx.dir_of("split") / "split.csv"),
                    "train": sha256_file(root / "train.csv"), "test": sha256_file(root / "test.csv"),
                    "num_classes": ctx.params.num_classes})


def save_member(member: Member, key: str) -> Member:
    from .ensemble import save_probs
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
                  meta.get("seconds", 0.0), reused=True, info=meta.get("info", {}))


def reuse_or_train(ctx, out_dir: Path, config: dict, train: Callable[[], Member], log=print) -> Member:
    key = member_key(ctx, config)
    saved = load_member(out_dir, key)
    if saved is not None:
        log(f"{saved.name}: unchanged configuration, split and data; reusing {out_dir}")
        return saved
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


def train_image(ctx, spec, out_dir: Path | None = None, log=print) -> Member:
    """Train (or reuse) one image model of ``image.models`` and predict validation and test rows.

    ``mode: frozen`` trains the head on cached backbone features (CPU-fast); ``finetune`` trains
    the whole model, through torchrun when ``image.gpus > 1``. Validation and test probabilities
    average the TTA views (``image.tta``; ``center`` only when the model's ``tta`` is off).
    """
    cfg = image_train_config(ctx, spec)
    stage = ctx.params.image
    views = list(stage.tta) if spec.tta else ["center"]
    out_dir = Path(out_dir or ctx.stage_dir / spec.label)
    config = {"spec": asdict(spec), "train": asdict(cfg), "views": views, "gpus": stage.gpus}
    return reuse_or_train(ctx, out_dir, config, lambda: _train_image(ctx, spec, cfg, views, out_dir, log), log)


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
                               tta_views=views)
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
                  "tta_views": views},
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
