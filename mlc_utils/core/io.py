"""Atomic file writes: an artifact either exists whole or not at all.

Every stage writes through these helpers, so a run killed mid-write never leaves a half file that
a later run would trust (write to a temporary file in the same folder, fsync, then rename). A write
that fills the disk says so in one line (:class:`DiskFullError`: the file, the space it needs) and
leaves the previous file in place.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator

DISK_FULL_BYTES = 1 << 20   # free space under which a failed write is taken for a full disk


class DiskFullError(OSError):
    """A write ran out of disk space: names the file, what it needs and what is free, in one line.
    The previous version of the file (if any) is still there and no temporary is left."""

    def __init__(self, path: Path, written: int, previous: int, free: int, wanted: int = 0):
        """``written``: bytes the write had put down when it failed; ``previous``: the size of the file it
        replaces (the last epoch's checkpoint: about what this one needs); ``wanted``: the size the writer
        asked for, where it said."""
        need = max(written, previous, wanted)
        about = f"about {size_text(need)}" if wanted or previous >= written else f"more than {size_text(need)}"
        super().__init__(errno.ENOSPC, f"no space left on the disk to write {path}: it needs {about}, "
                                       f"{size_text(free)} free there; free some space (or move the run's folder) "
                                       f"and run again", str(path))
        self.path, self.needed, self.free = path, need, free

    def __str__(self) -> str:
        return self.strerror


def size_text(n: float) -> str:
    """Bytes as people read a size (a file, a process's peak memory): 26 bytes, 12 KiB, 3.4 MiB, 250 MiB, 2.1 GiB."""
    if n < 2**10:
        return f"{n} bytes"
    if n < 2**20:
        return f"{n / 2**10:.0f} KiB"
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.1f} MiB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MiB"


def _free_bytes(folder: Path) -> int:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return DISK_FULL_BYTES
    return stat.f_bavail * stat.f_frsize


_SHORT_OF_SPACE = re.compile(r"no space|free space", re.IGNORECASE)
_NUMPY_WANTED = re.compile(r"write (\d+) bytes after offset (\d+)")   # numpy's words when it cannot allocate the file


def _disk_full(err: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC/EDQUOT, or (writers such as torch.save
    and np.save report it in words of their own) a message saying so, or a folder with next to nothing free."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(err, (OSError, RuntimeError)) and (
        bool(_SHORT_OF_SPACE.search(str(err))) or _free_bytes(folder) < DISK_FULL_BYTES)


def _wanted(err: BaseException) -> int:
    """The size of the whole file the writer was writing, where its error says (numpy's may), else 0."""
    found = _NUMPY_WANTED.search(str(err))
    return int(found.group(1)) + int(found.group(2)) if found else 0


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    A write that runs out of disk raises :class:`DiskFullError` (the file, the space it needs); the
    temporary is removed and the previous ``path`` is left as it was."""
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
    except (OSError, RuntimeError) as err:
        if isinstance(err, DiskFullError) or not _disk_full(err, path.parent):
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        previous = path.stat().st_size if path.is_file() else 0
        tmp.unlink(missing_ok=True)
        raise DiskFullError(path, written, previous, _free_bytes(path.parent), _wanted(err)) from err
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
