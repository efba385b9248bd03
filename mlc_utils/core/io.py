"""Atomic file writes: an artifact either exists whole or not at all.

Every stage writes through these helpers, so a run killed mid-write never leaves a half file that
a later run would trust (write to a temporary file in the same folder, fsync, then rename).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name ends in the real suffix, so writers that infer a format from it (or append
    # one, like np.save) behave as they would on the final path
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; artifacts get the usual permissions
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Run ``writer(tmp_path)`` (e.g. ``torch.save`` or ``np.save``) and publish the result atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


# what ``atomic_path`` (``.NAME.XXXXXXXX.tmpSUFFIX``) and ``ensure_writable_dir`` leave when a process dies mid-write
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^./]*)?$|^\.write-probe-[A-Za-z0-9_]{8}$")


def is_temporary(path: str | os.PathLike) -> bool:
    """True for a half-written temporary of :func:`atomic_path` (never a published artifact)."""
    return bool(_TEMPORARY.match(Path(path).name))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed writer left under ``folder`` (recursively); returns them.

    Call it only where no other process is writing (e.g. before a stage re-runs in its own folder).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob(".*") if p.is_file() and is_temporary(p)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_writable_dir(path: str | os.PathLike, need_bytes: int = 0) -> Path:
    """Fail before hours of work if ``path`` cannot be written or lacks ``need_bytes`` of free space."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-", delete=True)
        probe.write(b"x")
        probe.flush()
        probe.close()
    except OSError as err:
        raise PermissionError(f"output folder {path} is not writable: {err.strerror or err}") from None
    if need_bytes:
        import shutil
        free = shutil.disk_usage(path).free
        if free < need_bytes:
            raise OSError(f"output folder {path} has {free / 2**20:.0f} MiB free, "
                          f"needs at least {need_bytes / 2**20:.0f} MiB")
    return path


def save_npy(path: str | os.PathLike, array) -> Path:
    """Atomic ``.npy`` write (the temporary name ends in ``.npy``, so numpy adds no suffix)."""
    import numpy as np
    return atomic_save(path, lambda tmp: np.save(tmp, np.asarray(array)))
