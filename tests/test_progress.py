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


def test_kernels_use_ipc_transport():
    manager = ipc_kernel_manager()(kernel_name="python3")
    assert manager.transport == "ipc"
