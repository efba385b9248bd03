"""`plan` for every shipped profile on this CPU: a figure for every stage (work, disk, memory and a
time, or the time marked as not measurable here), and `run` prints the plan before the first stage."""
from __future__ import annotations

from pathlib import Path

import pytest

from mlc_utils.study.params import load_params
from mlc_utils.study.plan import make_plan

PROFILES = sorted((Path(__file__).resolve().parent.parent / "params").glob("*.yaml"))


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_plan_of_every_profile_has_a_figure_for_every_stage(path, capsys):
    from mlc_utils.study.plan import cli
    params = load_params(path)
    gpu = params.image.gpus > 0
    # rows as the competition's, a small share of them for the CPU calibrations to stay short
    assert cli(["--params", str(path), "--rows", "3000/1000"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "3,000 labelled and 1,000 test rows (--rows)" in lines[0]
    for stage in params.stages:
        [row] = [line for line in lines if line.split()[:1] == [stage]]
        assert " disk " in row and "peak memory" in row and " time " in row, row
        time_text = row.split(" time ", 1)[1].split(",")[0]
        assert time_text.startswith("not measurable here") if gpu and stage in ("image", "ablation") else \
            any(ch.isdigit() for ch in time_text) or time_text.startswith("not measurable here"), row
    assert lines[-1].lstrip().startswith("total")


def test_the_gpu_profile_checkpoints_every_swin_it_trains():
    """Swin-L and Swin-V2-L with AdamW: 2.4 GB a checkpoint, last.pt and best.pt, three trainings."""
    params = load_params(Path(__file__).resolve().parent.parent / "params" / "comp5329-gpu.yaml")
    plan = make_plan(params, rows=(30_000, 10_000), calibration=False)
    image = next(s for s in plan.stages if s.stage == "image")
    assert [round(t.checkpoint_bytes / 1e9, 1) for t in image.trainings] == [2.4, 2.4]
    assert 14e9 < plan.disk_bytes < 15e9 and plan.seconds is None


def test_run_prints_the_plan_before_the_first_stage(tiny_data):
    from mlc_utils.run.pipeline import _print_plan
    params = load_params(None, {"data_dir": str(tiny_data), "stages": ["eda", "split"]})
    lines = []
    plan = _print_plan(params, params.stages, Path("."), lines.append)
    assert lines[0].startswith("plan of run 'demo'") and "40 labelled and 10 test rows" in lines[0]
    assert [line.split()[0] for line in lines[1:] if line.startswith("  ") and not line.startswith("   ")] == \
        ["eda", "split", "total"]
    assert plan.stage_seconds("split") is not None
