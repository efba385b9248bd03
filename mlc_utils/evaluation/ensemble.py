"""Weighted averages of saved members' probabilities, the paper's "ensemble weighted by score".

Each member (:class:`Member`) brings validation probabilities (to weigh it and tune the threshold)
and usually test probabilities (to submit), matched by ImageID (:mod:`mlc_utils.evaluation.probs`).
Cross-validated members are joined out-of-fold (:func:`out_of_fold`), and the ``cross_fitted_*``
scores fit every choice on the other folds only.

Weightings (:data:`WEIGHTINGS`): ``equal``; ``score`` -- proportional to each member's validation
sample-F1 (the paper); ``optimized`` -- the simplex-grid point (nonnegative, summing to 1) with the
best validation sample-F1. Weights, threshold and the reported ensemble score all come from the
same validation rows, so that score is optimistic; the test rows never influence anything.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from mlc_utils.data.labels import TOP1_FALLBACK, decide
from mlc_utils.evaluation import metrics
from mlc_utils.evaluation.metrics import SEARCH_THRESHOLDS
from mlc_utils.evaluation.probs import ProbTable, load_probs
from mlc_utils.evaluation.submission import write_submission

# ---------------------------------------------------------------------------------------------
# members: one model's probabilities by ImageID
# ---------------------------------------------------------------------------------------------

#: fold k of a cross-validated member lives in ``<member>/fold<k>/`` (its checkpoint, log.csv, probabilities)
FOLD_DIR = "fold{}"


@dataclass
class Member:
    """One model's probabilities by ImageID: validation rows (to weigh it and tune thresholds) and,
    usually, test rows (to submit). The study's stages also record where the model lives, what it
    is (``kind``: image | caption | fusion | late_fusion | ensemble) and the key it was trained under."""

    name: str
    kind: str = ""
    out_dir: Path | None = None
    val_ids: list[str] = field(default_factory=list)
    val_probs: np.ndarray | None = None
    test_ids: list[str] | None = None
    test_probs: np.ndarray | None = None
    seconds: float = 0.0
    reused: bool = False
    info: dict = field(default_factory=dict)
    key: str = ""                  # what it was trained from (the study's member key)
    checkpoint: str = ""           # the file in out_dir its model is rebuilt from ("": none, e.g. out-of-fold)

    @property
    def val(self) -> ProbTable:
        return ProbTable(self.val_ids, self.val_probs, f"{self.name} (validation)")

    @property
    def test(self) -> ProbTable | None:
        return None if self.test_probs is None else ProbTable(self.test_ids, self.test_probs, f"{self.name} (test)")

    @classmethod
    def from_tables(cls, name: str, val: ProbTable, test: ProbTable | None = None, **details) -> "Member":
        return cls(name, val_ids=val.ids, val_probs=val.probs, test_ids=test.ids if test else None,
                   test_probs=test.probs if test else None, **details)

    @classmethod
    def from_files(cls, name: str, val_path, test_path=None, val_ids=None, test_ids=None) -> "Member":
        return cls.from_tables(name, load_probs(val_path, val_ids),
                               load_probs(test_path, test_ids) if test_path is not None else None)

    def probs_for(self, ids: Sequence[str], split: str = "val") -> np.ndarray:
        """Probabilities of the ``split`` rows reordered to ``ids`` (refused when the ids differ)."""
        table = self.val if split == "val" else self.test
        if table is None:
            raise ValueError(f"{self.name}: has no {split} probabilities")
        return table.aligned_to(ids, f"{self.name} ({split})")

    def score(self, y_val: np.ndarray, threshold: float = 0.5) -> float:
        """Validation sample-F1 (rows in the order the member holds them)."""
        return metrics.sample_f1(y_val, self.val_probs, threshold)

    def history(self) -> pd.DataFrame:
        """The per-epoch training log beside the member, when it has one; a cross-validated member's
        is its fold models' logs (``fold<k>/log.csv``, see :data:`FOLD_DIR`) with a ``fold`` column."""
        if not self.out_dir:
            return pd.DataFrame()
        out_dir, folds = Path(self.out_dir), int(self.info.get("folds") or 0)
        paths = {k: out_dir / FOLD_DIR.format(k) / "log.csv" for k in range(folds)} or {None: out_dir / "log.csv"}
        logs = [pd.read_csv(path).assign(fold=k) if k is not None else pd.read_csv(path)
                for k, path in paths.items() if path.is_file()]
        return pd.concat(logs, ignore_index=True) if logs else pd.DataFrame()


