"""A tiny learnable image dataset in the competition layout, built in tmp_path (no downloads).

Classes 0-3 paint one quadrant each (red, green, blue, white) on a dark noisy background, so a
small model can learn them in a few epochs; the other 16 classes never occur. Import the fixture
into a test module with ``from fixtures_images import tiny_images  # noqa: F401``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlc_utils.csvio import write_competition_csv
from mlc_utils.labels import LabelSpace

QUADRANT_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def draw(labels, size: int, rng: np.random.Generator) -> np.ndarray:
    image = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    half = size // 2
    for label in labels:
        r, c = divmod(label, 2)
        image[r * half:(r + 1) * half, c * half:(c + 1) * half] = QUADRANT_COLOURS[label]
    return image


def make_tiny_dataset(root: Path, n: int = 40, size: int = 32, seed: int = 0, n_test: int = 6) -> dict:
    from PIL import Image
    rng = np.random.default_rng(seed)
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows, test_rows = [], []
    for i in range(n + n_test):
        k = int(rng.integers(1, 3))
        labels = sorted(rng.choice(4, size=k, replace=False).tolist())
        image_id = f"{i}.jpg"
        Image.fromarray(draw(labels, size, rng)).save(root / "data" / image_id, quality=95)
        if i < n:
            rows.append({"ImageID": image_id, "Labels": labels, "Caption": f"a picture number {i}"})
        else:
            test_rows.append({"ImageID": image_id, "Caption": f"a test picture {i}"})
    train = pd.DataFrame(rows)
    write_competition_csv(train, root / "train.csv")
    write_competition_csv(pd.DataFrame(test_rows), root / "test.csv")
    ids = train.ImageID.tolist()
    return {"root": root, "train": train, "ids": ids, "targets": LabelSpace(20).encode(train.Labels.tolist()),
            "test_ids": [r["ImageID"] for r in test_rows]}


@pytest.fixture
def tiny_images(tmp_path) -> dict:
    """40 train + 6 test images of 32x32 px under ``tmp_path/data`` (see module docstring)."""
    return make_tiny_dataset(tmp_path / "tiny")
