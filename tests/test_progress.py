"""While a stage runs, what its cells print reaches the terminal line by line, epochs with the time left;
the kernels start on IPC sockets (no "running over TCP without encryption" warning)."""
from __future__ import annotations

import contextlib
import os

from mlc_utils.run.kernel import KernelWatch, kernel_manager
from mlc_utils.run.pipeline import StageProgress


def _epoch(path, epoch: int, epochs: int, seconds: float, line: str, started: bool = False,
           when: float | None = None) -> str:
    """What the loop does at an epoch's end: the event (core.progress.emit; at the fake time ``when``
    where the test runs a clock of its own), then the printed line."""
    from unittest import mock

    from mlc_utils.core.progress import EVENTS_ENV, EpochEnded, FitStarted, emit
    os.environ[EVENTS_ENV] = str(path)
    try:
        with mock.patch("time.time", lambda: when) if when is not None else contextlib.nullcontext():
            if started:
                emit(FitStarted(epochs))
            emit(EpochEnded(epoch, epochs, seconds, line))
    finally:
        del os.environ[EVENTS_ENV]
    return line + "\n"


def test_stage_output_streams_line_by_line_with_time_left(tmp_path):
    events = tmp_path / "events.jsonl"
    lines = []
    progress = StageProgress("image", lines.append, events=events)
    progress.write("lite0: training 4 epochs on 80 images\nepoch 1/4 train_loss=0.6")
    assert lines == ["[image] lite0: training 4 epochs on 80 images"]  # the unfinished line waits
    line = _epoch(events, 1, 4, 30.0, "epoch 1/4 train_loss=0.6000 sample_f1=0.4000 * (30 s)", started=True)
    progress.write(line[len("epoch 1/4 train_loss=0.6"):])
    assert lines[-1] == "[image] epoch 1/4 train_loss=0.6000 sample_f1=0.4000 * (30 s)  [1/4 epochs, about 90 s left for this model]"
    progress.write(_epoch(events, 2, 4, 30.0, "epoch 2/4 train_loss=0.5 (30 s)").replace("\n", "\r\n\n"))
    assert lines[-1].endswith("[2/4 epochs, about 60 s left for this model]") and len(lines) == 3
    progress.write(_epoch(events, 4, 4, 30.0, "epoch 4/4 train_loss=0.4 (30 s)"))
    assert lines[-1].endswith("[4/4 epochs, about 0 s left for this model]")


def test_a_line_that_only_looks_like_an_epoch_gets_no_time_left(tmp_path):
    """The time left comes from the loop's events, not from matching what a cell prints."""
    lines = []
    progress = StageProgress("caption", lines.append, events=tmp_path / "events.jsonl")
    progress.write("epoch 1/3 train_loss=0.5 (5 s)\n")
    assert lines == ["[caption] epoch 1/3 train_loss=0.5 (5 s)"]


def test_events_are_read_back_typed_and_a_partial_line_waits(tmp_path):
    from mlc_utils.core.progress import EpochEnded, EventReader, FitStarted
    path = tmp_path / "events.jsonl"
    reader = EventReader(path)
    assert reader.read() == []   # no file yet: the stage has not trained anything
    _epoch(path, 1, 2, 3.5, "epoch 1/2", started=True)
    with open(path, "a") as f:
        f.write('{"type": "EpochEnded", "epo')   # rank 0 is still writing it
    assert reader.read() == [FitStarted(2), EpochEnded(1, 2, 3.5, "epoch 1/2")]
    with open(path, "a") as f:
        f.write('ch": 2, "epochs": 2, "seconds": 1.0}\n')
    assert reader.read() == [EpochEnded(2, 2, 1.0)]


