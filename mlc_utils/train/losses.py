"""Multi-label losses on logits, by name (registry :data:`LOSSES`), plus distillation and smoothing.

- ``bce``: ``BCEWithLogitsLoss``, one independent sigmoid per class.
- ``weighted_bce``: BCE with ``pos_weight = negatives / positives`` per class from the training
  labels, so rare classes are not drowned by the many negatives.
- ``focal``: torchvision's ``sigmoid_focal_loss`` (Lin et al.), down-weighting easy examples.
- ``asl``: timm's ``AsymmetricLossMultiLabel`` (Ben-Baruch et al.), which focuses harder on
  negatives and clips easy ones.

Label smoothing for multi-hot targets moves every target towards 0.5 (``y(1-e) + e/2``), as
timm's multi-label Mixup does; the softmax-style ``e/C`` would be wrong for independent sigmoids.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def smooth_targets(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Binary label smoothing: each target moves ``smoothing/2`` towards 0.5."""
    if not smoothing:
        return targets
    from timm.data.mixup import mixup_target
    return mixup_target(targets, targets.shape[1], lam=1.0, smoothing=smoothing, multi_label=True)


def pos_weight_from_targets(targets: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``negatives / positives`` per class (a class without positives gets weight 1)."""
    y = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
    if y.ndim != 2 or not len(y):
        raise ValueError(f"targets must be a non-empty (n, C) matrix, got shape {tuple(y.shape)}")
    positives = (y > 0.5).sum(0).float()
    negatives = len(y) - positives
    return torch.where(positives > 0, negatives / positives.clamp(min=1), torch.ones_like(positives))


class FocalLoss(nn.Module):
    """Sigmoid focal loss averaged over batch and classes (``alpha < 0`` disables class balancing)."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import sigmoid_focal_loss
        return sigmoid_focal_loss(logits.float(), targets.float(), alpha=self.alpha, gamma=self.gamma,
                                  reduction="mean")


def _bce(pos_weight, options) -> nn.Module:
    return nn.BCEWithLogitsLoss()


def _weighted_bce(pos_weight, options) -> nn.Module:
    if pos_weight is None:
        raise ValueError("loss 'weighted_bce' needs pos_weight (computed from the training labels)")
    return nn.BCEWithLogitsLoss(pos_weight=torch.as_tensor(pos_weight, dtype=torch.float32))


def _focal(pos_weight, options) -> nn.Module:
    return FocalLoss(gamma=options.get("focal_gamma", 2.0), alpha=options.get("focal_alpha", 0.25))


def _asl(pos_weight, options) -> nn.Module:
    from timm.loss import AsymmetricLossMultiLabel
    return AsymmetricLossMultiLabel(gamma_neg=options.get("asl_gamma_neg", 4.0),
                                    gamma_pos=options.get("asl_gamma_pos", 1.0),
                                    clip=options.get("asl_clip", 0.05), reduction="batchmean")


# name -> builder(pos_weight or None, options dict) -> module(logits, targets) -> scalar
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bce": _bce,
    "weighted_bce": _weighted_bce,
    "focal": _focal,
    "asl": _asl,
}
NEEDS_POS_WEIGHT = frozenset({"weighted_bce"})


def build_loss(name: str, pos_weight: torch.Tensor | None = None, **options) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"loss: must be one of {sorted(LOSSES)} (got {name!r})")
    return LOSSES[name](pos_weight, options)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Soft-target BCE between temperature-scaled sigmoids, times ``T**2`` (Hinton) to keep gradients comparable."""
    t = float(temperature)
    soft = torch.sigmoid(teacher_logits.float() / t)
    return F.binary_cross_entropy_with_logits(student_logits.float() / t, soft) * (t * t)
