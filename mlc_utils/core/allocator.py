"""A memory allocator that keeps freed memory, for every process the project starts.

A CPU pass over images frees and allocates the same large activation tensors every batch. glibc's
malloc serves each block over its mmap threshold with a fresh mapping and unmaps it when freed, so
the kernel faults the next batch's activations in page by page: measured here, EfficientNet-Lite0
at 320 px spent half its CPU time in the kernel (24,000 page faults per image at batch 64).
tcmalloc keeps freed memory for reuse: about 150x fewer faults and 2-3x the images per second
(``benchmarks/feature_extraction.py``).

* :func:`tcmalloc_path`: Debian's ``libtcmalloc-minimal4`` (``make setup`` installs it where it can);
* :func:`allocator_env`: ``LD_PRELOAD`` for the processes the project starts (``make test``, the
  notebook kernels and torchrun workers of ``run``), which inherit it, with the one setting a library
  needs beside it (:data:`TCMALLOC_COMPANIONS`);
* :func:`restart_on_tcmalloc`: the command line (``python -m mlc_utils ...``) restarts itself once on
  tcmalloc before it imports torch, so ``run``, ``plan`` (whose calibration times the model in that
  process) and ``predict`` get it however they are started;
* :func:`tune_glibc`: for a process already running on glibc's malloc (a kernel started by hand in
  JupyterLab): mallopt keeps blocks up to 32 MiB (glibc's ceiling) on the heap and freed memory in
  the process. With a small CPU batch (``core.inference.BATCH_SIZES``) most activations fit under it.

``python -m mlc_utils.core.allocator`` prints the library's path (empty when it is not installed);
``--env`` prints ``LD_PRELOAD=...`` for ``env`` on a command line (nothing when not installed).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

CANDIDATES = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
              "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4",
              "/usr/local/lib/libtcmalloc_minimal.so.4")
#: how a user installs it (what ``make setup`` runs where it can)
TCMALLOC_INSTALL = "sudo apt-get install libtcmalloc-minimal4 (Debian, Ubuntu), or `make setup` as root"
# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GLIBC_MMAP_MAX = 32 * 2**20          # the largest mmap threshold glibc accepts on 64-bit systems
_TUNED: list[bool] = []


def tcmalloc_path() -> str:
    """The tcmalloc library on this machine, or "" when none is installed."""
    for path in CANDIDATES:
        if Path(path).is_file():
            return path
    found = ctypes.util.find_library("tcmalloc_minimal")
    return found if found and Path(found).is_absolute() else ""


def loaded_allocator() -> str:
    """``tcmalloc`` when this process runs on it, else ``glibc`` (or ``glibc, tuned`` after :func:`tune_glibc`)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    if "tcmalloc" in maps:
        return "tcmalloc"
    return "glibc, tuned" if _TUNED else "glibc"


#: what a process on tcmalloc needs besides the preload: OpenVINO's oneTBB otherwise binds its NUMA
#: helper's ``free`` to glibc's (RTLD_DEEPBIND) and aborts on tcmalloc's pointers (``core.openvino``)
TCMALLOC_COMPANIONS = {"TBB_ENABLE_SANITIZERS": "1"}


def allocator_env(environ: dict | None = None) -> dict:
    """``environ`` (default: this process's) with tcmalloc preloaded for child processes, when it is
    installed and nothing else is preloaded; ``MLC_ALLOCATOR=system`` leaves the environment as it is."""
    env = dict(os.environ if environ is None else environ)
    path = tcmalloc_path()
    if path and env.get("MLC_ALLOCATOR", "") != "system" and "tcmalloc" not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = " ".join(filter(None, [path, env.get("LD_PRELOAD", "")]))
    if "tcmalloc" in env.get("LD_PRELOAD", ""):
        env.update({k: v for k, v in TCMALLOC_COMPANIONS.items() if k not in env})
    return env


def restart_on_tcmalloc(argv: list[str]) -> None:
    """Replace this process by ``argv`` with tcmalloc preloaded, when it is installed and not loaded yet
    (no return then); otherwise return at once. The environment marks the restart, so it happens once."""
    if os.environ.get("MLC_ALLOCATOR", "") == "system" or os.environ.get(_RESTARTED) or loaded_allocator() == "tcmalloc":
        return
    env = allocator_env()
    if "tcmalloc" not in env.get("LD_PRELOAD", ""):
        return
    env[_RESTARTED] = "1"
    try:
        os.execve(argv[0], argv, env)
    except OSError:  # cannot exec (odd interpreter path): carry on under glibc, tuned in-process
        return


_RESTARTED = "MLC_ALLOCATOR_RESTARTED"


def tune_glibc() -> bool:
    """Keep freed memory in this process when it runs on glibc's malloc (idempotent; False elsewhere)."""
    if _TUNED:
        return True
    if loaded_allocator() == "tcmalloc" or os.environ.get("MLC_ALLOCATOR", "") == "system":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_MAX) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**30) == 1
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    if ok:
        _TUNED.append(True)
    return ok


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["--env"]:
        env = allocator_env()
        preload = env.get("LD_PRELOAD", "")
        if preload and " " not in preload:
            print(" ".join([f"LD_PRELOAD={preload}", *(f"{k}={env[k]}" for k in TCMALLOC_COMPANIONS)]))
        else:
            print("")
    else:
        print(tcmalloc_path())
