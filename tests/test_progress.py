"""While a stage runs, what its cells print reaches the terminal line by line, epochs with the time left;
the kernels start on IPC sockets (no "running over TCP without encryption" warning)."""
from __future__ import annotations

from mlc_utils.run.pipeline import StageProgress, ipc_kernel_manager


def test_stage_output_streams_line_by_line_with_time_left():
    now = [100.0]
    lines = []
    progress = StageProgress("image", lines.append, clock=lambda: now[0])
    progress.write("lite0: training 4 epochs on 80 images\nepoch 1/4 train_loss=0.6")
    assert lines == ["[image] lite0: training 4 epochs on 80 images"]  # the unfinished line waits
    now[0] = 130.0
    progress.write("000 sample_f1=0.4000 *\n")
    assert lines[-1] == "[image] epoch 1/4 train_loss=0.6000 sample_f1=0.4000 *  [1/4 epochs, about 90 s left for this model]"
    now[0] = 160.0
    progress.write("epoch 2/4 train_loss=0.5\r\n\n")
    assert lines[-1].endswith("[2/4 epochs, about 60 s left for this model]") and len(lines) == 3
    now[0] = 1000.0
    progress.write("epoch 4/4 train_loss=0.4\n")
    assert lines[-1].endswith("[4/4 epochs, about 0 s left for this model]")


def test_kernels_use_ipc_transport_in_their_own_folder(tmp_path):
    manager = ipc_kernel_manager(tmp_path)(kernel_name="python3")
    assert manager.transport == "ipc" and manager.ip == str(tmp_path / "kernel")


def test_progress_lines_do_not_restart_the_models_clock():
    now = [0.0]
    lines = []
    progress = StageProgress("image", lines.append, clock=lambda: now[0])
    progress.write("lite0: training\n")
    now[0] = 50.0
    progress.write("epoch 1/2 (batches): 5/10 (50%), 50 s elapsed, about 50 s left, loss=0.5000\n")
    now[0] = 100.0
    progress.write("epoch 1/2 train_loss=0.5\n")
    assert lines[1].startswith("[image] epoch 1/2 (batches): 5/10") and "epochs" not in lines[1]
    assert lines[2].endswith("[1/2 epochs, about 100 s left for this model]")


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


def test_a_feature_pass_before_epoch_1_is_not_counted_as_an_epoch():
    """The CPU profile printed "about 1516 min left" for 30 epochs of 4 s: the 1,000 s feature pass
    before epoch 1 was divided by the epochs done. The epochs' own times say 29 x 4 s."""
    now = [0.0]
    lines = []
    progress = StageProgress("image", lines.append, clock=lambda: now[0], planned=3000.0, later=600.0)
    progress.write("lite0: training 30 epochs\n")
    now[0] = 500.0
    progress.write("features lite0 center (batches): 50/100 (50%), 500 s elapsed, about 500 s left\n")
    now[0] = 1004.0
    progress.write("epoch 1/30 train_loss=0.5000 sample_f1=0.4000 * (4 s)\n")
    assert "[1/30 epochs, about 116 s left for this model, 33 min for the stage, 43 min for the run]" in lines[-1]
    now[0] = 1008.0
    progress.write("epoch 2/30 train_loss=0.4000\n")   # no seconds printed: the time since epoch 1
    assert lines[-1].endswith("[2/30 epochs, about 112 s left for this model, 33 min for the stage, 43 min for the run]")
