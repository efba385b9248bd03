"""The label space: class count, names and the multi-hot encoding every stage shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

#: A Kaggle row may not be empty, so a row with no class at or over its threshold takes its
#: top-scoring class. Decided here once: the submission, the scores, the error analysis and the
#: explorer all default to it through :func:`decide`.
TOP1_FALLBACK = True


def decide(probs, threshold: float | np.ndarray = 0.5, at_least_one: bool = TOP1_FALLBACK) -> np.ndarray:
    """Probabilities -> the chosen labels as a boolean ``(n, C)`` matrix: the study's one rule.

    A class is chosen at or over ``threshold`` (one value or one per class); with ``at_least_one``
    a row with nothing chosen gets its top-scoring class. Every place that turns probabilities into
    labels calls this, so the submission, its scores and the error counts beside them agree.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs: expected an (n, C) matrix, got shape {probs.shape}")
    threshold = np.asarray(threshold, dtype=np.float64)
    if threshold.ndim > 1 or (threshold.ndim == 1 and threshold.shape != (probs.shape[1],)):
        raise ValueError(f"threshold: one value or one per class ({probs.shape[1]}), got shape {threshold.shape}")
    chosen = probs >= threshold
    if at_least_one and len(probs):
        empty = ~chosen.any(axis=1)
        chosen[np.flatnonzero(empty), probs[empty].argmax(axis=1)] = True
    return chosen


@dataclass(frozen=True)
class LabelSpace:
    """Classes are the integers ``0 .. num_classes-1`` as written in the competition CSVs.

    Keeping one object for this means the CSV reader, the models and the submission writer
    cannot disagree on how many classes there are or how they are spelled.
    """

    num_classes: int = 20
    names: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if not isinstance(self.num_classes, (int, np.integer)) or isinstance(self.num_classes, bool) \
                or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if not self.names:
            object.__setattr__(self, "names", tuple(str(i) for i in range(self.num_classes)))
        elif len(self.names) != self.num_classes:
            raise ValueError(f"label names: {len(self.names)} names given for num_classes={self.num_classes}")
        else:
            object.__setattr__(self, "names", tuple(str(n) for n in self.names))

    def parse(self, text: str) -> list[int]:
        """``"8 3 7"`` -> ``[8, 3, 7]`` (order kept); raises ValueError naming the bad token."""
        labels = []
        for token in str(text).split():
            if not token.lstrip("-").isdigit():
                raise ValueError(f"label {token!r} is not an integer")
            value = int(token)
            if not 0 <= value < self.num_classes:
                raise ValueError(f"label {value} is outside the label space 0..{self.num_classes - 1}")
            labels.append(value)
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels {text!r} repeat a class")
        return labels

    @staticmethod
    def format(labels: Iterable[int]) -> str:
        """``[8, 3]`` -> ``"8 3"`` (the Kaggle submission spelling)."""
        return " ".join(str(int(x)) for x in labels)

    def encode(self, label_lists: Sequence[Sequence[int]]) -> np.ndarray:
        """Lists of class ids -> an ``(n, num_classes)`` float32 multi-hot matrix."""
        out = np.zeros((len(label_lists), self.num_classes), dtype=np.float32)
        for row, labels in enumerate(label_lists):
            for label in labels:
                if not 0 <= int(label) < self.num_classes:
                    raise ValueError(f"row {row}: label {label} is outside 0..{self.num_classes - 1}")
                out[row, int(label)] = 1.0
        return out

    def decode(self, scores: np.ndarray, threshold: float | np.ndarray = 0.5,
               at_least_one: bool = TOP1_FALLBACK) -> list[list[int]]:
        """Scores (or a 0/1 matrix) -> sorted class ids per row, chosen by :func:`decide`."""
        scores = np.asarray(scores)
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(f"scores must have shape (n, {self.num_classes}), got {scores.shape}")
        return [np.flatnonzero(row).tolist() for row in decide(scores, threshold, at_least_one)]

    def describe(self, labels: Iterable[int]) -> str:
        """``[3, 8]`` -> ``"car, truck"``: labels for reading, by name as the tables give them
        (the class number where the study names none)."""
        return ", ".join(self.names[int(c)] for c in labels)
