from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mlc_utils.data.labels import TOP1_FALLBACK, LabelSpace, decide
from mlc_utils.evaluation import metrics as M


def test_label_space_round_trip():
    space = LabelSpace(20)
    y = space.encode([[1, 3], [19], [0, 1, 2]])
    assert y.shape == (3, 20) and y.dtype == np.float32 and y.sum() == 6
    assert space.decode(y) == [[1, 3], [19], [0, 1, 2]]
    assert space.parse("8 3 7") == [8, 3, 7] and space.format([8, 3]) == "8 3"


def test_label_space_errors():
    with pytest.raises(ValueError, match="num_classes"):
        LabelSpace(0)
    with pytest.raises(ValueError, match="outside"):
        LabelSpace(5).encode([[5]])
    with pytest.raises(ValueError, match="3 names given for num_classes=2"):
        LabelSpace(2, ("a", "b", "c"))


def test_decode_fallback_to_top1():
    space = LabelSpace(3)
    scores = np.array([[0.1, 0.3, 0.2], [0.9, 0.1, 0.6]])
    assert space.decode(scores, 0.5, at_least_one=False) == [[], [0, 2]]
    assert space.decode(scores, 0.5) == [[1], [0, 2]]  # the study's rule: a row may not be empty
    assert space.decode(scores, np.array([0.05, 0.9, 0.9])) == [[0], [0]]


def _old_rules(probs, threshold, at_least_one):
    """The two rules the study had before :func:`decide` (the scores' and the submission's), verbatim."""
    scored = np.asarray(probs, dtype=np.float64) >= np.asarray(threshold)
    written = np.asarray(probs) >= np.asarray(threshold)
    for pred, base in ((scored, np.asarray(probs, dtype=np.float64)), (written, np.asarray(probs))):
        if at_least_one:
            empty = ~pred.any(axis=1)
            pred[np.flatnonzero(empty), base[empty].argmax(axis=1)] = True
    return scored, written


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_rule_gives_the_labels_scores_and_submission_gave(dtype):
    """The demo's submission bytes and scores stay as they were: decide() is both old rules."""
    rng = np.random.default_rng(5)
    probs = (rng.random((400, 7)) ** 3).astype(dtype)  # many rows with nothing over the threshold
    for threshold in (0.5, 0.43, 0.95, rng.uniform(0.1, 0.9, 7)):
        for at_least_one in (True, False):
            scored, written = _old_rules(probs, threshold, at_least_one)
            chosen = decide(probs, threshold, at_least_one)
            assert np.array_equal(chosen, scored) and np.array_equal(chosen, written)
    assert TOP1_FALLBACK and decide(np.array([[0.1, 0.2]]), 0.5).tolist() == [[False, True]]


def test_one_rule_names_bad_input():
    with pytest.raises(ValueError, match="probs: expected an"):
        decide(np.zeros(3))
    with pytest.raises(ValueError, match="threshold: one value or one per class"):
        decide(np.zeros((2, 3)), np.array([0.5, 0.5]))


def test_sample_f1_matches_sklearn_and_fallback():
    rng = np.random.default_rng(0)
    y = (rng.random((50, 6)) < 0.3).astype(int)
    y[y.sum(1) == 0, 0] = 1
    p = rng.random((50, 6))
    for t in (0.2, 0.5, 0.9):  # 0.9 leaves rows empty: zero_division must match sklearn's
        expected = f1_score(y, (p >= t).astype(int), average="samples", zero_division=0)
        assert M.sample_f1(y, p, t, at_least_one=False) == pytest.approx(expected)
        assert M.sample_f1(y, p, t) == pytest.approx(
            f1_score(y, decide(p, t).astype(int), average="samples", zero_division=0))
    # the top-1 fallback can only add true positives to empty rows, never lower their F1
    assert M.sample_f1(y, p, 0.95, at_least_one=True) >= M.sample_f1(y, p, 0.95, at_least_one=False)


def test_evaluate_keys_and_perfect_scores():
    y = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0]])
    scores = M.evaluate(y, y * 0.9 + 0.05)
    assert scores == {"sample_f1": 1.0, "micro_f1": 1.0, "macro_f1": 1.0, "mAP": 1.0}
    with pytest.raises(ValueError, match="equal"):
        M.evaluate(y, y[:, :2])


