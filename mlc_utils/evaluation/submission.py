"""The submission file: ``ImageID,Labels`` (space-separated classes, input order), the one writer
every stage and the ``predict`` command submit through, so every submission has the same format."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mlc_utils.core.io import atomic_write_text
from mlc_utils.data.labels import TOP1_FALLBACK, LabelSpace


def write_submission(image_ids: Sequence[str], probs: np.ndarray, threshold: float | np.ndarray = 0.5,
                     path: str | os.PathLike = "submission.csv", at_least_one: bool = TOP1_FALLBACK) -> Path:
    """``ImageID,Labels`` rows in input order; labels by the study's one rule (:func:`~mlc_utils.data.labels.decide`)."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or len(probs) != len(image_ids):
        raise ValueError(f"probs: shape {probs.shape} does not match {len(image_ids)} image ids")
    labels = LabelSpace(probs.shape[1]).decode(probs, threshold, at_least_one=at_least_one)
    frame = pd.DataFrame({"ImageID": list(image_ids), "Labels": [LabelSpace.format(row) for row in labels]})
    return atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))
