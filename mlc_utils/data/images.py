"""Images as model inputs: decoded files (:mod:`mlc_utils.data.image_files`), timm transforms, TTA views.

Transforms are timm's (``create_transform``): training adds RandAugment (``rand-m9-mstd0.5``,
as the paper) and random resized crops; evaluation resizes and centre-crops with the backbone's
own mean/std/interpolation. A *view* is a deterministic evaluation variant (flip, full frame);
TTA averages the probabilities of several views.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mlc_utils.data.image_files import load_image

DEFAULT_AUTO_AUGMENT = "rand-m9-mstd0.5"
# Random-resized-crop scale for training: milder than ImageNet's (0.08, 1) because a tight crop
# can cut away a labelled object and make its multi-hot target wrong.
DEFAULT_TRAIN_SCALE = (0.5, 1.0)


@dataclass(frozen=True)
class View:
    """A deterministic evaluation variant: ``crop_pct`` None keeps the backbone's own."""
    crop_pct: float | None = None
    hflip: bool = False


VIEWS: dict[str, View] = {
    "center": View(),
    "hflip": View(hflip=True),
    "full": View(crop_pct=1.0),
    "full_hflip": View(crop_pct=1.0, hflip=True),
}


def _check_view(view: str) -> View:
    if view not in VIEWS:
        raise ValueError(f"view: must be one of {sorted(VIEWS)} (got {view!r})")
    return VIEWS[view]


def build_transform(data_config: dict, train: bool = False, view: str = "center",
                    auto_augment: str | None = DEFAULT_AUTO_AUGMENT, scale=DEFAULT_TRAIN_SCALE, **overrides):
    """timm's transform for ``data_config`` (a model's ``spec['data']``): train or one eval view.

    ``auto_augment=None`` turns RandAugment off (the ablation); ``overrides`` go to
    ``timm.data.create_transform`` unchanged.
    """
    from timm.data import create_transform
    from torchvision import transforms
    common = {"input_size": tuple(data_config["input_size"]), "interpolation": data_config["interpolation"],
              "mean": tuple(data_config["mean"]), "std": tuple(data_config["std"])}
    if train:
        return create_transform(**common, is_training=True, auto_augment=auto_augment, scale=tuple(scale),
                                **overrides)
    chosen = _check_view(view)
    crop_pct = chosen.crop_pct if chosen.crop_pct is not None else data_config.get("crop_pct")
    transform = create_transform(**common, is_training=False, crop_pct=crop_pct,
                                 crop_mode=data_config.get("crop_mode", "center"), **overrides)
    # flip the tensor, after the crop: an exact mirror of the unflipped view (flipping first shifts odd crops)
    return transforms.Compose([transform, transforms.RandomHorizontalFlip(p=1.0)]) if chosen.hflip else transform


class ImageDataset(Dataset):
    """``(image tensor, multi-hot target)`` for ``image_dir/<ImageID>`` in the given order.

    ``targets`` may be None (test rows): the target is then all zeros, keeping one item format.
    """

    def __init__(self, image_dir: str | Path, image_ids: Sequence[str], targets: np.ndarray | None = None,
                 transform=None, num_classes: int = 20):
        self.image_dir = Path(image_dir)
        self.image_ids = [str(i) for i in image_ids]
        if targets is not None:
            targets = np.asarray(targets, dtype=np.float32)
            if targets.shape[0] != len(self.image_ids) or targets.ndim != 2:
                raise ValueError(f"targets: shape {targets.shape} does not match {len(self.image_ids)} image ids")
        self.targets = targets if targets is not None else np.zeros((len(self.image_ids), num_classes), np.float32)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        image = load_image(self.image_dir / self.image_ids[index])
        x = self.transform(image) if self.transform is not None else \
            torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        return x, torch.from_numpy(self.targets[index])

    def with_transform(self, transform) -> "ImageDataset":
        """The same rows under another transform (a TTA view, or eval vs train)."""
        return ImageDataset(self.image_dir, self.image_ids, self.targets, transform)


def image_dataset(root: str | Path, image_ids: Sequence[str], targets: np.ndarray | None, data_config: dict,
                  train: bool = False, view: str = "center", auto_augment: str | None = DEFAULT_AUTO_AUGMENT,
                  num_classes: int = 20) -> ImageDataset:
    """The dataset for a data folder ``root`` (images under ``root/data``) with the model's transform."""
    transform = build_transform(data_config, train=train, view=view, auto_augment=auto_augment)
    return ImageDataset(Path(root) / "data", image_ids, targets, transform, num_classes)
