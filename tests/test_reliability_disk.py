"""Reliability, a full disk: every writer says so in one line (the file, the space it needs) and leaves
no half-written file where a later run would trust it.

A real full disk is a small tmpfs mounted for the test (root with the right to mount; skipped, with the
reason, elsewhere): torch.save, np.save and joblib each report a short write in words of their own, and
the atomic writer (core.io) turns every one into :class:`DiskFullError`. A stage's cell that fills the
disk ends the run with one line naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_project

from mlc_utils.core.io import DiskFullError, atomic_save, atomic_write_bytes, is_temporary, save_npy
from mlc_utils.data.split import load_split


@contextlib.contextmanager
def _disk(where: Path, mib: int):
    """A filesystem of ``mib`` MiB of its own (tmpfs) at ``where``, unmounted afterwards."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root and CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB disk."""
    with _disk(tmp_path / "disk", 2) as where:
        yield where


@pytest.fixture
def stage_disk(tmp_path):
    """An 8 MiB disk: enough for what the plan says a split stage writes (5 MiB), not for more."""
    with _disk(tmp_path / "disk", 8) as where:
        yield where


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if p.is_file() and is_temporary(p))


def _torch_save(path: Path, mib: float) -> None:
    import torch
    torch.save({"weights": torch.zeros(int(mib * 2**20 / 4))}, path)


def _joblib_dump(path: Path, mib: float) -> None:
    import joblib
    joblib.dump(np.zeros(int(mib * 2**20 / 8)), path)


@pytest.mark.parametrize("name, writer", [("last.pt", _torch_save),
                                          ("probs.npy", lambda path, mib: np.save(path, np.zeros(int(mib * 2**20 / 8)))),
                                          ("model.joblib", _joblib_dump)], ids=["torch.save", "np.save", "joblib.dump"])
def test_a_write_that_fills_the_disk_names_the_file_and_keeps_the_previous_one(small_disk, name, writer):
    target = small_disk / name
    atomic_save(target, lambda tmp: writer(tmp, 0.5))      # the previous epoch's file fits
    before = target.read_bytes()
    with pytest.raises(DiskFullError) as info:
        atomic_save(target, lambda tmp: writer(tmp, 4.0))  # the next one does not
    message = str(info.value)
    # at least what reached the disk before it filled (numpy, when it cannot allocate the file first, says
    # the size it wanted: "about")
    assert re.match(re.escape(f"no space left on the disk to write {target}: it needs ") + r"(more than|about) \d",
                    message), message
    assert re.search(r"\d+(\.\d)? (bytes|KiB|MiB) free there; free some space \(or move the run's folder\) and run again$",
                     message), message
    assert "\n" not in message and info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert info.value.needed > 1 * 2**20
    assert target.read_bytes() == before and _temporaries(small_disk) == []


def test_the_space_needed_is_the_previous_files_when_it_was_larger(small_disk):
    target = atomic_write_bytes(small_disk / "features.npy", b"x" * (1536 * 1024))   # 1.5 MiB in place
    with pytest.raises(DiskFullError, match=r"it needs about 1\.5 MiB"):
        save_npy(target, np.zeros(1536 * 1024 // 8 + 100))    # about as large: 0.5 MiB free
    assert target.read_bytes() == b"x" * (1536 * 1024) and _temporaries(small_disk) == []


def test_the_feature_cache_on_a_full_disk_keeps_a_consistent_entry(small_disk):
    """The cache's array and its JSON are two files: the array that does not fit is never published,
    so the entry read back is the earlier, consistent one."""
    from mlc_utils.train.features import FeatureCache
    cache = FeatureCache(small_disk / "features")
    key = {"arch": "a", "view": "center", "n": 1}
    cache.save(key, ["1.jpg"], [[1, 2]], np.ones((1, 8), dtype=np.float32))
    with pytest.raises(DiskFullError, match=r"features/a-center-.*\.npy"):
        cache.save(key, [f"{i}.jpg" for i in range(2**16)], [[1, 2]] * 2**16, np.ones((2**16, 8), dtype=np.float32))
    ids, stamps, array = cache.load(key)
    assert ids == ["1.jpg"] and array.shape == (1, 8) and _temporaries(small_disk) == []


def test_a_cell_that_fills_the_disk_ends_the_run_in_one_line(stage_disk, tiny_data, monkeypatch, capsys):
    """On a disk that holds the stage's planned 5 MiB, a cell writes 16 MiB."""
    import nbformat

    from mlc_utils.run import pipeline
    root, params = make_project(stage_disk, tiny_data, stages="[split]")
    shutil.rmtree(root / "notebooks")
    (root / "notebooks").mkdir()
    notebook = nbformat.read(Path(__file__).parent.parent / "notebooks" / "02_split.ipynb", as_version=4)
    notebook.cells = [c for c in notebook.cells if c.cell_type != "markdown"][:3]   # parameters, open_stage, split
    notebook.cells.append(nbformat.v4.new_code_cell(
        "from mlc_utils.core.io import save_npy\nimport numpy as np\n"
        "save_npy(ctx.stage_dir / 'big.npy', np.zeros(2**21))   # 16 MiB on an 8 MiB disk"))
    nbformat.write(notebook, root / "notebooks" / "02_split.ipynb")
    monkeypatch.setenv("MLC_MIN_FREE_MB", "0")
    monkeypatch.setattr(pipeline, "run_study", functools.partial(pipeline.run_study, root=root))
    monkeypatch.setattr("mlc_utils.run.report.write_pdf", lambda index, log=print: None)  # no PDF on this tiny disk
    assert pipeline.cli(["--params", str(params)]) == 1
    err = capsys.readouterr().err.strip().split("\n")
    big = root / "runs" / "t" / "split" / "big.npy"
    assert len(err) == 1 and err[0].startswith("mlc_utils run: stage 'split' failed after "), err
    assert re.search(r": runs/t/02_split.ipynb: cell \d+ raised DiskFullError: no space left on the disk to write "
                     + re.escape(f"{big}: it needs about 16 MiB, "), err[0]), err
    assert not big.exists() and not _temporaries(root / "runs")
    assert not (root / "runs" / "t" / "split" / "stage.json").exists()
    assert len(load_split(root / "runs" / "t" / "split" / "split.csv")) == 40   # what fitted is whole