def test_threshold_tuning_never_worse_than_fixed():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 5)) < 0.25).astype(int)
    y[y.sum(1) == 0, 1] = 1
    p = np.clip(y * 0.35 + rng.random((200, 5)) * 0.6, 0, 1)  # positives shifted up, best threshold below 0.5
    t, score = M.tune_global_threshold(y, p)
    assert score >= M.sample_f1(y, p, 0.5) and score >= M.sample_f1(y, p, 0.4)
    per_class, class_score = M.tune_class_thresholds(y, p)
    assert per_class.shape == (5,) and class_score >= score - 1e-12
    table = M.threshold_table(y, p)
    assert list(table.threshold[:3]) == ["0.40", "0.50", "0.60"] and len(table) == 5
    assert table.gain_vs_0_50.iloc[1] == 0 if "gain_vs_0_50" in table else table["gain_vs_0.50"].iloc[1] == 0


def test_map_ignores_absent_classes():
    y = np.array([[1, 0, 0], [0, 1, 0]])
    p = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5]])
    assert M.mean_average_precision(y, p) == 1.0


def _class_thresholds_one_by_one(y, probs, grid, rounds=2):
    """The coordinate ascent as first written: sample_f1 called for every class and grid point."""
    thresholds = np.full(y.shape[1], M.tune_global_threshold(y, probs)[0])
    best = M.sample_f1(y, probs, thresholds)
    for _ in range(rounds):
        improved = False
        for c in range(y.shape[1]):
            keep = thresholds[c]
            for t in grid:
                thresholds[c] = t
                score = M.sample_f1(y, probs, thresholds)
                if score > best + 1e-12:
                    best, keep, improved = score, t, True
            thresholds[c] = keep
        if not improved:
            break
    return thresholds, best


@pytest.mark.parametrize("seed", range(12))
def test_the_threshold_sweeps_give_exactly_what_sample_f1_gives_threshold_by_threshold(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(1, 200)), int(rng.integers(1, 7))
    y = (rng.random((n, c)) < rng.random()).astype(float)
    probs = np.round(rng.random((n, c)), int(rng.integers(1, 4)))   # many probabilities equal to grid points
    grid = rng.choice(M.CLASS_THRESHOLDS, size=int(rng.integers(1, 12)))  # unsorted, repeats
    assert M.sample_f1_sweep(y, probs, grid).tolist() == [M.sample_f1(y, probs, t) for t in grid]
    assert M.sample_f1_sweep(y, probs, grid, at_least_one=False).tolist() == \
        [M.sample_f1(y, probs, t, at_least_one=False) for t in grid]
    scores = [M.sample_f1(y, probs, t) for t in M.TUNING_THRESHOLDS]
    assert M.tune_global_threshold(y, probs) == (M.TUNING_THRESHOLDS[int(np.argmax(scores))], max(scores))
    thresholds, best = M.tune_class_thresholds(y, probs)
    expected, expected_best = _class_thresholds_one_by_one(y, probs, np.asarray(M.CLASS_THRESHOLDS))
    assert thresholds.tolist() == expected.tolist() and best == expected_best


@pytest.mark.parametrize("seed", range(8))
def test_evaluate_gives_sklearns_scores(seed):
    from sklearn.metrics import average_precision_score
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(5, 300)), int(rng.integers(3, 9))
    y = (rng.random((n, c)) < 0.3).astype(np.int8)
    y[:2, :2] = 1                                   # at least two classes present: sklearn's multilabel case
    y[:, -1] = 0                                    # and one absent, as labels 0 and 12 are here
    probs = np.round(rng.random((n, c)), int(rng.integers(1, 4)))   # ties in the rankings
    pred = decide(probs, 0.5).astype(np.int8)
    present = y.sum(axis=0) > 0
    got = M.evaluate(y, probs, 0.5)
    assert got["sample_f1"] == f1_score(y, pred, average="samples", zero_division=0)
    assert got["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(
        f1_score(y[:, present], pred[:, present], average="macro", zero_division=0), abs=1e-12)
    assert got["mAP"] == pytest.approx(average_precision_score(y[:, present], probs[:, present], average="macro"),
                                       abs=1e-12)
