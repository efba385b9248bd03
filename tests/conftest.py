"""Shared fixtures: the real dev pack (skipped when absent) and a tiny hand-made data folder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("MLC_REAL_DATA", PROJECT.parent / "shared" / "comp5329-dev"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "train.csv").is_file():
        pytest.skip(f"real dev pack not found at {REAL_DATA}")
    return REAL_DATA


def make_tiny_folder(root: Path, n_train: int = 40, n_test: int = 10, size: int = 32, seed: int = 0) -> Path:
    """A data folder in the competition layout: coloured squares per class, quirky captions."""
    from PIL import Image

    from mlc_utils.csvio import write_competition_csv
    rng = np.random.default_rng(seed)
    (root / "data").mkdir(parents=True, exist_ok=True)
    colours = rng.integers(0, 255, size=(20, 3))
    rows = []
    for i in range(n_train + n_test):
        labels = sorted({1} | set(rng.choice([2, 3, 4, 5], size=rng.integers(0, 3), replace=False).tolist())) \
            if rng.random() < 0.75 else [int(rng.choice([3, 4, 5]))]
        image = np.full((size, size, 3), 128, dtype=np.uint8)
        for k, label in enumerate(labels):
            x, y = (k % 2) * size // 2, (k // 2) * size // 2
            image[y:y + size // 2, x:x + size // 2] = colours[label]
        Image.fromarray(image).save(root / "data" / f"{i}.jpg", quality=95)
        caption = f'A "scene" with {", ".join(f"thing{l}" for l in labels)}' + ("\nsecond line/" if i % 7 == 0 else ".")
        rows.append({"ImageID": f"{i}.jpg", "Labels": labels, "Caption": caption})
    frame = pd.DataFrame(rows)
    write_competition_csv(frame.iloc[:n_train], root / "train.csv")
    write_competition_csv(frame.iloc[n_train:][["ImageID", "Caption"]], root / "test.csv")
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_tiny_folder(tmp_path / "tiny")
