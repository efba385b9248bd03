"""Reliability, interruptions: a real SIGKILL loses nothing, and a run that cannot write fails at once.

* ``fit`` killed mid-epoch (SIGKILL, in a subprocess) and resumed with ``resume=True`` ends with
  the same weights, log and validation probabilities as a run that was never interrupted.
* The notebook chain killed while the split stage runs: the stage's ``stage.json`` is absent, its
  half-written file exists only as a temporary; the re-run skips eda, re-runs split, deletes the
  temporary and writes the same ``split.csv``.
* A read-only or non-directory output folder, or too little free disk, fails before any stage starts.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import queue
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROJECT, make_project

from mlc_utils.core.io import (
    atomic_save,
    atomic_write_text,
    ensure_writable_dir,
    is_temporary,
    remove_stale_temporaries,
)
from mlc_utils.models.checkpoint import read_checkpoint
from mlc_utils.run import pipeline
from mlc_utils.run.pipeline import run_study
from mlc_utils.study.params import ParamError

torch.set_num_threads(1)


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", **extra}
    return env


# Waits below end when the event happens (a line from the child, a pid through a FIFO, a pidfd turning
# readable); HANG_GUARD only stops a test that would otherwise hang, so it is generous for a loaded machine.
HANG_GUARD = 600.0


def _first_of(waiters: dict, what: str):
    """Run each waiter in a daemon thread; return ``(name, result)`` of the first to finish."""
    done: queue.Queue = queue.Queue()
    for name, waiter in waiters.items():
        threading.Thread(target=lambda n=name, w=waiter: done.put((n, w())), daemon=True).start()
    try:
        return done.get(timeout=HANG_GUARD)
    except queue.Empty:
        raise AssertionError(f"{what} did not happen within {HANG_GUARD:.0f}s") from None


def _read_until(process: subprocess.Popen, line: str) -> None:
    """Block on the child's output until it prints ``line``; fail if it ends first."""
    seen = []

    def read():
        for out in process.stdout:
            seen.append(out)
            if out.strip() == line:
                return True
        return False
    if not _first_of({"output": read}, f"the line {line!r}")[1]:
        process.wait()
        raise AssertionError(f"process ended (rc {process.returncode}) before printing {line!r}:\n{''.join(seen)}")