def out_of_fold(name: str, folds: Sequence[Member], ids: Sequence[str], **details) -> Member:
    """One member from cross-validation fold members: each of ``ids`` takes the validation (out-of-fold)
    probabilities of the one fold that holds it; test probabilities are the mean over the folds.

    Refused when a row is held by no fold or by several (a stacking input must come from a model
    that never trained on its row). ``info`` records ``oof: True`` and the number of folds.
    """
    folds = list(folds)
    if not folds:
        raise ValueError("folds: need at least one fold member")
    ids = [str(i) for i in ids]
    owner = pd.Series(np.concatenate([np.full(len(m.val_ids), k) for k, m in enumerate(folds)]),
                      index=[str(i) for m in folds for i in m.val_ids])
    if owner.index.has_duplicates:
        raise ValueError(f"folds: rows scored by more than one fold, e.g. {owner.index[owner.index.duplicated()][:5].tolist()}")
    missing = [i for i in ids if i not in owner.index]
    if missing or len(owner) != len(ids):
        raise ValueError(f"folds: {len(missing)} of the ids have no out-of-fold probabilities (e.g. {missing[:5]}) "
                         f"and {len(owner) - len(ids) + len(missing)} fold rows are not among the ids")
    probs = np.empty((len(ids), folds[0].val_probs.shape[1]))
    where = owner.loc[ids].to_numpy()
    for k, m in enumerate(folds):
        rows = np.flatnonzero(where == k)
        probs[rows] = m.probs_for([ids[r] for r in rows], "val")
    test_ids, test_probs = _fuse_test(folds, np.full(len(folds), 1.0 / len(folds)), None)
    info = {**folds[0].info, **details.pop("info", {}), "oof": True, "folds": len(folds)}
    return Member(name, val_ids=ids, val_probs=probs, test_ids=test_ids, test_probs=test_probs, info=info,
                  seconds=float(sum(m.seconds for m in folds)), reused=all(m.reused for m in folds), **details)


def subset(member: Member, ids: Sequence[str]) -> Member:
    """``member`` with only the validation rows ``ids`` (to fit on some folds and score the others)."""
    ids = [str(i) for i in ids]
    index = pd.Index(member.val_ids)
    if index.has_duplicates:
        raise ValueError(f"{member.name}: validation ImageIDs repeat, e.g. {index[index.duplicated()][:5].tolist()}")
    positions = index.get_indexer(ids)
    if (positions < 0).any():
        raise ValueError(f"{member.name}: no validation probabilities for {int((positions < 0).sum())} of the rows "
                         f"(e.g. {[i for i, p in zip(ids, positions) if p < 0][:5]})")
    return dataclasses.replace(member, val_ids=ids, val_probs=member.val_probs[positions])


def cross_fitted_f1(y: np.ndarray, groups: np.ndarray,
                    fit_predict: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float | np.ndarray]]) -> float:
    """Sample-F1 where every row's decision comes from a rule fitted without it.

    For each group g, ``fit_predict(fit_rows, score_rows)`` tunes on the other groups' rows (weights,
    threshold...) and returns (probabilities of ``score_rows``, threshold); the decisions of all groups
    are then scored together. This is the honest counterpart of a threshold tuned on the rows it scores.
    """
    y, groups = np.asarray(y), np.asarray(groups)
    if groups.shape != (len(y),):
        raise ValueError(f"groups: {groups.shape} for {len(y)} rows; need one group per row")
    if len(np.unique(groups)) < 2:
        raise ValueError("groups: need at least two groups to fit on some and score the others")
    decisions = np.zeros(y.shape, dtype=np.int8)
    for g in np.unique(groups):
        score_rows, fit_rows = np.flatnonzero(groups == g), np.flatnonzero(groups != g)
        probs, threshold = fit_predict(fit_rows, score_rows)
        decisions[score_rows] = decide(probs, threshold)
    return metrics.sample_f1(y, decisions, 0.5)


def cross_fitted_threshold_f1(y: np.ndarray, probs: np.ndarray, groups: np.ndarray, rule: str = "global") -> float:
    """Sample-F1 of ``probs`` with each group's threshold (``rule`` of :data:`THRESHOLD_RULES`) tuned on the others."""
    probs = np.asarray(probs)
    tune = _threshold_rule(rule)
    return cross_fitted_f1(y, groups, lambda fit, score: (probs[score], tune(y[fit], probs[fit])[0]))


def cross_fitted_ensemble_f1(members: Sequence[Member], val_ids: Sequence[str], y_val: np.ndarray,
                             groups: np.ndarray, **build_options) -> float:
    """The ensemble's sample-F1 with its weights and threshold (``build_options`` of :func:`build_ensemble`)
    fitted, for each group, on the other groups' rows only."""
    val_ids = [str(i) for i in val_ids]
    y_val = np.asarray(y_val, dtype=np.float64)
    build_options = {k: v for k, v in build_options.items() if k != "test_ids"}

    def fit_predict(fit_rows, score_rows):
        fit_ids, score_ids = [val_ids[r] for r in fit_rows], [val_ids[r] for r in score_rows]
        result = build_ensemble([subset(m, fit_ids) for m in members], fit_ids, y_val[fit_rows], **build_options)
        w = np.array([result.weights[m.name] for m in members])
        fused = np.tensordot(w, np.stack([subset(m, score_ids).val_probs for m in members]), axes=1)
        return fused, result.threshold
    return cross_fitted_f1(y_val, groups, fit_predict)


