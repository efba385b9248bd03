"""Image + caption fusion: the paper's concatenation and bilinear heads, and late fusion as baseline.

The paper fuses the *logits* of a trained image model and a trained caption model with one layer:
``[x_i; x_c] -> Linear`` (concatenation) or ``x_i^T W_k x_c + b_k`` per class (``torch.nn.Bilinear``).
``fusion_input='features'`` fuses the penultimate vectors instead (more capacity, more to overfit).

Three ways to train a head, cheapest first:

* on precomputed sub-model outputs saved as ``.npy`` (:class:`ArrayPairDataset` +
  :class:`PrecomputedFusion`): seconds on a CPU, the common path;
* ``mode='frozen_submodels'`` on images and captions: sub-models run without gradients in eval mode;
* ``mode='end_to_end'``: everything fine-tunes; ``backbone_parameters()`` returns the sub-models, so
  the training loop's ``freeze_epochs`` can warm the head up first.

Caveat the notebooks repeat: sub-models score their own training rows over-confidently, so a head
trained on training-fold outputs learns to trust them too much; prefer out-of-fold or validation outputs.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from mlc_utils.core.config import current_choice
from mlc_utils.core.inference import Inference, run_model

FUSION_INPUTS = ("logits", "features")
FUSION_MODES = ("frozen_submodels", "end_to_end")
RENAMED_MODES = {"frozen": "frozen_submodels"}   # old mode -> mode now


# ---------------------------------------------------------------------------------------------
# heads: (x_i (B, d_i), x_c (B, d_c)) -> logits (B, C)
# ---------------------------------------------------------------------------------------------

class ConcatHead(nn.Module):
    """``Linear([x_i; x_c])``. With ``identity_init`` on logits it starts as the average of the two
    models' logits, so training begins at a sensible fusion instead of at random."""

    def __init__(self, image_dim: int, caption_dim: int, num_classes: int, identity_init: bool = False):
        super().__init__()
        self.linear = nn.Linear(image_dim + caption_dim, num_classes)
        if identity_init:
            if not image_dim == caption_dim == num_classes:
                raise ValueError(f"identity_init: needs image_dim == caption_dim == num_classes "
                                 f"(got {image_dim}, {caption_dim}, {num_classes})")
            with torch.no_grad():
                eye = torch.eye(num_classes) * 0.5
                self.linear.weight.copy_(torch.cat([eye, eye], dim=1))
                self.linear.bias.zero_()

    def forward(self, x_image: torch.Tensor, x_caption: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([x_image, x_caption], dim=1))


class BilinearHead(nn.Module):
    """``torch.nn.Bilinear(d_i, d_c, C)``: one ``d_i x d_c`` interaction matrix per class."""

    def __init__(self, image_dim: int, caption_dim: int, num_classes: int):
        super().__init__()
        self.bilinear = nn.Bilinear(image_dim, caption_dim, num_classes)

    def forward(self, x_image: torch.Tensor, x_caption: torch.Tensor) -> torch.Tensor:
        return self.bilinear(x_image, x_caption)


FUSION_HEADS: dict[str, type[nn.Module]] = {"concat": ConcatHead, "bilinear": BilinearHead}


def create_head(name: str, image_dim: int, caption_dim: int, num_classes: int = 20,
                identity_init: bool = False) -> nn.Module:
    if name not in FUSION_HEADS:
        raise ValueError(f"head: must be one of {sorted(FUSION_HEADS)}, got {name!r}")
    for field_name, value in (("image_dim", image_dim), ("caption_dim", caption_dim), ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{field_name}: must be a positive integer, got {value!r}")
    if identity_init and name != "concat":
        raise ValueError(f"identity_init: only the concat head starts as the average of the logits (head {name!r})")
    return FUSION_HEADS[name](image_dim, caption_dim, num_classes, **({"identity_init": True} if identity_init else {}))


# ---------------------------------------------------------------------------------------------
# what a sub-model contributes: its logits or its penultimate features
# ---------------------------------------------------------------------------------------------

def _timm_features(model: nn.Module, x):
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _is_method(model: nn.Module, name: str) -> bool:
    value = getattr(model, name, None)
    return callable(value) and not isinstance(value, nn.Module)  # timm's VGG has a .features Sequential


#: how to get the penultimate vector, tried in order: (applies?, extract)
FEATURE_EXTRACTORS: list[tuple[Callable[[nn.Module], bool], Callable]] = [
    (lambda m: _is_method(m, "features"), lambda m, x: m.features(x)),  # CaptionClassifier
    (lambda m: _is_method(m, "embed"), lambda m, x: m.embed(x)),  # ImageModel: what its head reads
    (lambda m: hasattr(m, "forward_features") and hasattr(m, "forward_head"), _timm_features),  # bare timm
]


def extract_features(model: nn.Module, inputs) -> torch.Tensor:
    for applies, extract in FEATURE_EXTRACTORS:
        if applies(model):
            return extract(model, inputs)
    raise TypeError(f"model: {type(model).__name__} offers no penultimate features (define features(inputs) "
                    f"or embed(inputs), or pass a timm model); use fusion_input='logits'")


def _linear_head(model: nn.Module) -> nn.Linear | None:
    head = getattr(model, "head", None)
    return head if isinstance(head, nn.Linear) else None


#: fusion_input -> readers of a model's output width, tried in order
OUTPUT_WIDTHS: dict[str, list[Callable[[nn.Module], int | None]]] = {
    "logits": [lambda m: getattr(m, "num_classes", None),
               lambda m: (getattr(m, "spec", None) or {}).get("num_classes"),
               lambda m: _linear_head(m).out_features if _linear_head(m) else None],
    "features": [lambda m: getattr(m, "feature_dim", None),
                 lambda m: _linear_head(m).in_features if _linear_head(m) else None,
                 lambda m: getattr(m, "num_features", None)],
}


def output_dim(model: nn.Module, fusion_input: str) -> int:
    """Width of what ``model`` contributes: its class count (logits) or penultimate width (features)."""
    for read in OUTPUT_WIDTHS[fusion_input]:
        value = read(model)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"fusion_input={fusion_input!r}: cannot tell the output width of {type(model).__name__}; "
                     f"pass image_dim/caption_dim")


