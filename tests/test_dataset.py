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
