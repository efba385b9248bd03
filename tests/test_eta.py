"""Time left that counts what is still to come: the folds and members of the stage, the stages of the run.

The clocks are driven by the typed events a stage writes (members and folds starting and ending, a
model's epochs) at times given by a fake clock.
"""
from __future__ import annotations

import json
import os

import pytest

from mlc_utils.core.progress import EVENTS_ENV, EpochEnded, FitStarted, MemberEnded, MemberStarted, emit
from mlc_utils.run.eta import PRIOR_S, RunClock, StageClock
from mlc_utils.run.pipeline import StageProgress


def _fold(clock: StageClock, t: float, name: str, fold: int, folds: int, *, before: float, epochs: int,
          epoch_s: float, after: float = 0.0, stop_at: int | None = None) -> float:
    """Fold ``fold`` of ``name`` from ``t``: ``before`` seconds (a feature pass), ``epochs`` epochs of
    ``epoch_s``, ``after`` seconds (predictions); returns the time it ends (or, with ``stop_at``,
    the time epoch ``stop_at`` ended, the fold left running)."""
    clock.event(MemberStarted(name, fold, folds), t)
    t += before
    clock.event(FitStarted(epochs), t)
    for epoch in range(1, epochs + 1):
        t += epoch_s
        clock.event(EpochEnded(epoch, epochs, epoch_s), t)
        if epoch == stop_at:
            return t
    t += after
    clock.event(MemberEnded(name, fold, folds), t)
    return t


def test_the_stage_counts_the_folds_still_to_come():
    """The issue: at fold 1's epoch 13 of 30 (0.8 s an epoch) after a 600 s feature pass, with the
    stage planned at 650 s, the stage said 17 s (this model's epochs only) with 4 folds to go."""
    clock = StageClock(planned=650.0, trainings=[640.0], started=0.0)
    now = _fold(clock, 5.0, "lite0", 1, 5, before=600.0, epochs=30, epoch_s=0.8, stop_at=13)
    assert clock.model_left() == pytest.approx(17 * 0.8)
    assert clock.left(now) == pytest.approx(17 * 0.8 + 4 * 30 * 0.8)   # 110 s, not 14
    # fold 1 also computed the test rows' features after training (once-only): later folds are timed
    # by fold 2 onwards, not by fold 1
    clock.event(EpochEnded(30, 30, 0.8), now := now + 17 * 0.8)
    clock.event(MemberEnded("lite0", 1, 5), now := now + 200.0)
    assert clock.left(now) == pytest.approx(4 * 30 * 0.8)
    now = _fold(clock, now, "lite0", 2, 5, before=1.0, epochs=30, epoch_s=0.8, after=3.0)   # 28 s a fold
    assert clock.left(now) == pytest.approx(3 * 28.0)
    now = _fold(clock, now, "lite0", 3, 5, before=1.0, epochs=30, epoch_s=0.8, stop_at=10)
    assert clock.left(now) == pytest.approx(20 * 0.8 + 2 * 28.0)


def test_members_not_started_count_at_their_plan_corrected_by_the_run():
    """Three models planned at 100, 50 and 50 s; the run so far took 1.5x its plan."""
    clock = StageClock(planned=206.0, trainings=[100.0, 50.0, 50.0], started=0.0, ratio=1.5)
    assert clock.left(0.0) == pytest.approx(200 * 1.5)    # nothing started: the plan's trainings
    clock.event(MemberStarted("frozen"), 1.0)
    assert clock.left(31.0) == pytest.approx(100 * 1.5 - 30 + 100 * 1.5)   # its feature pass, before an epoch
    now = _fold(clock, 1.0, "frozen", 0, 0, before=120.0, epochs=10, epoch_s=2.0, stop_at=4)
    assert clock.left(now) == pytest.approx(6 * 2.0 + 100 * 1.5)
    clock.event(MemberEnded("frozen"), now + 12.0)
    clock.event(MemberEnded("reused-one", reused=True), now + 12.5)   # reused: no time, not a training started
    now = _fold(clock, now + 13.0, "finetune", 0, 0, before=0.0, epochs=4, epoch_s=10.0, stop_at=1)
    assert clock.left(now) == pytest.approx(3 * 10.0 + 50 * 1.5)


def test_without_trainings_in_the_plan_the_stage_takes_the_larger_of_plan_and_measure():
    clock = StageClock(planned=100.0, trainings=[], started=0.0)
    now = _fold(clock, 0.0, "concat", 1, 5, before=1.0, epochs=10, epoch_s=1.0, stop_at=2)
    assert clock.left(now) == pytest.approx(100.0 - now)               # the plan leaves more
    now = _fold(clock, now + 8.0, "concat", 2, 5, before=0.0, epochs=10, epoch_s=5.0, stop_at=5)
    assert clock.left(now) == pytest.approx(5 * 5.0 + 3 * 50.0)         # the folds to come, measured
    assert StageClock(planned=None).left(0.0) is None                   # no plan, nothing measured


