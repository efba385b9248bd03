"""Train/validation split and K cross-validation folds: iterative multi-label stratification
(scikit-multilearn), seeded.

``iterative_train_test_split`` and ``IterativeStratification`` have no seed of their own (the
latter's ``random_state`` is unused); they follow numpy's global RNG, so we seed it around the call
and restore the caller's RNG state afterwards.

``split.csv`` has the columns ``ImageID,fold`` (the holdout: ``train``/``val``) and, when the study
cross-validates, ``cv_fold`` (0..K-1), so a holdout-only file reads exactly as before.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlc_utils.core.io import atomic_write_text

FOLDS = ("train", "val")
CV_COLUMN = "cv_fold"


class _seeded_numpy:
    """numpy's global RNG seeded inside the block, the caller's state restored after it."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.state = np.random.get_state()
        np.random.seed(self.seed)

    def __exit__(self, *exc):
        np.random.set_state(self.state)


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
    with _seeded_numpy(seed):
        index = np.arange(n).reshape(-1, 1)
        train_idx, _, val_idx, _ = iterative_train_test_split(index, y.astype(int), test_size=val_fraction)
    return np.sort(train_idx.ravel()), np.sort(val_idx.ravel())


def stratified_folds(y: np.ndarray, n_splits: int, seed: int = 3407) -> np.ndarray:
    """The cross-validation fold (0..n_splits-1) of every row: ``IterativeStratification(n_splits, order=1)``.

    Each row is scored by exactly one fold's model (out-of-fold), so stacking and thresholds can
    learn from outputs of models that never saw those rows.
    """
    y = np.asarray(y)
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits: must be an integer >= 2 (got {n_splits!r})")
    if len(y) < n_splits:
        raise ValueError(f"n_splits: {n_splits} folds need at least {n_splits} rows (got {len(y)})")
    from skmultilearn.model_selection import IterativeStratification
    fold = np.full(len(y), -1, dtype=np.int64)
    with _seeded_numpy(seed):
        splitter = IterativeStratification(n_splits=int(n_splits), order=1)
        for k, (_, val_idx) in enumerate(splitter.split(np.zeros((len(y), 1)), y.astype(int))):
            fold[val_idx] = k
    if (fold < 0).any() or len(np.unique(fold)) != n_splits:
        raise ValueError(f"n_splits: {n_splits} folds left a fold empty or a row without a fold; use fewer folds")
    return fold


def split_frame(image_ids, train_idx, val_idx, cv_fold: np.ndarray | None = None) -> pd.DataFrame:
    """The ``split.csv`` table; ``cv_fold`` (one fold id per row) adds the cross-validation column."""
    image_ids = np.asarray(image_ids)
    fold = np.empty(len(image_ids), dtype=object)
    fold[train_idx] = "train"
    fold[val_idx] = "val"
    if any(f is None for f in fold):
        raise ValueError("split does not cover every row")
    frame = pd.DataFrame({"ImageID": image_ids, "fold": fold})
    if cv_fold is not None:
        cv_fold = np.asarray(cv_fold)
        if cv_fold.shape != (len(image_ids),):
            raise ValueError(f"cv_fold: {cv_fold.shape[0]} fold ids for {len(image_ids)} rows")
        frame[CV_COLUMN] = cv_fold.astype(int)
    return frame


def save_split(frame: pd.DataFrame, path: str | Path) -> Path:
    return atomic_write_text(path, frame.to_csv(index=False))


def load_split(path: str | Path, image_ids=None) -> pd.DataFrame:
    """Read ``split.csv``; with ``image_ids``, check it covers exactly those rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist: run the split stage first")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) not in (["ImageID", "fold"], ["ImageID", "fold", CV_COLUMN]):
        raise ValueError(f"{path}: expected columns ImageID,fold[,{CV_COLUMN}], got {','.join(frame.columns)}")
    bad = frame.loc[~frame.fold.isin(FOLDS)]
    if len(bad):
        raise ValueError(f"{path}:{bad.index[0] + 2}: fold {bad.fold.iloc[0]!r} is not one of {FOLDS}")
    if CV_COLUMN in frame:
        bad = frame.loc[~frame[CV_COLUMN].str.fullmatch(r"\d+")]
        if len(bad):
            raise ValueError(f"{path}:{bad.index[0] + 2}: {CV_COLUMN} {bad[CV_COLUMN].iloc[0]!r} is not a fold number")
        frame[CV_COLUMN] = frame[CV_COLUMN].astype(int)
        present = sorted(frame[CV_COLUMN].unique())
        if present != list(range(len(present))):
            raise ValueError(f"{path}: {CV_COLUMN} must number the folds 0..K-1 without gaps (got {present})")
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


def cv_fold_ids(split: pd.DataFrame, image_ids) -> np.ndarray | None:
    """The cross-validation fold of each row of ``image_ids`` (data order); None for a holdout-only split."""
    if CV_COLUMN not in split:
        return None
    return split.set_index("ImageID").loc[list(image_ids), CV_COLUMN].to_numpy().astype(int)


def frequency_table(y: np.ndarray, folds: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per-class frequency in each fold (the figure/table comparing splits)."""
    table = pd.DataFrame({name: y[idx].mean(axis=0) for name, idx in folds.items()})
    table.index.name = "class"
    return table


def stratification_error(y: np.ndarray, train_idx, val_idx) -> float:
    """Mean absolute difference of class frequencies between folds (lower is better stratified)."""
    return float(np.abs(y[train_idx].mean(axis=0) - y[val_idx].mean(axis=0)).mean())