# ---------------------------------------------------------------------------------------------
# weightings: (validation probs per member, y_val, member scores) -> nonnegative weights summing to 1
# ---------------------------------------------------------------------------------------------

def equal_weights(val_probs: list[np.ndarray], y_val: np.ndarray, scores: np.ndarray, **_) -> np.ndarray:
    return np.full(len(val_probs), 1.0 / len(val_probs))


def score_weights(val_probs: list[np.ndarray], y_val: np.ndarray, scores: np.ndarray, **_) -> np.ndarray:
    """Proportional to each member's validation sample-F1 (the paper's "weighted by score")."""
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    if scores.sum() <= 0:
        return equal_weights(val_probs, y_val, scores)
    return scores / scores.sum()


def simplex_grid(n: int, divisions: int) -> np.ndarray:
    """Every weight vector of ``n`` nonnegative multiples of ``1/divisions`` summing to 1."""
    points = []
    for bars in itertools.combinations(range(divisions + n - 1), n - 1):
        edges = (-1, *bars, divisions + n - 1)
        points.append([edges[i + 1] - edges[i] - 1 for i in range(n)])
    return np.asarray(points, dtype=np.float64) / divisions



def optimized_weights(val_probs: list[np.ndarray], y_val: np.ndarray, scores: np.ndarray,
                      max_points: int = 600, search_thresholds: Sequence[float] = SEARCH_THRESHOLDS,
                      **_) -> np.ndarray:
    """Best validation sample-F1 (at the best of a coarse threshold grid) over a simplex grid.

    The grid is the finest of 1/20, 1/10, 1/5, 1/4, 1/2 steps that stays under ``max_points``
    (sample-F1 is a step function, so a gradient method has nothing to follow). Ties go to the
    point nearest equal weights, which generalises best when validation cannot tell them apart.
    """
    n = len(val_probs)
    if n == 1:
        return np.ones(1)
    divisions = next((d for d in (20, 10, 5, 4, 2) if math.comb(d + n - 1, n - 1) <= max_points), 1)
    grid = simplex_grid(n, divisions)
    stacked = np.stack(val_probs)  # (members, rows, C)
    grid_thr = np.round(np.asarray(search_thresholds, dtype=float), 4)
    best_score, best = -1.0, []
    for w in grid:
        score = metrics.tune_global_threshold(y_val, np.tensordot(w, stacked, axes=1), grid_thr)[1]
        if score > best_score + 1e-12:
            best_score, best = score, [w]
        elif score >= best_score - 1e-12:
            best.append(w)
    return min(best, key=lambda w: float(np.sum((w - 1.0 / n) ** 2)))


WEIGHTINGS: dict[str, Callable[..., np.ndarray]] = {
    "equal": equal_weights, "score": score_weights, "optimized": optimized_weights}


#: threshold rule -> (y_val, val_probs) -> (threshold, validation sample-F1)
THRESHOLD_RULES: dict[str, Callable] = {"global": metrics.tune_global_threshold,
                                        "class": metrics.tune_class_thresholds}


# ---------------------------------------------------------------------------------------------
# the ensemble
# ---------------------------------------------------------------------------------------------

@dataclass
class EnsembleResult:
    weights: dict[str, float]
    threshold: float | np.ndarray
    members: pd.DataFrame  # model, F1@0.50, tuned threshold, F1 tuned global, weight (metrics' column names)
    val_f1: float  # the ensemble's validation sample-F1 at ``threshold`` (optimistic: tuned on these rows)
    val_f1_at_05: float
    val_ids: list[str]
    val_probs: np.ndarray
    test_ids: list[str] | None = None
    test_probs: np.ndarray | None = None
    weighting: str = ""

    def summary(self) -> pd.DataFrame:
        """Members then the ensemble, one row each, for the report."""
        ensemble = {"model": f"ensemble ({self.weighting})", metrics.F1_AT_05: self.val_f1_at_05,
                    metrics.TUNED_THRESHOLD: self.threshold if np.isscalar(self.threshold) else "per class",
                    metrics.F1_TUNED: self.val_f1, "weight": 1.0}
        return pd.concat([self.members, pd.DataFrame([ensemble])], ignore_index=True)

    def write_submission(self, path: str | os.PathLike, at_least_one: bool = TOP1_FALLBACK) -> Path:
        if self.test_probs is None:
            raise ValueError("test_probs: no member brought test probabilities, so there is nothing to submit")
        return write_submission(self.test_ids, self.test_probs, self.threshold, path, at_least_one)


