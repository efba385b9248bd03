"""Probability files: an (n, C) matrix with the ImageID of each row, read and written so that rows
are matched by ImageID, never by position.

A member saved in another order is reordered (:meth:`ProbTable.aligned_to`), and one with missing,
extra or repeated ids is refused with the ids named, because a silently shifted row would score
garbage that still looks like a number.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mlc_utils.core.io import atomic_save, atomic_write_text


@dataclass
class ProbTable:
    """Probabilities with the ImageID of each row."""

    ids: list[str]
    probs: np.ndarray
    source: str = ""

    def __post_init__(self):
        self.ids = [str(i) for i in self.ids]
        self.probs = np.asarray(self.probs, dtype=np.float64)
        where = self.source or "probabilities"
        if self.probs.ndim != 2:
            raise ValueError(f"{where}: expected an (n, C) matrix, got shape {self.probs.shape}")
        if len(self.ids) != len(self.probs):
            raise ValueError(f"{where}: {len(self.ids)} ids for {len(self.probs)} rows of probabilities")
        if not np.isfinite(self.probs).all() or self.probs.min(initial=0) < 0 or self.probs.max(initial=0) > 1:
            raise ValueError(f"{where}: values must be probabilities in [0, 1] (got NaN/inf or values outside; "
                             f"logits saved by mistake?)")

    def aligned_to(self, ids: Sequence[str], what: str) -> np.ndarray:
        """Rows reordered to ``ids``; ValueError naming ``what`` on repeated, missing or extra ids."""
        ids = [str(i) for i in ids]
        index = pd.Index(self.ids)
        if index.has_duplicates:
            repeated = index[index.duplicated()].unique()[:5].tolist()
            raise ValueError(f"{what}: ImageIDs repeat in {self.source or 'the file'}: {repeated}")
        have = set(self.ids)
        missing = [i for i in ids if i not in have]
        extra = sorted(have - set(ids))
        if missing or extra:
            parts = [f"{len(missing)} missing (e.g. {missing[:5]})" if missing else "",
                     f"{len(extra)} not expected (e.g. {extra[:5]})" if extra else ""]
            raise ValueError(f"{what}: ImageIDs do not match the reference rows: "
                             + "; ".join(p for p in parts if p) + f" [{self.source or 'in memory'}]")
        return self.probs[index.get_indexer(ids)]


def _read_npz(path: Path, ids):
    with np.load(path, allow_pickle=False) as data:
        for key in ("ids", "probs"):
            if key not in data:
                raise ValueError(f"{path}: an .npz probability file needs arrays 'ids' and 'probs' (lacks {key!r})")
        return data["ids"].astype(str).tolist(), data["probs"]


def _read_csv(path: Path, ids):
    frame = pd.read_csv(path, dtype={"ImageID": str})
    if "ImageID" not in frame.columns:
        raise ValueError(f"{path}: a .csv probability file needs an ImageID column and one column per class")
    return frame["ImageID"].tolist(), frame.drop(columns="ImageID").to_numpy(dtype=np.float64)


def _read_npy(path: Path, ids):
    if ids is None:
        raise ValueError(f"ids: {path} is a bare .npy matrix; pass the ImageIDs of its rows "
                         f"(e.g. the split's val ids in order) or save it as .npz/.csv with save_probs")
    return list(ids), np.load(path, allow_pickle=False)


#: file suffix -> reader(path, ids) -> (ids, probs)
PROB_READERS: dict[str, Callable] = {".npz": _read_npz, ".csv": _read_csv, ".npy": _read_npy}


def load_probs(path: str | os.PathLike, ids: Sequence[str] | None = None) -> ProbTable:
    """Read a probability file (.npz with ids+probs, .csv with ImageID + class columns, or .npy + ``ids``)."""
    path = Path(path)
    reader = PROB_READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"path: {path} has suffix {path.suffix!r}; probability files are {sorted(PROB_READERS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such probability file")
    file_ids, probs = reader(path, ids)
    return ProbTable(file_ids, probs, source=str(path))


def save_probs(path: str | os.PathLike, ids: Sequence[str], probs: np.ndarray) -> Path:
    """Write ids + probabilities as .npz (or .csv), atomically, so ensembles can align them later."""
    table = ProbTable(list(ids), probs, source=str(path))
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return atomic_save(path, lambda tmp: np.savez(tmp, ids=np.array(table.ids), probs=table.probs))
    if path.suffix.lower() == ".csv":
        frame = pd.DataFrame(table.probs, columns=[str(c) for c in range(table.probs.shape[1])])
        frame.insert(0, "ImageID", table.ids)
        return atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))
    raise ValueError(f"path: save probabilities as .npz or .csv, got {path.suffix!r}")
