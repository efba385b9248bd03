"""Frozen-backbone mode for CPUs: backbone outputs computed once, cached on disk, head trained on them.

Fine-tuning a backbone on 30 000 images takes hours on a CPU; one forward pass per image does
not. :func:`cached_features` runs ``model.embed`` (what the head reads: ImageNet logits for the
``extra_linear`` head, pooled features for ``replace``, a grid of region features for
``class_attention``) over images in one *view* and keeps the
rows in ``<cache_dir>/<arch>-<view>-<digest>.npy`` with a JSON file beside it (the key and the
ImageIDs of the rows). The digest covers the backbone's actual weights (a hash of its tensors, so
a random init or a new checkpoint never reuses stale features), the preprocessing, the view, the
image folder and the source of the code that computes features. Rows are per image and each
remembers the size and modification time of the file it was computed from: a later call with
other ids (another split, the test set) computes only the images not cached yet and appends them,
and an image file replaced since (re-downloaded, repaired) is computed again.

:func:`fit_head` then trains the model's Linear head with the ordinary :func:`mlc_utils.train.loop.fit` on a
``TensorDataset`` of features (seconds per epoch). Several views (``center``, ``hflip``) are
separate cached arrays: for training they are stacked as extra samples (flip augmentation), for
validation/prediction their probabilities are averaged (TTA). The head is the model's own, and
``out_dir/model.pt`` holds the whole image model for :mod:`mlc_utils.evaluation.predict`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mlc_utils.core.fingerprint import IMAGE_FOLDER, file_stamp, source_digest
from mlc_utils.core.inference import Inference, logits, run_model
from mlc_utils.core.io import atomic_write_text, save_npy
from mlc_utils.data.images import image_dataset
from mlc_utils.evaluation.predict import predict_probs
from mlc_utils.models.checkpoint import save_model, state_digest
from mlc_utils.train.config import WHOLE_MODEL, TrainConfig
from mlc_utils.train.loop import FitResult, fit

DEFAULT_CACHE_DIR = "cache/features"
CACHE_VERSION = 5
# what a cached row is computed by: an edit to any of these recomputes the features
FEATURE_CODE = ("mlc_utils.train.features", "mlc_utils.data.images", "mlc_utils.models.image", "mlc_utils.models.weights")


def feature_key(model, root: str | os.PathLike, view: str, inference: Inference) -> dict:
    """Everything a cached row depends on besides its ImageID (JSON-able): the precision of the pass
    too (bf16 rows on a GPU are not the CPU's fp32 rows)."""
    dtype = inference.autocast_dtype()
    return {"version": CACHE_VERSION, "precision": str(dtype).replace("torch.", "") if dtype else "float32", "arch": model.spec["arch"],
            "model": model.config.feature_identity(), "weights": state_digest(model.backbone), "data": model.spec["data"], "view": view,
            "root": str(Path(root).resolve()), "code": source_digest(FEATURE_CODE)}


class FeatureCache:
    """Per-image feature rows keyed by a JSON dict, written atomically (a killed run leaves no half file).

    ``hits``/``misses`` count requests served wholly from disk / needing computation; ``computed``
    counts images run through the backbone.
    """

    def __init__(self, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR):
        self.dir = Path(cache_dir)
        self.hits = self.misses = self.computed = 0

    def paths(self, key: dict) -> tuple[Path, Path]:
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        stem = f"{key['arch']}-{key['view']}-{digest}"
        return self.dir / f"{stem}.npy", self.dir / f"{stem}.json"

    def load(self, key: dict) -> tuple[list[str], list, np.ndarray | None]:
        """(ImageIDs, file stamps, rows) stored under ``key``; ([], [], None) when absent or inconsistent."""
        array_path, meta_path = self.paths(key)
        if not (array_path.is_file() and meta_path.is_file()):
            return [], [], None
        try:
            meta = json.loads(meta_path.read_text())
            array = np.load(array_path)
        except (OSError, ValueError):
            return [], [], None  # unreadable entry: recompute and overwrite
        ids, stamps = meta.get("ids", []), meta.get("stamps", [])
        if meta.get("key") != json.loads(json.dumps(key)) or not len(ids) == len(stamps) == len(array):
            return [], [], None
        return list(ids), list(stamps), array

    def save(self, key: dict, ids: list[str], stamps: list, array: np.ndarray) -> Path:
        array_path, meta_path = self.paths(key)
        save_npy(array_path, array)
        atomic_write_text(meta_path, json.dumps({"key": key, "ids": ids, "stamps": stamps}, sort_keys=True))
        return array_path


def compute_features(model, root: str | os.PathLike, image_ids: Sequence[str], view: str, inference: Inference,
                     progress: bool = True) -> np.ndarray:
    """``model.embed`` over the images in one evaluation view, as float32 ``(n, D)``."""
    dataset = image_dataset(root, image_ids, None, model.spec["data"], train=False, view=view,
                            num_classes=model.spec["num_classes"])
    return run_model(model, dataset, inference, name=f"{model.spec['arch']} features, {view} view",
                     output=embedding, progress=progress)


def embedding(model, images: torch.Tensor) -> torch.Tensor:
    """What the head reads (the inference path's ``output``)."""
    return model.embed(images)


def cached_features(model, root: str | os.PathLike, image_ids: Sequence[str], view: str, inference: Inference,
                    cache: FeatureCache | str | os.PathLike = DEFAULT_CACHE_DIR, progress: bool = True) -> np.ndarray:
    """Features ``(len(image_ids), D)`` in ``view``; only images not cached yet, or whose file
    changed since (size or modification time), are computed."""
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    key = feature_key(model, root, view, inference)
    ids, stamps, array = cache.load(key)
    index = {image_id: row for row, image_id in enumerate(ids)}
    wanted = list(dict.fromkeys(map(str, image_ids)))
    current = {i: file_stamp(Path(root) / IMAGE_FOLDER / i) for i in wanted}
    stale = [i for i in wanted if i not in index or stamps[index[i]] != current[i]]
    if stale:
        cache.misses += 1
        new = compute_features(model, root, stale, view, inference, progress)
        cache.computed += len(stale)
        replaced = [n for n, image_id in enumerate(stale) if image_id in index]  # files changed since
        added = [n for n, image_id in enumerate(stale) if image_id not in index]
        if array is None:
            array = new
        else:
            array[[index[stale[n]] for n in replaced]] = new[replaced]
            array = np.concatenate([array, new[added].astype(array.dtype)])
        for n in replaced:
            stamps[index[stale[n]]] = current[stale[n]]
        for n in added:
            index[stale[n]] = len(ids)
            ids.append(stale[n])
            stamps.append(current[stale[n]])
        cache.save(key, ids, stamps, array)
    else:
        cache.hits += 1
    return array[[index[str(i)] for i in image_ids]]


class FeatureHead(nn.Module):
    """The image model's head on its own, reading cached features (its checkpoints say so).

    The whole model drops pooled features (timm's ``drop_rate``) before the head while training;
    the cached features were computed in eval mode, so the same dropout is applied here.
    """

    def __init__(self, head: nn.Linear, spec: dict):
        super().__init__()
        self.drop = nn.Dropout(float(spec.get("drop_rate", 0.0)))
        self.head = head
        self.spec = {**spec, "kind": "image_head", "input_dim": head.in_features}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(features))


