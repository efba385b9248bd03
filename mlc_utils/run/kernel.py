"""A stage's kernel under ``run``: started, watched, and stopped in one line.

* :func:`kernel_manager`: the kernel manager papermill starts the kernel with: IPC sockets, and the
  kernel process's own stdout and stderr (ipykernel's log, a zmq error as it goes down) in a log file
  rather than on the terminal. What the cells print still reaches the terminal (``StageProgress``).
* :class:`KernelWatch`: which cell runs now (nbclient's ``on_cell_start`` hook), the kernel's
  process and its peak memory (sampled from ``/proc``), and how it ended (a signal, an exit status).
* :class:`StopOnInterrupt`: Ctrl-C during a run. The kernel runs in a session of its own, so the
  terminal's SIGINT reaches ``run`` only; the first Ctrl-C is passed on to the kernel's process group
  (the cell raises KeyboardInterrupt, DataLoader workers end, ``launch_torchrun`` ends torchrun and
  its workers), papermill saves the notebook with what had run, and the stage ends as *interrupted*.
  A kernel that has not stopped after :data:`STOP_GRACE_S` seconds, or a second Ctrl-C, is killed
  with its process tree; a third Ctrl-C is Python's own KeyboardInterrupt. Between cells (the kernel
  idle, ignoring SIGINT) the next cell is not started.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

from mlc_utils.core.processes import (
    descendants,
    memory_bytes,
    process_table,
    proportional_bytes,
    signal_groups,
    tree_groups,
)

STOP_GRACE_S = 20.0        # Ctrl-C -> kill: longer than launch_torchrun's own SIGTERM grace (15 s)
SAMPLE_EVERY_S = 0.5       # the kernel's memory, read from /proc


class StopRequested(Exception):
    """Raised instead of starting a cell once Ctrl-C was pressed (the kernel was between cells)."""


class KernelWatch:
    """What ``run`` knows of one stage's kernel while papermill drives it."""

    def __init__(self):
        self.process = None          # the kernel's Popen (jupyter_client's)
        self.cell = 0                # the execution count of the code cell running (1 = the first)
        self.peak = 0                # bytes: the kernel's peak resident memory (VmHWM), or with its workers' (Pss) if more
        self.stopping = False        # Ctrl-C: start no more cells
        self._done = threading.Event()
        self._sampler: threading.Thread | None = None

    # -- hooks -----------------------------------------------------------------------------------
    def attach(self, process) -> None:
        """The kernel started: sample its memory until it ends."""
        self.process = process
        self._sampler = threading.Thread(target=self._sample, name="mlc-kernel-memory", daemon=True)
        self._sampler.start()

    def on_cell_start(self, cell, cell_index: int, **_) -> None:
        """nbclient's hook before each cell: count code cells; after Ctrl-C, start none."""
        if self.stopping:
            raise StopRequested("stopped by Ctrl-C before the next cell")
        if cell.cell_type == "code" and cell.source.strip():
            self.cell += 1

    # -- the process -----------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def interrupt(self) -> None:
        """SIGINT to the kernel's process group, as Jupyter's interrupt does."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(self.process.pid), signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL to the kernel and every process group of its tree (torchrun and its workers have
        sessions of their own); nbclient finds the kernel dead within a second and papermill ends."""
        if self.alive():
            signal_groups(tree_groups(self.process.pid), signal.SIGKILL)

    def returncode(self) -> int | None:
        """How the kernel ended (negative: the signal that ended it); None while it runs."""
        if self.process is None:
            return None
        with contextlib.suppress(Exception):
            self.process.poll()
        return self.process.returncode

    # -- memory ----------------------------------------------------------------------------------
    def _sample(self) -> None:
        while not self._done.is_set() and self.alive():
            pid = self.process.pid
            workers = descendants(pid, process_table())
            tree = proportional_bytes(pid) + sum(proportional_bytes(child) for child in workers) if workers else 0
            self.peak = max(self.peak, memory_bytes(pid)[1], tree)
            self._done.wait(SAMPLE_EVERY_S)

    def close(self) -> None:
        self._done.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)


def kernel_manager(socket_dir: str | os.PathLike, watch: KernelWatch, log_path: str | os.PathLike):
    """The kernel manager class papermill starts a stage's kernel with: IPC sockets (files in
    ``socket_dir``, one fresh folder per stage) rather than TCP on localhost, so ipykernel has no
    unencrypted TCP transport to warn about and no two kernels (stages, runs, test sessions) share a
    socket path; the kernel process's own output into ``log_path``; ``watch`` told of its process."""
    from jupyter_client.manager import AsyncKernelManager
    socket_prefix = str(Path(socket_dir) / "kernel")

    class StageKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", socket_prefix)
            super().__init__(**kwargs)

        async def start_kernel(self, **kw):
            with open(log_path, "ab") as log:   # the kernel holds its own descriptor: closing ours is fine
                kw.setdefault("stdout", log)
                kw.setdefault("stderr", log)
                await super().start_kernel(**kw)
            watch.attach(self.provisioner.process)

    return StageKernelManager


class StopOnInterrupt:
    """Ctrl-C during ``run`` (the module docstring). ``requested``: Ctrl-C was pressed."""

    def __init__(self, grace: float | None = None):
        self.grace = STOP_GRACE_S if grace is None else grace
        self.presses = 0
        self.watch: KernelWatch | None = None
        self._timer: threading.Timer | None = None
        self._previous = None

    @property
    def requested(self) -> bool:
        return self.presses > 0

    def handler(self, signum, frame) -> None:
        self.presses += 1
        watch = self.watch
        if watch is None or self.presses > 2:
            raise KeyboardInterrupt
        watch.stopping = True
        if self.presses == 1:
            watch.interrupt()
            self._timer = threading.Timer(self.grace, watch.kill)
            self._timer.daemon = True
            self._timer.start()
        else:
            watch.kill()

    @contextlib.contextmanager
    def watching(self, watch: KernelWatch):
        """While a stage's kernel runs: Ctrl-C goes to it (pressed before, it never starts a cell)."""
        self.watch = watch
        watch.stopping = self.requested
        try:
            yield watch
        finally:
            self.watch = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def __enter__(self):
        """Take over SIGINT, from the main thread only, and not where it is ignored (a job started in
        the background by a script: its SIGINT is not a Ctrl-C)."""
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self.handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
