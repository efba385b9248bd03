"""What each demo image holds: its labels, drawn at the real training set's frequencies, and the
objects that show them (class and size), in drawing order."""
from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse",
)
NUM_CLASSES = len(CLASS_NAMES)
PERSON = 1
MAX_LABELS = 4
SMALL, LARGE = (0.13, 0.22), (0.26, 0.58)  # object size ranges, as a share of the image's short side

# Target share of images holding each class (the real training set's frequencies, roughly).
TARGET_FREQUENCY: dict[int, float] = {
    1: 0.75, 2: 0.03, 3: 0.14, 4: 0.035, 5: 0.03, 6: 0.04, 7: 0.035, 8: 0.07, 9: 0.03, 10: 0.04,
    11: 0.015, 13: 0.015, 14: 0.008, 15: 0.065, 16: 0.03, 17: 0.045, 18: 0.045, 19: 0.03,
}


def _other_rates() -> np.ndarray:
    """Per-class Bernoulli rates for the non-person classes, so the *final* frequencies hit the targets.

    An image without a person must hold something else, so those images redraw until they do; that
    lifts every rate by ``1 / (1 - P(nothing))`` on the non-person share. Solve the fixed point.
    """
    target = np.zeros(NUM_CLASSES)
    for cls, freq in TARGET_FREQUENCY.items():
        if cls != PERSON:
            target[cls] = freq
    p_person = TARGET_FREQUENCY[PERSON]
    rates = target.copy()
    for _ in range(100):
        p_nothing = float(np.prod(1.0 - rates))
        rates = target / (p_person + (1.0 - p_person) / (1.0 - p_nothing))
    return rates


_RATES = _other_rates()


def sample_labels(rng: np.random.Generator) -> list[int]:
    """1..4 distinct classes, in a random order (the real file does not sort them)."""
    has_person = rng.random() < TARGET_FREQUENCY[PERSON]
    while True:
        others = np.flatnonzero(rng.random(NUM_CLASSES) < _RATES).tolist()
        total = len(others) + has_person
        if 1 <= total <= MAX_LABELS:
            break
    labels = others + ([PERSON] if has_person else [])
    return [labels[i] for i in rng.permutation(len(labels))]


def object_sizes(rng: np.random.Generator, labels: list[int]) -> list[tuple[int, float]]:
    """Instances to draw: (class, size as a share of the image's short side), in drawing order."""
    instances = []
    for cls in labels:
        copies = 1 + int(rng.random() < (0.3 if cls == PERSON else 0.1))
        for _ in range(copies):
            small = rng.random() < 0.25
            size = rng.uniform(SMALL[0], SMALL[1]) if small else rng.uniform(LARGE[0], LARGE[1])
            instances.append((cls, float(size)))
    return [instances[i] for i in rng.permutation(len(instances))]
