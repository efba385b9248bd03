"""Losses against hand-computed values; label smoothing and mixup for multi-hot targets."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlc_utils.train.losses import (
    LOSSES,
    build_loss,
    distillation_loss,
    pos_weight_from_targets,
    smooth_targets,
)

LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bce_reference():
    # mean of -log p for positives and -log(1-p) for negatives, written out element by element
    expected = (-math.log(sig(0.0)) - math.log(1 - sig(2.0)) - math.log(1 - sig(-1.0)) - math.log(sig(0.5))) / 4
    assert build_loss("bce")(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


def test_pos_weight_is_negatives_over_positives():
    y = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=np.float32)
    assert pos_weight_from_targets(y).tolist() == pytest.approx([3.0, 1.0, 1 / 3])  # class 1: no positives -> 1


def test_weighted_bce_reference():
    pw = torch.tensor([3.0, 0.5])
    expected = (-3.0 * math.log(sig(0.0)) - math.log(1 - sig(2.0)) - math.log(1 - sig(-1.0))
                - 0.5 * math.log(sig(0.5))) / 4
    assert build_loss("weighted_bce", pw)(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="pos_weight"):
        build_loss("weighted_bce")


def test_focal_reference():
    gamma, alpha = 2.0, 0.25
    terms = []
    for x, y in zip(LOGITS.flatten().tolist(), TARGETS.flatten().tolist()):
        p = sig(x)
        terms.append(-alpha * (1 - p) ** gamma * math.log(p) if y else
                     -(1 - alpha) * p ** gamma * math.log(1 - p))
    assert build_loss("focal")(LOGITS, TARGETS).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_asl_reference():
    gamma_neg, gamma_pos, clip = 4.0, 1.0, 0.05
    total = 0.0
    for x, y in zip(LOGITS.flatten().tolist(), TARGETS.flatten().tolist()):
        p = sig(x)
        if y:
            total += -((1 - p) ** gamma_pos) * math.log(p)
        else:
            p_shift = max(p - clip, 0.0)  # asymmetric clipping of easy negatives
            total += -(p_shift ** gamma_neg) * math.log(1 - p_shift)
    # timm 'batchmean': summed over classes, averaged over the batch
    assert build_loss("asl")(LOGITS, TARGETS).item() == pytest.approx(total / 2, rel=1e-5)


def test_unknown_loss_lists_the_choices():
    with pytest.raises(ValueError, match="loss: must be one of"):
        build_loss("hinge")
    assert set(LOSSES) == {"bce", "weighted_bce", "focal", "asl"}


def test_binary_label_smoothing_moves_towards_half():
    out = smooth_targets(torch.tensor([[1.0, 0.0, 1.0]]), 0.1)
    assert torch.allclose(out, torch.tensor([[0.95, 0.05, 0.95]]))
    assert smooth_targets(TARGETS, 0.0) is TARGETS


def test_distillation_reference_and_zero_gradient_at_agreement():
    t = 2.0
    student = torch.tensor([[1.0, -2.0]], requires_grad=True)
    teacher = torch.tensor([[3.0, 0.0]])
    soft = [sig(3.0 / t), sig(0.0)]
    expected = sum(-(q * math.log(sig(s / t)) + (1 - q) * math.log(1 - sig(s / t)))
                   for s, q in zip([1.0, -2.0], soft)) / 2 * t * t
    assert distillation_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-6)
    same = teacher.clone().requires_grad_(True)
    distillation_loss(same, teacher, t).backward()
    assert torch.allclose(same.grad, torch.zeros_like(same.grad), atol=1e-7)


def test_timm_mixup_on_multi_hot_targets():
    from timm.data import Mixup
    torch.manual_seed(0)
    np.random.seed(0)
    x = torch.randn(4, 3, 8, 8)
    y = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    mixer = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=3, multi_label=True)
    xm, ym = mixer(x.clone(), y)
    assert xm.shape == x.shape and ym.shape == y.shape
    lam = float(ym[0, 0])  # row 0 has class 0, its partner (row 3) does not
    assert torch.allclose(ym, lam * y + (1 - lam) * y.flip(0), atol=1e-6)
    assert torch.allclose(xm, lam * x + (1 - lam) * x.flip(0), atol=1e-5)