def _view_features(model, root, ids, views, cache, inference) -> list[np.ndarray]:
    return [cached_features(model, root, ids, view, inference, cache) for view in views]


def predict_head(model, root: str | os.PathLike, image_ids: Sequence[str], views: Sequence[str], inference: Inference,
                 cache: FeatureCache | str | os.PathLike = DEFAULT_CACHE_DIR) -> np.ndarray:
    """Probabilities of ``model`` (backbone frozen) averaged over ``views``, via the feature cache."""
    head = FeatureHead(model.head, model.spec)
    probs = []
    for features in _view_features(model, root, image_ids, views, cache, inference):
        dummy = torch.zeros(len(features), model.spec["num_classes"])
        probs.append(predict_probs(head, TensorDataset(torch.from_numpy(features), dummy), inference,
                                   name=f"{model.spec['arch']} head"))
    return np.mean(probs, axis=0)


def head_outputs(model, features: np.ndarray, inference: Inference) -> np.ndarray:
    """The model's logits on cached features (what fusion heads read from a frozen image member)."""
    dummy = torch.zeros(len(features), model.spec["num_classes"])
    return run_model(FeatureHead(model.head, model.spec), TensorDataset(torch.from_numpy(features), dummy), inference,
                     name=f"{model.spec['arch']} head logits", output=logits, progress=False)


def fit_head(model, root: str | os.PathLike, train_ids: Sequence[str], train_targets: np.ndarray,
             val_ids: Sequence[str] | None, val_targets: np.ndarray | None, cfg: TrainConfig,
             out_dir: str | os.PathLike, inference: Inference, views: Sequence[str] = ("center", "hflip"),
             cache: FeatureCache | str | os.PathLike = DEFAULT_CACHE_DIR) -> tuple[FitResult, np.ndarray | None]:
    """Train ``model.head`` on cached backbone features; returns (fit result, TTA validation probs).

    ``views[0]`` is what the per-epoch validation scores; the returned validation probabilities
    average all views. Mixup and freezing do not apply to features and are switched off.
    """
    if not views:
        raise ValueError("views: need at least one view")
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    y_train = torch.from_numpy(np.asarray(train_targets, dtype=np.float32))
    # the views stacked as extra rows, in one TensorDataset (fetched a batch at a time)
    per_view = _view_features(model, root, train_ids, views, cache, inference)
    train_set = TensorDataset(torch.from_numpy(per_view[0] if len(per_view) == 1 else np.concatenate(per_view)),
                              y_train.repeat(len(views), 1))
    val_sets = None
    if val_ids is not None:
        y_val = torch.from_numpy(np.asarray(val_targets, dtype=np.float32))
        val_sets = [TensorDataset(torch.from_numpy(f), y_val)
                    for f in _view_features(model, root, val_ids, views, cache, inference)]
    head = FeatureHead(model.head, model.spec)  # shares model.head: training it trains the model's head
    cfg = replace(cfg, mixup=False, freeze_epochs=0, restore_best=True)
    result = fit(head, train_set, val_sets[0] if val_sets else None, cfg, out_dir)
    save_model(model, Path(out_dir) / WHOLE_MODEL,
               params={**asdict(cfg), "mode": "frozen_backbone", "views": list(views)})
    tta = None
    if val_sets:
        tta = np.mean([predict_probs(head, s, inference, name=f"{model.spec['arch']} head") for s in val_sets], axis=0)
        save_npy(Path(out_dir) / "val_probs_tta.npy", tta)
    return result, tta
