"""Images as model inputs: robust decoding, timm transforms, and the views used for TTA.

Decoding goes by content, not by file name (a PNG named ``.jpg`` reads fine), and every mode
Pillow knows (greyscale, 16-bit, palette, CMYK, alpha) ends up RGB. A missing, truncated or
corrupt file, whatever Pillow raises for it, raises :class:`ImageReadError` naming the file, so one
bad image in 30 000 is found by name instead of as a worker crash.

Transforms are timm's (``create_transform``): training adds RandAugment (``rand-m9-mstd0.5``,
as the paper) and random resized crops; evaluation resizes and centre-crops with the backbone's
own mean/std/interpolation. A *view* is a deterministic evaluation variant (flip, full frame);
TTA averages the probabilities of several views.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

DEFAULT_AUTO_AUGMENT = "rand-m9-mstd0.5"
# Random-resized-crop scale for training: milder than ImageNet's (0.08, 1) because a tight crop
# can cut away a labelled object and make its multi-hot target wrong.
DEFAULT_TRAIN_SCALE = (0.5, 1.0)


class ImageReadError(OSError):
    """An image file cannot be opened or decoded; the message names the file, ``reason`` says why.

    Raised in a DataLoader worker, torch re-raises it in the main process as ``ImageReadError(msg)``
    with ``msg`` = "Caught ImageReadError in DataLoader worker process N." plus the worker's traceback;
    the constructor keeps only the original message, so a command still prints one line naming the file.
    """

    def __init__(self, message: str, reason: str | None = None):
        if message.startswith("Caught ImageReadError") and "ImageReadError: " in message:
            message = message.rsplit("ImageReadError: ", 1)[1].strip()
        super().__init__(message)
        self.reason = reason or message


def _to_rgb(image):
    from PIL import Image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit greyscale: rescale to 8 bit
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(path: str | Path):
    """Decode ``path`` fully into an RGB PIL image (EXIF rotation applied).

    The one judge of an image file (``validate`` asks it too): whatever fails, in Pillow's decoders,
    the EXIF transpose or the RGB conversion, and whatever it raises (not only OSError: struct.error,
    TypeError, DecompressionBombError... on malformed files), becomes :class:`ImageReadError`.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    path = Path(path)

    def fail(reason: str):
        return ImageReadError(f"image {path}: {reason}", reason)

    if not path.is_file():
        raise fail("missing" if not path.exists() else "not a file")
    try:
        if path.stat().st_size == 0:
            raise fail("empty file (0 bytes)")
        with warnings.catch_warnings():
            # past MAX_IMAGE_PIXELS Pillow only warns (past twice that it raises): refuse both alike
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                image = _to_rgb(ImageOps.exif_transpose(image))
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise fail("not an image Pillow can read (corrupt or another format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise fail(f"too large to decode safely, a possible decompression bomb ({err})") from None
    except Exception as err:  # not BaseException: Ctrl-C still stops the run
        kind = type(err).__qualname__ if type(err).__module__ == "builtins" else \
            f"{type(err).__module__}.{type(err).__qualname__}"
        raise fail(f"cannot decode ({kind}: {err}); the file may be truncated or corrupt") from None
    if image.width < 1 or image.height < 1:
        raise fail(f"empty image ({image.width}x{image.height} pixels)")
    return image


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
