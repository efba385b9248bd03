"""The processes a job leaves behind: find them, end them, and measure their memory (Linux ``/proc``).

A notebook kernel starts DataLoader workers (in its process group) and torchrun (in a session of
its own, whose workers each start one more): signalling one process group never reaches all of
them, and a process whose parent died is adopted by init, out of reach of its parent's tree. So:

* :func:`tree_groups` collects the process groups of a process and of all its descendants;
* :func:`child_subreaper` makes this process adopt the orphans of its descendants instead of init,
  so what a killed kernel leaves running is still found among this process's children;
* :func:`memory_bytes` reads a process's resident and peak resident memory.

No torch here: ``run`` (``mlc_utils.run.pipeline``) uses it without importing torch.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37   # prctl(2)


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process, from /proc (empty elsewhere)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the command name may hold spaces
        except (OSError, IndexError):
            continue  # ended meanwhile
        table[int(stat.parent.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def descendants(root: int, table: dict | None = None) -> list[int]:
    """The pids of every descendant of ``root`` that has not ended (zombies excluded)."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if table[pid][2] not in "ZX":
            found.append(pid)
        todo += children.get(pid, [])
    return found


def tree_groups(root: int) -> set[int]:
    """Process groups of ``root`` and of all its descendants, never our own."""
    table = process_table()
    groups = {table[root][1]} if root in table else {root}
    groups |= {table[pid][1] for pid in descendants(root, table)}
    return groups - {os.getpgrp()}


def signal_groups(groups: set[int], sig: signal.Signals) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def wait_gone(groups: set[int], timeout: float) -> bool:
    """Until no process of ``groups`` runs (a zombie left for init to reap holds no memory or GPU);
    whether they all ended within ``timeout``."""
    deadline = time.monotonic() + timeout
    while any(group in groups and state not in "ZX" for _, group, state in process_table().values()):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def memory_bytes(pid: int) -> tuple[int, int]:
    """(resident, peak resident) bytes of ``pid`` (VmRSS, VmHWM); (0, 0) once it has ended."""
    found = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    found[name] = int(value.split()[0]) * 1024   # kB
    except OSError:
        return 0, 0
    return found.get("VmRSS", 0), found.get("VmHWM", 0)


def proportional_bytes(pid: int) -> int:
    """``pid``'s proportional set size (Pss: its private memory plus its share of pages it shares, so
    a forked worker's copy of its parent's pages is not counted twice); 0 once it has ended."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _prctl(option: int, value: int = 0) -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if option == PR_GET_CHILD_SUBREAPER:
            out = ctypes.c_int(0)
            return out.value if libc.prctl(option, ctypes.byref(out), 0, 0, 0) == 0 else None
        return libc.prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def child_subreaper():
    """While inside, orphaned descendants of this process are re-parented to it (not to init), so a
    sweep (:func:`end_orphans`) still finds what a killed child left running. A no-op off Linux."""
    before = _prctl(PR_GET_CHILD_SUBREAPER)
    if before == 0:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        if before == 0:
            _prctl(PR_SET_CHILD_SUBREAPER, 0)


def end_orphans(keep: set[int], timeout: float = 5.0) -> list[int]:
    """SIGKILL every child of this process not in ``keep`` (pids that were there before) and all their
    descendants' process groups; reap the children. Returns the children ended."""
    me = os.getpid()
    table = process_table()
    orphans = [pid for pid, (parent, _, state) in table.items() if parent == me and pid not in keep and state not in "ZX"]
    groups: set[int] = set()
    for pid in orphans:
        groups |= tree_groups(pid)
    for pid in orphans:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    signal_groups(groups, signal.SIGKILL)
    for pid in orphans:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    wait_gone(groups, timeout)
    return orphans


def children() -> set[int]:
    """The pids of this process's children now (what :func:`end_orphans` must leave alone)."""
    me = os.getpid()
    return {pid for pid, (parent, _, _) in process_table().items() if parent == me}
