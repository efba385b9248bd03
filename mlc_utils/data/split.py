"""Train/validation split: iterative multi-label stratification (scikit-multilearn), seeded.

``iterative_train_test_split`` has no seed of its own; it follows numpy's global RNG, so we seed
it around the call and restore the caller's RNG state afterwards.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlc_utils.core.io import atomic_write_text

FOLDS = ("train", "val")


def stratified_split(y: np.ndarray, val_fraction: float = 0.2, seed: int = 3407,
                     method: str = "iterative") -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val), each sorted. ``method='random'`` is the unstratified baseline."""
    y = np.asarray(y)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: must be in (0, 1) (got {val_fraction})")
    n = len(y)
    if n < 2:
        raise ValueError(f"need at least 2 rows to split, got {n}")
    if method == "random":
        order = np.random.default_rng(seed).permutation(n)
        n_val = max(1, int(round(n * val_fraction)))
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    if method != "iterative":
        raise ValueError(f"method: must be 'iterative' or 'random' (got {method!r})")
    from skmultilearn.model_selection import iterative_train_test_split
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        index = np.arange(n).reshape(-1, 1)
        train_idx, _, val_idx, _ = iterative_train_test_split(index, y.astype(int), test_size=val_fraction)
    finally:
        np.random.set_state(state)
    return np.sort(train_idx.ravel()), np.sort(val_idx.ravel())


def split_frame(image_ids, train_idx, val_idx) -> pd.DataFrame:
    image_ids = np.asarray(image_ids)
    fold = np.empty(len(image_ids), dtype=object)
    fold[train_idx] = "train"
    fold[val_idx] = "val"
    if any(f is None for f in fold):
        raise ValueError("split does not cover every row")
    return pd.DataFrame({"ImageID": image_ids, "fold": fold})


def save_split(frame: pd.DataFrame, path: str | Path) -> Path:
    return atomic_write_text(path, frame.to_csv(index=False))


def load_split(path: str | Path, image_ids=None) -> pd.DataFrame:
    """Read ``split.csv``; with ``image_ids``, check it covers exactly those rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist: run the split stage first")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != ["ImageID", "fold"]:
        raise ValueError(f"{path}: expected columns ImageID,fold, got {','.join(frame.columns)}")
    bad = frame.loc[~frame.fold.isin(FOLDS)]
    if len(bad):
        raise ValueError(f"{path}:{bad.index[0] + 2}: fold {bad.fold.iloc[0]!r} is not one of {FOLDS}")
    if image_ids is not None:
        missing = set(image_ids) - set(frame.ImageID)
        extra = set(frame.ImageID) - set(image_ids)
        if missing or extra:
            raise ValueError(f"{path} does not match the data: {len(missing)} train rows without a fold, "
                             f"{len(extra)} folds for unknown rows (e.g. {sorted(missing or extra)[:3]}); "
                             "re-run the split stage")
    return frame


def fold_indices(split: pd.DataFrame, image_ids) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the train and val rows of ``image_ids`` (the data order) under ``split``."""
    fold = split.set_index("ImageID").loc[list(image_ids), "fold"].to_numpy()
    return np.flatnonzero(fold == "train"), np.flatnonzero(fold == "val")


def frequency_table(y: np.ndarray, folds: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per-class frequency in each fold (the figure/table comparing splits)."""
    table = pd.DataFrame({name: y[idx].mean(axis=0) for name, idx in folds.items()})
    table.index.name = "class"
    return table


def stratification_error(y: np.ndarray, train_idx, val_idx) -> float:
    """Mean absolute difference of class frequencies between folds (lower is better stratified)."""
    return float(np.abs(y[train_idx].mean(axis=0) - y[val_idx].mean(axis=0)).mean())
