from __future__ import annotations

import numpy as np
import pytest

from mlc_utils.data import split as S


def imbalanced_labels(n=600, seed=0):
    rng = np.random.default_rng(seed)
    probs = np.array([0.0, 0.75, 0.05, 0.14, 0.04, 0.03, 0.02, 0.01])
    y = (rng.random((n, len(probs))) < probs).astype(int)
    y[y.sum(1) == 0, 1] = 1
    return y


def test_iterative_split_is_stratified_better_than_random():
    y = imbalanced_labels()
    tr, va = S.stratified_split(y, 0.2, seed=3407)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    assert abs(len(va) - 120) <= 3
    r_tr, r_va = S.stratified_split(y, 0.2, seed=3407, method="random")
    # stratification: every class's frequency nearly equal in both folds, and closer than random
    assert np.abs(y[tr].mean(0) - y[va].mean(0)).max() < 0.03
    assert S.stratification_error(y, tr, va) < S.stratification_error(y, r_tr, r_va)
    # rare classes present in validation
    assert all(y[va, c].sum() > 0 for c in range(1, y.shape[1]))


def leaves_global_rng(call):
    """``call()``'s result, asserting it drew nothing from numpy's global random state."""
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    result = call()
    assert (np.random.get_state()[1] == before).all(), "the split used numpy's global random state"
    return result


def test_split_deterministic_and_leaves_global_rng():
    y = imbalanced_labels(200)
    a = leaves_global_rng(lambda: S.stratified_split(y, 0.25, seed=5))
    b = S.stratified_split(y, 0.25, seed=5)
    c = S.stratified_split(y, 0.25, seed=6)
    assert all((x == z).all() for x, z in zip(a, b))
    assert not (a[1].shape == c[1].shape and (a[1] == c[1]).all())


def test_save_load_and_checks(tmp_path):
    ids = [f"{i}.jpg" for i in range(10)]
    frame = S.split_frame(ids, np.arange(8), np.arange(8, 10))
    path = S.save_split(frame, tmp_path / "split.csv")
    back = S.load_split(path, ids)
    assert list(back.fold) == ["train"] * 8 + ["val"] * 2
    tr, va = S.fold_indices(back, ids[::-1])
    assert list(va) == [0, 1]
    with pytest.raises(ValueError, match="does not match the data"):
        S.load_split(path, ids + ["extra.jpg"])
    with pytest.raises(FileNotFoundError, match="run the split stage first"):
        S.load_split(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="val_fraction"):
        S.stratified_split(np.ones((5, 2)), 1.0)


def test_stratified_folds_cover_every_row_once_balanced_and_seeded():
    y = imbalanced_labels(300)
    fold = leaves_global_rng(lambda: S.stratified_folds(y, 5, seed=5))
    assert fold.shape == (300,) and sorted(np.unique(fold)) == [0, 1, 2, 3, 4]
    assert np.bincount(fold).min() >= 50  # sizes near 300 / 5
    assert (S.stratified_folds(y, 5, seed=5) == fold).all()
    assert not (S.stratified_folds(y, 5, seed=6) == fold).all()
    # class frequencies per fold closer to the whole than a random fold assignment's
    random_fold = np.random.default_rng(5).permutation(300) % 5

    def gap(f):
        return np.mean([S.stratification_error(y, np.flatnonzero(f != k), np.flatnonzero(f == k)) for k in range(5)])
    assert gap(fold) < gap(random_fold)


@pytest.mark.parametrize("k", [1, 0, 2.5, True])
def test_stratified_folds_rejects_bad_counts(k):
    with pytest.raises(ValueError, match="n_splits"):
        S.stratified_folds(imbalanced_labels(50), k)


def test_cv_fold_column_round_trips_and_holdout_files_still_read(tmp_path):
    ids = [f"{i}.jpg" for i in range(10)]
    holdout = S.save_split(S.split_frame(ids, np.arange(8), np.arange(8, 10)), tmp_path / "holdout.csv")
    assert holdout.read_text().splitlines()[0] == "ImageID,fold"  # unchanged format without folds
    assert S.cv_fold_ids(S.load_split(holdout, ids), ids) is None
    cv = np.arange(10) % 3
    path = S.save_split(S.split_frame(ids, np.arange(8), np.arange(8, 10), cv), tmp_path / "split.csv")
    back = S.load_split(path, ids)
    assert list(S.cv_fold_ids(back, ids[::-1])) == list(cv[::-1])
    assert list(S.fold_indices(back, ids)[1]) == [8, 9]
    path.write_text(path.read_text().replace(",2\n", ",7\n"))
    with pytest.raises(ValueError, match="cv_fold must number the folds 0..K-1"):
        S.load_split(path, ids)
    with pytest.raises(ValueError, match="cv_fold: 3 fold ids for 10 rows"):
        S.split_frame(ids, np.arange(8), np.arange(8, 10), np.arange(3))