def test_the_run_corrects_the_plan_of_later_stages_by_the_finished_ones():
    run = RunClock({"eda": 10.0, "split": 5.0, "image": 300.0, "caption": 100.0})
    assert run.ratio == 1.0 and run.after("eda") == pytest.approx(405.0)
    run.stage_ended("eda", 16.0)    # a nominal stage 60% over moves the ratio little
    assert run.ratio == pytest.approx((16 + PRIOR_S) / (10 + PRIOR_S))
    run.stage_ended("split", 5.0)
    run.stage_ended("image", 450.0)   # the big one, 1.5x its plan: the rest is expected 1.5x too, nearly
    ratio = (16 + 5 + 450 + PRIOR_S) / (10 + 5 + 300 + PRIOR_S)
    assert run.ratio == pytest.approx(ratio) and 1.35 < ratio < 1.5
    assert run.after("image") == pytest.approx(100.0 * ratio)
    assert run.after("caption") == 0.0
    assert RunClock({"eda": 10.0, "image": None}).after("eda") is None   # a stage without a time: no run figure
    assert RunClock({}).after("eda") is None


def _write(path, when, event) -> None:
    """What emit() writes, at a chosen time."""
    from dataclasses import asdict
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"type": type(event).__name__, "time": when, **asdict(event)}) + "\n")


def test_the_epoch_line_shows_and_records_the_stage_and_run_left(tmp_path):
    events, records, lines = tmp_path / "events.jsonl", [], []
    now = [0.0]
    progress = StageProgress("image", lines.append, clock=lambda: now[0], planned=200.0, later=300.0,
                             events=events, trainings=[190.0], record=records.append)
    _write(events, 1.0, MemberStarted("lite0", 1, 5))
    _write(events, 100.0, FitStarted(30))
    _write(events, 101.0, EpochEnded(1, 30, 1.0, "epoch 1/30 loss=0.5 (1 s)"))
    now[0] = 101.5   # the line arrives a little after the event: the event's own time counts
    progress.write("epoch 1/30 loss=0.5 (1 s)\n")
    assert lines == ["[image] epoch 1/30 loss=0.5 (1 s)  [1/30 epochs, about 29 s left for this model, "
                     "2 min for the stage, 7 min for the run]"]     # 29 + 4 x 30 s; + 300 s
    assert records == [{"event": "eta", "time": 101.0, "stage": "image", "member": "lite0", "fold": 1, "folds": 5,
                        "epoch": 1, "epochs": 30, "model_left": 29.0, "stage_left": 149.0, "run_left": 449.0}]
    assert progress.where() == "training lite0 (fold 1 of 5, epoch 2 of 30)"
    _write(events, 130.0, MemberEnded("lite0", 1, 5))
    assert progress.where() == ""


def test_without_a_plan_the_line_shows_the_folds_to_come_and_no_run(tmp_path):
    events, lines = tmp_path / "events.jsonl", []
    progress = StageProgress("caption", lines.append, events=events)
    _write(events, 1.0, MemberStarted("caption:tfidf", 2, 3))
    _write(events, 2.0, FitStarted(4))
    _write(events, 3.0, EpochEnded(1, 4, 10.0, "epoch 1/4"))
    progress.write("epoch 1/4\n")
    assert lines == ["[caption] epoch 1/4  [1/4 epochs, about 30 s left for this model, 70 s for the stage]"]


def test_members_announce_their_folds_to_run(tmp_path, monkeypatch):
    """reuse_or_train and cross_fit_member write MemberStarted/MemberEnded (with the fold) for run."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from mlc_utils.core.progress import EventReader
    from mlc_utils.evaluation.ensemble import Member
    from mlc_utils.study import members
    monkeypatch.setenv(EVENTS_ENV, str(tmp_path / "events.jsonl"))
    monkeypatch.setattr(members, "member_key", lambda ctx, config, kind, rows=None: f"key-{rows}")
    ids = [f"{i}.jpg" for i in range(4)]
    frame = pd.DataFrame({"ImageID": ids})
    folds = [(frame.iloc[[1, 2, 3]], frame.iloc[[0]], None, None), (frame.iloc[[0, 2, 3]], frame.iloc[[1]], None, None)]
    ctx = SimpleNamespace(cv_labelled_folds=lambda: folds, data=SimpleNamespace(train=frame.iloc[:2], test=frame),
                          params=SimpleNamespace(seed=0))

    def fit_fold(rows, fold_dir):
        val = list(rows[1].ImageID)
        return Member("m", "image", fold_dir, val, np.zeros((1, 3)), ids, np.zeros((4, 3)))
    members.cross_fit_member(ctx, "m", "image", tmp_path / "m", {}, fit_fold, log=lambda *_: None)
    assert EventReader(tmp_path / "events.jsonl").read() == [
        MemberStarted("m", 1, 2), MemberEnded("m", 1, 2), MemberStarted("m", 2, 2), MemberEnded("m", 2, 2)]
    members.cross_fit_member(ctx, "m", "image", tmp_path / "m", {}, fit_fold, log=lambda *_: None)   # all saved
    assert EventReader(tmp_path / "events.jsonl").read()[4:] == [MemberEnded("m", 1, 2, reused=True),
                                                                MemberEnded("m", 2, 2, reused=True)]
    os.environ.pop(EVENTS_ENV)
    emit(MemberStarted("nowhere"))   # at a notebook (no MLC_EVENTS): nothing written, no error