def sub_model_output(model: nn.Module, inputs, fusion_input: str) -> torch.Tensor:
    return model(inputs) if fusion_input == "logits" else extract_features(model, inputs)


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: must be one of {list(choices)}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# the fused model over images + captions
# ---------------------------------------------------------------------------------------------

CAPTION_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class FusionModel(nn.Module):
    """Image model + caption model + a fusion head; ``inputs`` = ``{"image", "input_ids", "attention_mask"}``.

    ``mode='frozen_submodels'``: the sub-models get no gradients and stay in eval mode (dropout off, batch-norm
    statistics fixed) even when the training loop calls ``train()``. ``mode='end_to_end'``: all parameters
    train; ``backbone_parameters()`` are the sub-models so ``freeze_epochs`` trains the head first.
    """

    def __init__(self, image_model: nn.Module, caption_model: nn.Module, head: str = "concat",
                 fusion_input: str = "logits", mode: str = "frozen_submodels", num_classes: int = 20,
                 image_dim: int | None = None, caption_dim: int | None = None, identity_init: bool | None = None):
        super().__init__()
        _check_choice("fusion_input", fusion_input, FUSION_INPUTS)
        mode = current_choice(mode, RENAMED_MODES, "mode")   # an older checkpoint's spec, or a caller's
        _check_choice("mode", mode, FUSION_MODES)
        self.image_model, self.caption_model = image_model, caption_model
        self.fusion_input, self.mode, self.num_classes = fusion_input, mode, num_classes
        image_dim = image_dim or output_dim(image_model, fusion_input)
        caption_dim = caption_dim or output_dim(caption_model, fusion_input)
        if identity_init is None:
            identity_init = head == "concat" and fusion_input == "logits" and image_dim == caption_dim == num_classes
        self.head = create_head(head, image_dim, caption_dim, num_classes, identity_init)
        self.spec = {"kind": "fusion", "head": head, "fusion_input": fusion_input, "mode": mode,
                     "num_classes": num_classes, "image_dim": image_dim, "caption_dim": caption_dim,
                     "image": dict(getattr(image_model, "spec", {}) or {}),
                     "caption": dict(getattr(caption_model, "spec", {}) or {})}
        for p in self.sub_model_parameters():  # set both ways: sub-models may come from an earlier frozen fusion
            p.requires_grad_(mode == "end_to_end")
        self.train(self.training)

    def sub_model_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.image_model.parameters()
        yield from self.caption_model.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.sub_model_parameters() if self.mode == "end_to_end" else iter(())

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mode == "frozen_submodels":
            self.image_model.eval()
            self.caption_model.eval()
        return self

    def _sub_outputs(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(inputs, Mapping) or "image" not in inputs or "input_ids" not in inputs:
            raise TypeError("inputs: expected a dict with 'image', 'input_ids' and 'attention_mask'")
        caption_inputs = {k: inputs[k] for k in CAPTION_KEYS if k in inputs}
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.mode == "end_to_end"):
            x_image = sub_model_output(self.image_model, inputs["image"], self.fusion_input)
            x_caption = sub_model_output(self.caption_model, caption_inputs, self.fusion_input)
        return x_image, x_caption

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(*self._sub_outputs(inputs))


