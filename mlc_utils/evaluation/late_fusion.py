"""Late fusion: a weighted average of an image model's and a caption model's probabilities, the
weight (and threshold) chosen on validation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlc_utils.evaluation import metrics
from mlc_utils.evaluation.metrics import SEARCH_THRESHOLDS


def late_fusion(p_image: np.ndarray, p_caption: np.ndarray, weight: float) -> np.ndarray:
    """``weight * p_image + (1 - weight) * p_caption`` (probabilities, same shape)."""
    p_image, p_caption = np.asarray(p_image, dtype=np.float64), np.asarray(p_caption, dtype=np.float64)
    if p_image.shape != p_caption.shape:
        raise ValueError(f"p_caption: shape {p_caption.shape} differs from p_image {p_image.shape}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight: must be in [0, 1], got {weight}")
    return weight * p_image + (1.0 - weight) * p_caption


@dataclass
class LateFusionResult:
    weight: float  # on the image model; the caption model gets 1 - weight
    threshold: float
    val_f1: float
    table: pd.DataFrame  # one row per weight tried: weight, threshold, sample_f1

    def apply(self, p_image: np.ndarray, p_caption: np.ndarray) -> np.ndarray:
        return late_fusion(p_image, p_caption, self.weight)


def tune_late_fusion(y_val: np.ndarray, p_image: np.ndarray, p_caption: np.ndarray,
                     weights: np.ndarray | None = None, tune_threshold: bool = True,
                     search_thresholds=SEARCH_THRESHOLDS) -> LateFusionResult:
    """The image weight (and global threshold) maximising validation sample-F1.

    Each weight is scored at the best of a coarse threshold grid (sample-F1 costs a few ms per
    call); the chosen weight then gets the full threshold grid. Ties go to the weight nearest 0.5,
    the least committal choice on a flat optimum.
    """
    weights = np.round(np.linspace(0.0, 1.0, 21), 4) if weights is None else np.asarray(weights, dtype=float)
    grid = np.asarray(search_thresholds, dtype=float) if tune_threshold else np.array([0.5])
    rows = []
    for w in weights:
        threshold, score = metrics.tune_global_threshold(y_val, late_fusion(p_image, p_caption, float(w)), grid)
        rows.append({"weight": float(w), "threshold": threshold, "sample_f1": score})
    table = pd.DataFrame(rows)
    best = table[table["sample_f1"] >= table["sample_f1"].max() - 1e-12]
    weight = float(best.loc[(best["weight"] - 0.5).abs().idxmin(), "weight"])
    fused = late_fusion(p_image, p_caption, weight)
    threshold, score = metrics.tune_global_threshold(y_val, fused) if tune_threshold \
        else (0.5, metrics.sample_f1(y_val, fused, 0.5))
    return LateFusionResult(weight, float(threshold), float(score), table)
