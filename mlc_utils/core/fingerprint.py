"""What a cached result depends on, as digests: the source code that made it and the data it read.

A cache is only as trustworthy as its key. Like ``joblib.Memory``, a result's key holds a hash of
the source of the code that produced it (:func:`source_digest`), so editing the training, feature,
model or metric code retrains what that code makes; and a hash of the data as it is on disk
(:func:`data_fingerprint`), so a repaired or re-downloaded image is seen as a change.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from mlc_utils.core.io import sha256_file

IMAGE_FOLDER = "data"


def digest(obj) -> str:
    """A short stable hash of JSON-able ``obj`` (dict keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def module_files(module: str) -> list[Path]:
    """The source files of a module, or of every module of a package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"source_digest: no module named {module!r}")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: all of its source
        return sorted(p for folder in spec.submodule_search_locations for p in Path(folder).rglob("*.py"))
    return [origin]


@lru_cache(maxsize=None)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def source_digest(modules: Iterable[str]) -> str:
    """Hash of the source of ``modules`` (dotted names; a package counts with all its files).

    Files are re-hashed whenever their size or modification time changes, so an edit made in a
    running kernel (a notebook session) is seen by the next key computed.
    """
    hasher = hashlib.sha256()
    for module in sorted(set(modules)):
        for path in module_files(module):
            stat = path.stat()
            hasher.update(f"{module}:{path.name}:".encode())
            hasher.update(_file_digest(str(path), stat.st_size, stat.st_mtime_ns).encode())
    return hasher.hexdigest()[:16]


def file_stamp(path: str | os.PathLike) -> list[int] | None:
    """``[size, mtime_ns]`` of a file (None when missing): changes whenever the file is replaced."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def data_fingerprint(data_dir: str | os.PathLike, images: bool = True) -> dict:
    """Checksums of the CSVs and, with ``images``, a hash of the image listing (name, size, mtime).

    Cheap enough to take on every run (one ``stat`` per image), and it changes when any image is
    added, removed or replaced.
    """
    data_dir = Path(data_dir)
    out = {}
    for name in ("train.csv", "test.csv"):
        path = data_dir / name
        out[name] = sha256_file(path) if path.is_file() else None
    image_dir = data_dir / IMAGE_FOLDER
    if images and image_dir.is_dir():
        listing = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                         for e in os.scandir(image_dir) if e.is_file())
        out["images"] = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return out
