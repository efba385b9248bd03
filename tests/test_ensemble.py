"""Ensemble weighting math, ImageID alignment, probability files and the submission format."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlc_utils.evaluation import metrics
from mlc_utils.evaluation.ensemble import Member, build_ensemble, optimized_weights, score_weights, simplex_grid
from mlc_utils.evaluation.probs import ProbTable, load_probs, save_probs
from mlc_utils.evaluation.submission import write_submission

VAL_IDS = ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]
Y_VAL = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=float)
TEST_IDS = ["10.jpg", "11.jpg", "12.jpg"]


def member(name, val, test=None, val_ids=VAL_IDS, test_ids=TEST_IDS):
    return Member.from_tables(name, ProbTable(val_ids, val), ProbTable(test_ids, test) if test is not None else None)


def test_score_weights_are_proportional_to_validation_f1():
    np.testing.assert_allclose(score_weights([None, None], None, np.array([0.8, 0.6])), [0.8 / 1.4, 0.6 / 1.4])
    np.testing.assert_allclose(score_weights([None, None], None, np.array([0.0, 0.0])), [0.5, 0.5])


def test_simplex_grid():
    grid = simplex_grid(3, 4)
    assert len(grid) == 15 and np.allclose(grid.sum(1), 1) and (grid >= 0).all()
    assert {tuple(r) for r in simplex_grid(2, 2)} == {(0, 1), (0.5, 0.5), (1, 0)}


def test_equal_and_score_ensembles_average_the_known_arrays():
    perfect = Y_VAL * 0.9 + 0.05
    weak = np.full_like(Y_VAL, 0.4)
    members = [member("a", perfect, np.full((3, 3), 0.8)), member("b", weak, np.full((3, 3), 0.2))]
    equal = build_ensemble(members, VAL_IDS, Y_VAL, weights="equal", threshold=0.5)
    np.testing.assert_allclose(equal.val_probs, (perfect + weak) / 2)
    np.testing.assert_allclose(equal.test_probs, 0.5)
    assert equal.weights == {"a": 0.5, "b": 0.5} and equal.threshold == 0.5

    scored = build_ensemble(members, VAL_IDS, Y_VAL, weights="score")
    f1 = scored.members.set_index("model")[metrics.F1_TUNED]
    assert f1["a"] == pytest.approx(1.0)
    assert f1["b"] == pytest.approx(metrics.tune_global_threshold(Y_VAL, weak)[1])
    assert scored.weights["a"] == pytest.approx(f1["a"] / (f1["a"] + f1["b"]))
    np.testing.assert_allclose(scored.test_probs, scored.weights["a"] * 0.8 + scored.weights["b"] * 0.2)
    summary = scored.summary()
    assert list(summary["model"]) == ["a", "b", "ensemble (score)"]

    given = build_ensemble(members, VAL_IDS, Y_VAL, weights={"a": 3, "b": 1}, threshold="class")
    assert given.weights == {"a": 0.75, "b": 0.25} and np.shape(given.threshold) == (3,)


def test_optimized_weights_prefer_the_useful_member_and_stay_on_the_simplex():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 4)) < 0.3).astype(float)
    y[y.sum(1) == 0, 1] = 1
    good = np.clip(y * 0.6 + rng.random(y.shape) * 0.4, 0, 1)
    w = optimized_weights([rng.random(y.shape), good, rng.random(y.shape)], y, np.zeros(3), max_points=21)
    assert w.sum() == pytest.approx(1) and (w >= 0).all() and np.argmax(w) == 1
    same = optimized_weights([good, good], y, np.zeros(2), max_points=5)  # a flat optimum: nearest to equal weights
    np.testing.assert_allclose(same, [0.5, 0.5])


def test_members_are_aligned_by_image_id_not_position():
    probs = np.random.default_rng(1).random((4, 3))
    order = [2, 0, 3, 1]
    shuffled = member("s", probs[order], val_ids=[VAL_IDS[i] for i in order])
    result = build_ensemble([member("a", probs), shuffled], VAL_IDS, Y_VAL, weights="equal")
    np.testing.assert_allclose(result.val_probs, probs)


@pytest.mark.parametrize("ids, message", [
    (["1.jpg", "2.jpg", "3.jpg", "9.jpg"], r"1 missing \(e.g. \['4.jpg'\]\); 1 not expected \(e.g. \['9.jpg'\]\)"),
    (["1.jpg", "2.jpg", "3.jpg", "3.jpg"], "repeat"),
])
def test_misaligned_validation_ids_are_refused(ids, message):
    bad = member("bad", np.full((4, 3), 0.5), val_ids=ids)
    with pytest.raises(ValueError, match=f"member 'bad' \\(validation\\).*{message}|{message}"):
        build_ensemble([member("a", np.full((4, 3), 0.5)), bad], VAL_IDS, Y_VAL)


def test_missing_test_rows_and_bad_inputs_are_refused():
    good = member("a", np.full((4, 3), 0.5), np.full((3, 3), 0.5))
    short = member("b", np.full((4, 3), 0.5), np.full((2, 3), 0.5), test_ids=TEST_IDS[:2])
    with pytest.raises(ValueError, match=r"member 'b' \(test\).*missing.*12.jpg"):
        build_ensemble([good, short], VAL_IDS, Y_VAL)
    with pytest.raises(ValueError, match="no test probabilities"):
        build_ensemble([good, member("c", np.full((4, 3), 0.5))], VAL_IDS, Y_VAL)
    with pytest.raises(ValueError, match="weights"):
        build_ensemble([good], VAL_IDS, Y_VAL, weights="median")
    with pytest.raises(ValueError, match="weights"):
        build_ensemble([good], VAL_IDS, Y_VAL, weights={"z": 1.0})
    with pytest.raises(ValueError, match="threshold"):
        build_ensemble([good], VAL_IDS, Y_VAL, threshold=1.5)
    with pytest.raises(ValueError, match="probabilities in"):
        ProbTable(VAL_IDS, np.full((4, 3), 3.0))


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_probability_files_round_trip(tmp_path, suffix):
    probs = np.random.default_rng(2).random((4, 3))
    path = save_probs(tmp_path / f"val{suffix}", VAL_IDS, probs)
    table = load_probs(path)
    assert table.ids == VAL_IDS
    np.testing.assert_allclose(table.probs, probs, rtol=1e-5)


def test_bare_npy_needs_ids(tmp_path):
    np.save(tmp_path / "val_probs.npy", np.full((4, 3), 0.5))
    with pytest.raises(ValueError, match="ids"):
        load_probs(tmp_path / "val_probs.npy")
    member_ = Member.from_files("m", tmp_path / "val_probs.npy", val_ids=VAL_IDS)
    assert member_.val.ids == VAL_IDS and member_.test is None


def test_submission_format(tmp_path):
    probs = np.array([[0.9, 0.7, 0.1], [0.1, 0.2, 0.3], [0.05, 0.6, 0.8]])
    good = member("a", Y_VAL * 0.8 + 0.1, probs)
    order = ["12.jpg", "10.jpg", "11.jpg"]  # the test.csv order, not the member's
    result = build_ensemble([good], VAL_IDS, Y_VAL, weights="equal", threshold=0.5, test_ids=order)
    path = result.write_submission(tmp_path / "submission.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "ImageID,Labels"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(frame["ImageID"]) == order
    assert all(label.strip() for label in frame["Labels"])  # every row non-empty
    labels = dict(zip(frame["ImageID"], frame["Labels"]))
    assert labels["10.jpg"] == "0 1" and labels["12.jpg"] == "1 2"
    assert labels["11.jpg"] == "2"  # nothing over 0.5: the top class keeps the row non-empty

    direct = write_submission(["x.jpg"], np.array([[0.1, 0.1, 0.2]]), 0.5, tmp_path / "one.csv")
    assert direct.read_text().splitlines() == ["ImageID,Labels", "x.jpg,2"]


def test_out_of_fold_takes_each_row_from_the_fold_that_held_it_and_averages_test():
    from mlc_utils.evaluation.ensemble import out_of_fold
    a = member("f0", np.full((2, 3), 0.1), np.full((3, 3), 0.2), val_ids=["3.jpg", "1.jpg"])
    b = member("f1", np.full((2, 3), 0.9), np.full((3, 3), 0.6), val_ids=["2.jpg", "4.jpg"])
    oof = out_of_fold("m", [a, b], VAL_IDS, kind="caption")
    assert oof.val_ids == VAL_IDS and oof.kind == "caption" and oof.info["oof"] and oof.info["folds"] == 2
    assert np.allclose(oof.val_probs[:, 0], [0.1, 0.9, 0.1, 0.9])
    assert np.allclose(oof.test_probs, 0.4) and oof.test_ids == TEST_IDS
    with pytest.raises(ValueError, match="more than one fold"):
        out_of_fold("m", [a, a], VAL_IDS)
    with pytest.raises(ValueError, match="no out-of-fold probabilities"):
        out_of_fold("m", [a], VAL_IDS)


def test_cross_fitted_threshold_is_tuned_without_the_scored_rows():
    from mlc_utils.evaluation.ensemble import cross_fitted_f1, cross_fitted_threshold_f1
    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.3).astype(float)
    probs = np.clip(0.35 * y + 0.5 * rng.random(y.shape), 0, 1)
    groups = np.arange(200) % 4
    in_sample = metrics.tune_global_threshold(y, probs)[1]
    honest = cross_fitted_threshold_f1(y, probs, groups)
    assert 0.0 < honest <= in_sample + 1e-12
    seen = []

    def fit_predict(fit, score):
        seen.append((set(fit), set(score)))
        return probs[score], 0.5
    assert cross_fitted_f1(y, groups, fit_predict) == pytest.approx(metrics.sample_f1(y, probs, 0.5))
    assert len(seen) == 4 and all(not (f & s) and len(f | s) == 200 for f, s in seen)
    with pytest.raises(ValueError, match="groups: need at least two groups"):
        cross_fitted_f1(y, np.zeros(200), fit_predict)


def test_cross_fitted_ensemble_refits_weights_per_fold():
    from mlc_utils.evaluation.ensemble import cross_fitted_ensemble_f1
    rng = np.random.default_rng(1)
    ids = [f"{i}.jpg" for i in range(120)]
    y = (rng.random((120, 3)) < 0.4).astype(float)
    good = member("good", np.clip(0.6 * y + 0.3 * rng.random(y.shape), 0, 1), val_ids=ids)
    noise = member("noise", rng.random(y.shape), val_ids=ids)
    groups = np.arange(120) % 3
    honest = cross_fitted_ensemble_f1([good, noise], ids, y, groups, weights="optimized")
    tuned = build_ensemble([good, noise], ids, y, weights="optimized").val_f1
    assert 0.5 < honest <= tuned + 1e-12