def _member_scores(y_val: np.ndarray, probs: np.ndarray) -> dict:
    threshold, tuned = metrics.tune_global_threshold(y_val, probs)
    return {metrics.F1_AT_05: metrics.sample_f1(y_val, probs, 0.5), metrics.TUNED_THRESHOLD: threshold,
            metrics.F1_TUNED: tuned}


def build_ensemble(members: Sequence[Member], val_ids: Sequence[str], y_val: np.ndarray,
                   weights: str | Mapping[str, float] = "score", threshold: str | float = "global",
                   test_ids: Sequence[str] | None = None) -> EnsembleResult:
    """Align members by ImageID, weigh them, tune the threshold on validation, average the test rows.

    ``weights``: a name in :data:`WEIGHTINGS` or explicit ``{member: weight}``. ``threshold``:
    ``'global'``, ``'class'`` (per-class) or a fixed number. ``test_ids``: the submission's row
    order (test.csv order); defaults to the first member's test ids.
    """
    members = list(members)
    if not members:
        raise ValueError("members: need at least one member")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"members: names must be unique, got {names}")
    val_ids = [str(i) for i in val_ids]
    y_val = np.asarray(y_val, dtype=np.float64)
    if y_val.shape[0] != len(val_ids):
        raise ValueError(f"y_val: {y_val.shape[0]} rows for {len(val_ids)} val_ids")
    val_probs = [m.val.aligned_to(val_ids, f"member {m.name!r} (validation)") for m in members]
    for m, p in zip(members, val_probs):
        if p.shape != y_val.shape:
            raise ValueError(f"member {m.name!r}: validation probabilities {p.shape} do not match y_val {y_val.shape}")

    table = pd.DataFrame([{"model": m.name, **_member_scores(y_val, p)} for m, p in zip(members, val_probs)])
    w = _resolve_weights(weights, names, val_probs, y_val, table[metrics.F1_TUNED].to_numpy())
    table["weight"] = w
    fused_val = np.tensordot(w, np.stack(val_probs), axes=1)

    if isinstance(threshold, str):
        chosen, val_f1 = _threshold_rule(threshold)(y_val, fused_val)
    else:
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold: a fixed threshold must be in (0, 1), got {threshold}")
        chosen, val_f1 = float(threshold), metrics.sample_f1(y_val, fused_val, float(threshold))

    test_ids_out, fused_test = _fuse_test(members, w, test_ids)
    return EnsembleResult(
        weights=dict(zip(names, map(float, w))), threshold=chosen, members=table, val_f1=float(val_f1),
        val_f1_at_05=metrics.sample_f1(y_val, fused_val, 0.5), val_ids=val_ids, val_probs=fused_val,
        test_ids=test_ids_out, test_probs=fused_test,
        weighting=weights if isinstance(weights, str) else "given")


def _threshold_rule(threshold: str) -> Callable:
    if threshold not in THRESHOLD_RULES:
        raise ValueError(f"threshold: must be one of {sorted(THRESHOLD_RULES)} or a number, got {threshold!r}")
    return THRESHOLD_RULES[threshold]


def _resolve_weights(weights, names, val_probs, y_val, scores) -> np.ndarray:
    if isinstance(weights, str):
        if weights not in WEIGHTINGS:
            raise ValueError(f"weights: must be one of {sorted(WEIGHTINGS)} or a mapping, got {weights!r}")
        w = np.asarray(WEIGHTINGS[weights](val_probs, y_val, scores), dtype=np.float64)
    elif isinstance(weights, Mapping):
        unknown, absent = set(weights) - set(names), set(names) - set(weights)
        if unknown or absent:
            raise ValueError(f"weights: keys must be the member names {names} "
                             f"(unknown {sorted(unknown)}, missing {sorted(absent)})")
        w = np.asarray([float(weights[n]) for n in names])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights: must be nonnegative with a positive sum, got {dict(weights)}")
        w = w / w.sum()
    else:
        raise TypeError(f"weights: expected a name or a mapping, got {type(weights).__name__}")
    return w


def _fuse_test(members: list[Member], w: np.ndarray, test_ids):
    with_test = [m.test is not None for m in members]
    if not any(with_test):
        return None, None
    if not all(with_test):
        lacking = [m.name for m in members if m.test is None]
        raise ValueError(f"members: {lacking} have no test probabilities while others do; give all or none")
    ref = [str(i) for i in (test_ids if test_ids is not None else members[0].test.ids)]
    stacked = np.stack([m.test.aligned_to(ref, f"member {m.name!r} (test)") for m in members])
    return ref, np.tensordot(w, stacked, axes=1)