class ImageCaptionDataset(Dataset):
    """Zip an image dataset and a caption dataset of the same rows into fusion inputs.

    Targets must agree row by row, which catches two datasets built in different orders.
    """

    def __init__(self, image_set: Dataset, caption_set: Dataset):
        if len(image_set) != len(caption_set):
            raise ValueError(f"caption_set: has {len(caption_set)} rows, image_set has {len(image_set)}")
        self.image_set, self.caption_set = image_set, caption_set

    def __len__(self) -> int:
        return len(self.image_set)

    @property
    def targets(self):
        """The caption set's targets, so the training loop need not decode images to read them."""
        return getattr(self.caption_set, "targets", None)

    def __getitem__(self, index: int):
        image, target = self.image_set[index]
        caption, caption_target = self.caption_set[index]
        if not torch.equal(torch.as_tensor(target), torch.as_tensor(caption_target)):
            raise ValueError(f"row {index}: image and caption datasets disagree on the labels (different row order?)")
        return {"image": image, **caption}, target


# ---------------------------------------------------------------------------------------------
# the cheap path: a head on precomputed sub-model outputs
# ---------------------------------------------------------------------------------------------

class PrecomputedFusion(nn.Module):
    """A fusion head on saved sub-model outputs; ``inputs`` = ``{"image": (B, d_i), "caption": (B, d_c)}``."""

    def __init__(self, head: str, image_dim: int, caption_dim: int, num_classes: int = 20,
                 identity_init: bool | None = None):
        super().__init__()
        if identity_init is None:
            identity_init = head == "concat" and image_dim == caption_dim == num_classes
        self.head = create_head(head, image_dim, caption_dim, num_classes, identity_init)
        self.num_classes = num_classes
        self.spec = {"kind": "fusion_head", "head": head, "image_dim": image_dim, "caption_dim": caption_dim,
                     "num_classes": num_classes}

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(inputs["image"], inputs["caption"])


class ArrayPairDataset(Dataset):
    """Rows of two saved output matrices (``.npy`` paths or arrays) and optional targets; indexed by
    a list of rows it returns their batch (``core.inference.make_loader`` fetches batches so)."""

    indexes_batches = True

    def __init__(self, image_outputs, caption_outputs, targets=None, num_classes: int = 20):
        self.image = torch.as_tensor(_load_array(image_outputs, "image_outputs"), dtype=torch.float32)
        self.caption = torch.as_tensor(_load_array(caption_outputs, "caption_outputs"), dtype=torch.float32)
        if len(self.image) != len(self.caption):
            raise ValueError(f"caption_outputs: has {len(self.caption)} rows, image_outputs has {len(self.image)}")
        if targets is None:
            self.targets = torch.zeros(len(self.image), num_classes)
        else:
            self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
            if self.targets.ndim != 2 or len(self.targets) != len(self.image):
                raise ValueError(f"targets: expected ({len(self.image)}, C), got {tuple(self.targets.shape)}")

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, index: int):
        return {"image": self.image[index], "caption": self.caption[index]}, self.targets[index]

    @property
    def dims(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.caption.shape[1])


def _load_array(value, name: str) -> np.ndarray:
    array = np.load(value) if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__") else np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected an (n, d) matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: holds NaN or infinite values")
    return array


def compute_outputs(model: nn.Module, dataset: Dataset, fusion_input: str, inference: Inference, *, name: str,
                    collate_fn=None, progress: bool = True) -> np.ndarray:
    """A sub-model's logits or penultimate features for every row, in dataset order (to save as .npy);
    ``name`` names the pass in the progress lines."""
    _check_choice("fusion_input", fusion_input, FUSION_INPUTS)
    if len(dataset) == 0:
        return np.zeros((0, output_dim(model, fusion_input)), dtype=np.float32)
    was_training = model.training
    out = run_model(model, dataset, inference, name=name, collate_fn=collate_fn, progress=progress,
                    output=lambda m, inputs: sub_model_output(m, inputs, fusion_input))
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------
# late fusion: the baseline any learned head has to beat
# ---------------------------------------------------------------------------------------------




# ---------------------------------------------------------------------------------------------
# stage parameters
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# rebuilding from a checkpoint's spec
# ---------------------------------------------------------------------------------------------

def build_fusion_model(spec: dict) -> FusionModel:
    """Sub-models rebuilt from their own specs, then the head; weights are loaded next."""
    from mlc_utils.models import build_model
    for part in ("image", "caption"):
        if not spec.get(part):
            raise ValueError(f"spec.{part}: a fusion checkpoint needs its sub-model's spec to be rebuilt")
    return FusionModel(build_model(spec["image"]), build_model(spec["caption"]), spec["head"], spec["fusion_input"],
                       spec["mode"], spec["num_classes"], spec["image_dim"], spec["caption_dim"], identity_init=False)


def build_fusion_head(spec: dict) -> PrecomputedFusion:
    return PrecomputedFusion(spec["head"], spec["image_dim"], spec["caption_dim"], spec["num_classes"],
                             identity_init=False)


def _register() -> None:
    from mlc_utils.models import register_model_kind
    register_model_kind("fusion", build_fusion_model)
    register_model_kind("fusion_head", build_fusion_head)


_register()
