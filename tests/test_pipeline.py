"""The papermill chain: reports, skipping unchanged stages, failures named, params errors."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest import make_project

from mlc_utils.run.pipeline import run_study
from mlc_utils.study.params import ParamError

PROJECT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_chain_reports_and_skips(tmp_path, tiny_data):
    root, params = make_project(tmp_path, tiny_data)
    logs = []
    results = run_study(str(params), root=root, log=logs.append)
    assert [r.status for r in results] == ["ran", "ran"], logs
    report = root / "reports" / "t"
    for name in ("index.html", "01_eda.html", "01_eda.full.html", "02_split.html", "provenance.json"):
        assert (report / name).is_file(), name
    index = (report / "index.html").read_text()
    assert "01_eda.html" in index and "02_split.html" in index and "train rows: " in index
    assert "data:image/png;base64" in index
    split = (root / "runs" / "t" / "split" / "split.csv").read_text().splitlines()
    assert split[0] == "ImageID,fold" and len(split) == 41
    # the report version has no code, the full one does
    assert "open_stage" not in (report / "01_eda.html").read_text()
    assert "open_stage" in (report / "01_eda.full.html").read_text()

    again = run_study(str(params), root=root, log=logs.append)
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert any("unchanged" in line for line in logs)

    changed = run_study(str(params), ["split.val_fraction=0.3"], root=root, log=logs.append)
    assert [r.status for r in changed] == ["skipped", "ran"]
    forced = run_study(str(params), ["split.val_fraction=0.3"], only=["eda"], force=True, root=root, log=logs.append)
    assert [r.status for r in forced] == ["ran"]


def test_failing_cell_stops_chain_and_names_it(tmp_path, tiny_data):
    root, params = make_project(tmp_path, tiny_data)
    nb_path = root / "notebooks" / "01_eda.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("raise RuntimeError('boom in eda')"))
    nbformat.write(nb, nb_path)
    results = run_study(str(params), root=root, log=lambda *_: None)
    assert [r.status for r in results] == ["failed", "not run"]
    assert "boom in eda" in results[0].error and "01_eda.ipynb" in results[0].error
    assert (root / "reports" / "t" / "01_eda.html").is_file()  # partial report still rendered
    assert not (root / "runs" / "t" / "eda" / "stage.json").exists()  # a failed stage is never trusted
    assert "boom in eda" in (root / "reports" / "t" / "index.html").read_text()


def test_params_errors(tmp_path, tiny_data):
    root, params = make_project(tmp_path, tiny_data)
    with pytest.raises(ParamError, match="unknown parameter 'eda.n_exampels'"):
        run_study(str(params), ["eda.n_exampels=3"], root=root)
    with pytest.raises(ParamError, match="unknown stage"):
        run_study(str(params), only=["edaa"], root=root)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        run_study(str(params), ["data_dir=/no/such/folder"], root=root)


def test_downstream_needs_upstream(tmp_path, tiny_data):
    root, params = make_project(tmp_path, tiny_data, stages="[eda, split, image]")
    results = run_study(str(params), only=["image"], root=root, log=lambda *_: None)
    assert results[0].status == "failed" and "needs split" in results[0].error
