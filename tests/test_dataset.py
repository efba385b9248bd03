"""The `validate` command: every problem listed, counts printed, non-zero exit."""
from __future__ import annotations

import subprocess
import sys

from mlc_utils.data.folder import load_study_data, validate_folder


def test_valid_folder(tiny_data):
    report = validate_folder(tiny_data, progress=False)
    assert report.ok, report.render()
    assert report.counts["train rows"] == 40 and report.counts["test rows"] == 10
    assert report.counts["bad image files"] == 0
    data = load_study_data(tiny_data)
    assert data.targets().shape == (40, 20)


def test_every_problem_listed(tiny_data):
    (tiny_data / "data" / "3.jpg").unlink()
    (tiny_data / "data" / "5.jpg").write_bytes((tiny_data / "data" / "6.jpg").read_bytes()[:200])  # truncated
    (tiny_data / "data" / "45.jpg").write_bytes(b"not an image")
    text = (tiny_data / "train.csv").read_text()
    (tiny_data / "train.csv").write_text(text + '99.jpg,1 40,"bad label"\n')
    report = validate_folder(tiny_data, progress=False)
    rendered = report.render()
    assert not report.ok
    assert "3.jpg: missing" in rendered and "5.jpg: cannot decode" in rendered
    assert "45.jpg: not an image" in rendered and "outside the label space" in rendered
    assert "test.csv:8" in rendered  # 45.jpg: 6th test row, line 8 (row 42 spans two lines)


def test_cli_exit_codes(tiny_data, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "mlc_utils", "validate", "--data", str(tiny_data)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "no problems found" in ok.stdout and "train rows: 40" in ok.stdout
    missing = subprocess.run([sys.executable, "-m", "mlc_utils", "validate", "--data", str(tmp_path / "nope")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "does not exist" in missing.stdout


def test_real_pack_validates(real_data):
    report = validate_folder(real_data, progress=False)
    assert report.ok, report.render()
    assert report.counts["train rows"] == 10_000 and report.counts["test rows"] == 1_000
    assert report.counts["absent classes"] == "0, 12"


def _header_only(path):
    path.write_text(path.read_text().splitlines()[0] + "\n")


def test_a_table_with_only_its_header_is_a_named_problem(tiny_data):
    """A header-only train.csv reads as valid; validate names it and exits 1, and so for test.csv."""
    _header_only(tiny_data / "train.csv")
    report = validate_folder(tiny_data, progress=False)
    assert not report.ok and report.counts["train rows"] == 0
    assert any("train.csv: no labelled rows" in p for p in report.problems), report.render()
    done = subprocess.run([sys.executable, "-m", "mlc_utils", "validate", "--data", str(tiny_data), "--no-images"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "no labelled rows" in done.stdout
    _header_only(tiny_data / "test.csv")
    assert any("test.csv: no rows to predict" in p for p in validate_folder(tiny_data, progress=False).problems)
    assert not any("test.csv" in p for p in validate_folder(tiny_data, progress=False, need_test=False).problems)


def test_preflight_refuses_a_study_on_empty_tables(tiny_data):
    from mlc_utils.study.params import load_params
    from mlc_utils.study.preflight import preflight
    params = load_params(None, {"data_dir": str(tiny_data), "stages": ["eda", "split"]})
    assert preflight(params, params.stages) == []
    _header_only(tiny_data / "test.csv")
    assert preflight(params, params.stages) == []   # the data stages predict nothing
    problems = preflight(params, ["eda", "split", "caption"])
    assert len(problems) == 1 and problems[0].startswith("data_dir: ") and "test.csv: no rows to predict" in problems[0]
    _header_only(tiny_data / "train.csv")
    assert "train.csv: no labelled rows" in preflight(params, params.stages)[0]