def _wait_until_dead(pid: int) -> None:
    """Return once ``pid`` (not necessarily our child) has exited: its pidfd turns readable."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd on this kernel: look at /proc until it is gone
        def gone():
            while _pid_alive(pid):
                time.sleep(0.1)
        _first_of({"exit": gone}, f"the exit of process {pid}")
        return
    try:
        if not select.select([pidfd], [], [], HANG_GUARD)[0]:
            raise AssertionError(f"process {pid} did not exit within {HANG_GUARD:.0f}s of SIGKILL")
    finally:
        os.close(pidfd)


def _kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the process and its children (its own session)
    process.wait(timeout=HANG_GUARD)
    assert process.returncode == -signal.SIGKILL


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if p.is_file() and is_temporary(p))


# --- training -------------------------------------------------------------------------------------

FIT_SCRIPT = textwrap.dedent('''
    """Train a tiny model for 3 epochs; with STALL_AFTER set, hang in epoch 2 once a step of it has run."""
    import os, sys, time
    from pathlib import Path
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from mlc_utils.train.loop import TrainConfig, fit

    torch.set_num_threads(1)
    out = Path(sys.argv[1])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2))
            self.head = nn.Linear(16, 4)
            self.spec = {"kind": "tiny", "num_classes": 4}

        def forward(self, x):
            return self.head(self.backbone(x))

    class MaybeStalling(TensorDataset):
        """Once last.pt (epoch 1) exists, serve STALL_AFTER more items, then say so and hang."""
        served = 0

        def __getitem__(self, index):
            stall_after = int(os.environ.get("STALL_AFTER", "0"))
            if stall_after and (out / "last.pt").exists():
                self.served += 1
                if self.served > stall_after:
                    print("epoch2-under-way", flush=True)
                    time.sleep(600)
            return super().__getitem__(index)

    def data(n, seed, cls=TensorDataset):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 8, generator=g)
        return cls(x, (x[:, :4] > 0).float())

    torch.manual_seed(0)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2, progress=False, mixup=True, ema=True, ema_decay=0.9,
                      label_smoothing=0.1, scheduler="step", step_size=1, gamma=0.5, resume=True)
    result = fit(Net(), data(64, 0, MaybeStalling), data(16, 1), cfg, out)
    print("best epoch", result.best_epoch)
''')


@pytest.mark.slow
def test_fit_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    script = tmp_path / "train_tiny.py"
    script.write_text(FIT_SCRIPT)
    run = lambda out, **env: subprocess.Popen([sys.executable, str(script), str(out)], env=_env(**env),  # noqa: E731
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                              start_new_session=True)
    straight = run(tmp_path / "straight")
    killed = run(tmp_path / "killed", STALL_AFTER="20")  # epoch 2: one 16-item step done, the next under way
    try:
        _read_until(killed, "epoch2-under-way")
    finally:
        if killed.poll() is None:
            _kill_group(killed)
    out = tmp_path / "killed"
    # what the kill left: epoch 1 complete, nothing of epoch 2, no half-written file
    assert read_checkpoint(out / "last.pt")["epoch"] == 0
    assert len(pd.read_csv(out / "log.csv")) == 1
    assert not _temporaries(out)

    resumed = run(out)  # the same command again (resume=True), without the stall
    for process in (straight, resumed):
        stdout, _ = process.communicate(timeout=300)
        assert process.returncode == 0, stdout

    a, b = read_checkpoint(tmp_path / "straight" / "last.pt"), read_checkpoint(out / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resuming"
    assert read_checkpoint(tmp_path / "straight" / "best.pt")["epoch"] == read_checkpoint(out / "best.pt")["epoch"]
    log_a = pd.read_csv(tmp_path / "straight" / "log.csv").drop(columns="seconds")
    log_b = pd.read_csv(out / "log.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(log_a, log_b, check_exact=True)
    assert np.array_equal(np.load(tmp_path / "straight" / "val_probs.npy"), np.load(out / "val_probs.npy"))


# --- the notebook chain ---------------------------------------------------------------------------

HANG_CELL = textwrap.dedent('''
    # test hook: with MLC_TEST_HANG set, start an atomic write and hang inside it (the test SIGKILLs us)
    import os, time
    if os.environ.get("MLC_TEST_HANG"):
        from mlc_utils.core.io import atomic_path
        with atomic_path(ctx.stage_dir / "partial.bin") as tmp:
            tmp.write_bytes(b"half a file" * 1000)
            with open(os.environ["MLC_TEST_HANG"], "w") as fifo:  # the test is reading: it wakes at once
                fifo.write(str(os.getpid()))
            time.sleep(600)
''')


def _project(tmp_path: Path, data: Path) -> tuple[Path, Path]:
    return make_project(tmp_path, data, image_size_sample=10)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0): look at its state
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_chain_killed_mid_stage_reruns_from_that_stage(tmp_path, tiny_data):
    root, params = _project(tmp_path, tiny_data)
    notebook = root / "notebooks" / "02_split.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(HANG_CELL))
    nbformat.write(nb, notebook)
    marker = tmp_path / "split-hanging"
    os.mkfifo(marker)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from mlc_utils.run.pipeline import run_study; "
                               "run_study(sys.argv[1], root=Path(sys.argv[2]))", str(params), str(root)],
        env=_env(MLC_TEST_HANG=str(marker)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)

    def kernel_pid() -> str:
        with open(marker) as fifo:  # blocks until the hanging cell opens the FIFO and writes its pid
            return fifo.read()

    kernel = None
    try:
        first, result = _first_of({"kernel": kernel_pid, "child": child.wait}, "the split stage's hang")
        if first == "child":
            with contextlib.suppress(OSError):  # let the reader thread go
                os.close(os.open(marker, os.O_WRONLY | os.O_NONBLOCK))
            raise AssertionError(f"run_study ended (rc {result}) before the split stage hung:\n{child.stdout.read()}")
        kernel = int(result)
    finally:
        if child.poll() is None:
            _kill_group(child)
        if kernel and _pid_alive(kernel):
            os.kill(kernel, signal.SIGKILL)  # the kernel runs in a session of its own: kill it like a crash would
    _wait_until_dead(kernel)
    assert not _pid_alive(kernel)

    run = root / "runs" / "t"
    assert (run / "eda" / "stage.json").is_file()
    assert not (run / "split" / "stage.json").exists(), "a killed stage must not look finished"
    assert not (run / "split" / "partial.bin").exists(), "a killed write must not publish its file"
    leftovers = _temporaries(run / "split")
    assert [p.name.startswith(".partial.bin.") for p in leftovers] == [True]
    split_before = (run / "split" / "split.csv").read_bytes()

    logs: list[str] = []
    results = run_study(str(params), root=root, log=logs.append)
    assert [(r.stage, r.status) for r in results] == [("eda", "skipped"), ("split", "ran")], logs
    assert any("interrupted write" in line and leftovers[0].name in line for line in logs), logs
    assert not _temporaries(run), "stale temporaries must be removed when their stage re-runs"
    assert json.loads((run / "split" / "stage.json").read_text())["status"] == "ok"
    assert (run / "split" / "split.csv").read_bytes() == split_before  # same params and seed: same split
    assert not (run / "split" / "partial.bin").exists()
    assert [r.status for r in run_study(str(params), root=root, log=logs.append)] == ["skipped", "skipped"]


# --- output folders that cannot take the run --------------------------------------------------------

def _make_unwritable(folder: Path, how: str, monkeypatch) -> None:
    if how == "not a folder":
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_text("a file where the output folder should be\n")
        return
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    try:
        (folder / "probe").write_text("x")
    except PermissionError:
        return  # the kernel refuses: a real read-only folder
    (folder / "probe").unlink()
    # Root ignores permission bits, and what would make a folder refuse root too (a read-only mount,
    # chattr +i) needs privileges or a system folder. So refuse as the kernel refuses anyone else:
    # creating any entry under ``folder`` raises EACCES, at the os level. run_study, its own check
    # (ensure_writable_dir's mkdir and write probe) and the command line all run unchanged above it.
    real_mkdir, real_open = os.mkdir, os.open

    def refused(path) -> bool:
        path = Path(os.fsdecode(path)).absolute()
        return path.parent == folder or folder in path.parents

    def mkdir(path, *args, **kwargs):
        if refused(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and refused(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("which", ["runs", "reports"])
@pytest.mark.parametrize("how", ["read-only", "not a folder"])
def test_unwritable_output_folder_fails_at_once_naming_it(tmp_path, tiny_data, monkeypatch, capsys, which, how):
    root, params = _project(tmp_path, tiny_data)
    _make_unwritable(root / which, how, monkeypatch)
    started: list[str] = []

    def execute_stage(study, stage, *args, **kwargs):
        started.append(stage)
        raise AssertionError(f"stage {stage} started although {root / which} cannot take the run")
    monkeypatch.setattr(pipeline, "execute_stage", execute_stage)  # "at once": before any stage
    with pytest.raises(PermissionError) as info:
        run_study(str(params), root=root, log=lambda *_: None)
    assert f"output folder {root / which / 't'} is not writable" in str(info.value)
    assert started == []
    if which == "reports":
        assert not (root / "runs" / "t" / "eda").exists(), "no stage may start before every folder is checked"
    # the command line says the same in one line, exit code 2
    monkeypatch.setattr(pipeline, "run_study", functools.partial(pipeline.run_study, root=root))
    assert pipeline.cli(["--params", str(params)]) == 2
    assert f"mlc_utils run: output folder {root / which / 't'} is not writable" in capsys.readouterr().err
    assert started == []


def test_too_little_free_space_fails_before_any_stage(tmp_path, tiny_data, monkeypatch):
    root, params = _project(tmp_path, tiny_data)
    monkeypatch.setenv("MLC_MIN_FREE_MB", str(10**12))  # a petabyte more than any disk here
    with pytest.raises(OSError) as info:
        run_study(str(params), root=root, log=lambda *_: None)
    message = str(info.value)
    assert f"output folder {root / 'runs' / 't'} has" in message and "MiB free, needs at least" in message
    assert "MLC_MIN_FREE_MB" in message
    assert not (root / "runs" / "t" / "eda").exists()
    monkeypatch.setenv("MLC_MIN_FREE_MB", "plenty")
    with pytest.raises(ParamError, match="MLC_MIN_FREE_MB: expected a number of MiB, got 'plenty'"):
        run_study(str(params), root=root, log=lambda *_: None)
    monkeypatch.delenv("MLC_MIN_FREE_MB")
    assert pipeline.min_free_bytes() == pipeline.MIN_FREE_MB * 2**20


def test_ensure_writable_dir_checks_space(tmp_path):
    assert ensure_writable_dir(tmp_path / "a" / "b", need_bytes=1) == tmp_path / "a" / "b"
    with pytest.raises(OSError, match=r"output folder .*/a has \d+ MiB free, needs at least \d+ MiB"):
        ensure_writable_dir(tmp_path / "a", need_bytes=2**60)
    assert not _temporaries(tmp_path)  # the write probe leaves nothing


def test_disk_full_mid_write_keeps_the_previous_file(tmp_path):
    target = atomic_write_text(tmp_path / "split.csv", "ImageID,fold\n1.jpg,train\n")

    def writer(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"ImageID,fold\n")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"no space left on the disk to write {target}: it needs about 25 bytes, "):
        atomic_save(target, writer)   # an OSError still, said in one line (core.io.DiskFullError)
    assert target.read_text() == "ImageID,fold\n1.jpg,train\n"
    assert not _temporaries(tmp_path)


def test_only_real_temporaries_are_removed(tmp_path):
    keep = [tmp_path / n for n in (".gitkeep", "notes.tmp", "model.pt", ".hidden.txt", "a.b.tmp.csv")]
    for path in keep:
        path.write_text("keep")
    stale = [tmp_path / "sub" / ".last.pt.k2j4_x9a.tmp.pt", tmp_path / ".split.csv.abcdefgh.tmp.csv",
             tmp_path / ".write-probe-q1w2e3r4"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_text("half")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert remove_stale_temporaries(tmp_path / "missing") == []
