"""The committed notebooks: stored without outputs, one parameters cell that papermill reads cleanly."""
from __future__ import annotations

import logging
from pathlib import Path

import nbformat
import pytest
from papermill.translators import PythonTranslator

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 7


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_parameters_cell_is_read_without_a_warning(path, caplog):
    """papermill skips (with only a log line) any parameter line holding more than one '='."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters'"
    with caplog.at_level(logging.WARNING, logger="papermill"):
        names = {p.name for p in PythonTranslator.inspect(cells[0])}
    assert not caplog.records, f"{path.name}: " + "; ".join(r.getMessage() for r in caplog.records)
    assert {"params_file", "overrides", "project_root"} <= names, f"{path.name}: parameters {sorted(names)}"