def test_the_loop_emits_an_event_per_epoch_under_run(tmp_path, monkeypatch):
    import torch
    from torch.utils.data import TensorDataset

    from mlc_utils.core.progress import EVENTS_ENV, EpochEnded, EventReader, FitStarted
    from mlc_utils.train.config import TrainConfig
    from mlc_utils.train.loop import fit
    monkeypatch.setenv(EVENTS_ENV, str(tmp_path / "events.jsonl"))
    data = TensorDataset(torch.randn(8, 4), (torch.rand(8, 3) > 0.5).float())
    fit(torch.nn.Linear(4, 3), data, data, TrainConfig(epochs=2, batch_size=4, progress=False, device="cpu"),
        tmp_path / "out")
    events = EventReader(tmp_path / "events.jsonl").read()
    assert events[0] == FitStarted(2) and [type(e) for e in events[1:]] == [EpochEnded, EpochEnded]
    assert [(e.epoch, e.epochs) for e in events[1:]] == [(1, 2), (2, 2)] and events[2].line.startswith("epoch 2/2 ")


def test_kernels_use_ipc_transport_in_their_own_folder(tmp_path):
    manager = kernel_manager(tmp_path, KernelWatch(), tmp_path / "kernel.log")(kernel_name="python3")
    assert manager.transport == "ipc" and manager.ip == str(tmp_path / "kernel")


def test_long_loops_print_a_line_every_interval_with_time_left(monkeypatch):
    from mlc_utils.core.progress import line_progress, progress
    now = [0.0]
    out = []

    def clock():
        now[0] += 10.0
        return now[0]
    bar = line_progress(range(6), "features lite0 center (batches)", every=25.0, clock=clock,
                        out=lambda line, flush: out.append(line))
    bar.set_postfix(loss="0.5000")
    assert list(bar) == list(range(6))
    assert out[0] == "features lite0 center (batches): 3/6 (50%), 30 s elapsed, about 30 s left, loss=0.5000"
    assert out[-1].startswith("features lite0 center (batches): 6/6 (100%)")
    monkeypatch.setenv("MLC_PROGRESS", "lines")
    assert type(progress(range(3), "x")).__name__ == "LineProgress"
    disabled = progress(range(3), "x", disable=True)
    assert list(disabled) == [0, 1, 2] and hasattr(disabled, "set_postfix")  # tqdm(disable=True), as before
    monkeypatch.delenv("MLC_PROGRESS")
    assert type(progress(range(3), "x")).__name__ != "LineProgress"


def test_a_feature_pass_before_epoch_1_is_not_counted_as_an_epoch(tmp_path):
    """The CPU profile printed "about 1516 min left" for 30 epochs of 4 s: the 1,000 s feature pass
    before epoch 1 was divided by the epochs done. The epochs' own times say 29 x 4 s."""
    events = tmp_path / "events.jsonl"
    now = [0.0]
    lines = []
    progress = StageProgress("image", lines.append, clock=lambda: now[0], planned=3000.0, later=600.0,
                             events=events)
    progress.write("lite0: training 30 epochs\n")
    now[0] = 500.0
    progress.write("features lite0 center (batches): 50/100 (50%), 500 s elapsed, about 500 s left\n")
    now[0] = 1004.0
    progress.write(_epoch(events, 1, 30, 4.0, "epoch 1/30 train_loss=0.5000 sample_f1=0.4000 * (4 s)", started=True,
                          when=now[0]))
    assert "[1/30 epochs, about 116 s left for this model, 33 min for the stage, 43 min for the run]" in lines[-1]
    now[0] = 1008.0
    progress.write(_epoch(events, 2, 30, 4.0, "epoch 2/30 train_loss=0.4000 (4 s)", when=now[0]))
    assert lines[-1].endswith("[2/30 epochs, about 112 s left for this model, 33 min for the stage, 43 min for the run]")
    progress.write(_epoch(events, 1, 2, 50.0, "epoch 1/2 train_loss=0.3000 (50 s)", started=True, when=now[0]))
    assert "[1/2 epochs, about 50 s left for this model" in lines[-1]   # the next model's clock starts anew
