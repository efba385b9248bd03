"""`plan` for every shipped profile on this CPU: a figure for every stage (work, disk, memory and a
time, or the time marked as not measurable here), and `run` prints the plan before the first stage.
Calibration is paid once a machine (a cache), and `run` plans only the stages it will run."""
from __future__ import annotations

import json
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
        [row] = [line for line in lines if line.split()[:2] == [stage, "time"]]  # not its work line
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
    stage_lines = [line for line in lines[1:] if line.startswith("  ") and not line.startswith("   ")
                   and not line.startswith("  without tcmalloc")]   # that note shows on a machine without it
    assert [line.split()[0] for line in stage_lines] == ["eda", "split", "total"]
    assert plan.stage_seconds("split") is not None


def _tiny_params(tiny_data, root: Path, **overrides):
    return load_params(None, {"data_dir": str(tiny_data), "stages": ["eda", "split", "image", "ablation"],
                              "image.models": [{"name": "test_vit", "img_size": 32, "pretrained": False}],
                              "image.train.epochs": 1, "ablation.switches": ["tta"], **overrides})


def test_a_second_plan_on_the_same_machine_calibrates_nothing(tiny_data, tmp_path, monkeypatch):
    from mlc_utils.study import plan as planning
    params = _tiny_params(tiny_data, tmp_path)
    first = make_plan(params, tmp_path)
    cached = planning.calibration_path(params, tmp_path)
    assert cached.is_file() and first.stage_seconds("image") > 0
    entries = json.loads(cached.read_text())
    assert any(json.loads(key).get("decode") for key in entries), "the images' decoding was timed"

    calls = []

    def timed(*args, **kwargs):
        calls.append(args)
        return 0.01
    monkeypatch.setattr(planning.calibration, "_time_batches", timed)
    monkeypatch.setattr(planning.calibration, "_time_decode", timed)
    second = make_plan(params, tmp_path)
    assert calls == [] and [s.seconds for s in second.stages] == [s.seconds for s in first.stages]
    # another training batch size is another calibration of the training batch only
    make_plan(_tiny_params(tiny_data, tmp_path, **{"image.train.batch_size": 4}), tmp_path)
    assert len(calls) == 1 and calls[0][2] is True


def test_the_ablation_only_predicts_for_tta_and_every_stage_pays_its_overhead(tiny_data, tmp_path):
    from mlc_utils.study.plan import STAGE_OVERHEAD_S
    plan = make_plan(_tiny_params(tiny_data, tmp_path), tmp_path, calibration=False)
    ablation = next(s for s in plan.stages if s.stage == "ablation")
    assert [t.kind for t in ablation.trainings] == ["image-predict"] and ablation.trainings[0].epochs == 0
    assert all(s.nominal_s >= STAGE_OVERHEAD_S for s in plan.stages)


def _all_skipped_project(tmp_path, tiny_data, monkeypatch):
    """A project whose stages all ran before with the keys a run computes now (faked: no notebook runs)."""
    from conftest import make_project

    from mlc_utils.run import pipeline, report
    root, params_file = make_project(tmp_path, tiny_data)
    monkeypatch.setattr(pipeline, "stage_key", lambda study, stage, data_fp: f"key-{stage}")
    monkeypatch.setattr(report, "write_index", lambda study, results: root / "index.html")
    monkeypatch.setattr(report, "write_pdf", lambda index, log: None)
    for stage in ("eda", "split"):
        paths = pipeline.Study(load_params(params_file), {}, root).paths
        paths.stage_dir(stage).mkdir(parents=True, exist_ok=True)
        (paths.stage_dir(stage) / "stage.json").write_text(json.dumps({"key": f"key-{stage}", "status": "ok"}))
        paths.notebook_out(stage).parent.mkdir(parents=True, exist_ok=True)
        paths.notebook_out(stage).write_text("{}")
    return root, params_file


def test_a_run_with_every_stage_unchanged_prints_no_plan_and_calibrates_nothing(tmp_path, tiny_data, monkeypatch):
    from mlc_utils.run.pipeline import run_study
    from mlc_utils.study import plan as planning
    monkeypatch.delenv("MLC_PLAN", raising=False)
    root, params_file = _all_skipped_project(tmp_path, tiny_data, monkeypatch)
    monkeypatch.setattr(planning, "calibrate", lambda *a, **k: pytest.fail("calibrated for a run with nothing to run"))
    logs = []
    results = run_study(str(params_file), root=root, log=logs.append)
    assert [r.status for r in results] == ["skipped", "skipped"]
    assert not any(line.startswith("plan of run") for line in logs), logs


def test_run_plans_only_the_stages_it_will_run_and_mlc_plan_off_switches_the_plan_off(tmp_path, tiny_data,
                                                                                        monkeypatch):
    from mlc_utils.run import pipeline
    root, params_file = _all_skipped_project(tmp_path, tiny_data, monkeypatch)
    study = pipeline.Study(load_params(params_file), {}, root)
    (study.paths.stage_dir("split") / "stage.json").unlink()     # split changed, eda did not
    assert pipeline.stages_to_run(study, ["eda", "split"], {}) == ["split"]
    assert pipeline.stages_to_run(study, ["eda", "split"], {}, force=True) == ["eda", "split"]
    planned = []
    monkeypatch.setattr(pipeline, "_print_plan", lambda params, chosen, root, log: planned.append(chosen))
    monkeypatch.setattr(pipeline, "execute_stage", lambda study, stage, key, log, **kw: pipeline.StageResult(
        stage, "ran", 0.0, study.paths.notebook_out(stage)))
    monkeypatch.delenv("MLC_PLAN", raising=False)
    pipeline.run_study(str(params_file), root=root, log=lambda line: None)
    assert planned == [["split"]]
    monkeypatch.setenv("MLC_PLAN", "off")
    pipeline.run_study(str(params_file), root=root, log=lambda line: None)
    monkeypatch.delenv("MLC_PLAN")
    pipeline.run_study(str(params_file), root=root, log=lambda line: None, plan=False)   # run --no-plan
    assert planned == [["split"]]


def test_calibrations_on_a_cpu_are_keyed_by_the_allocator():
    import torch

    from mlc_utils.core.allocator import loaded_allocator
    from mlc_utils.study.plan import machine_facts
    assert machine_facts(torch.device("cpu"))["allocator"] == loaded_allocator()


def test_the_plan_reads_each_stage_s_training_settings_where_the_stage_does():
    """One merge of training settings: the fusion heads' epochs in the plan are those the stage trains
    with (its defaults, then ``fusion.train``), not a second default of the plan's."""
    from mlc_utils.study.plan import stage_plans
    demo = Path(__file__).resolve().parent.parent / "params" / "demo.yaml"
    for given, expected in ((["fusion.train.epochs=null"], 60), (["fusion.train.epochs=7"], 7)):
        params = load_params(demo, given)
        epochs = params.fusion.training(**params.training_defaults()).epochs
        assert epochs == expected
        fusion, = stage_plans(params, 1000, 100, ["fusion"])
        assert f"x {epochs} epochs" in fusion.work


def test_the_holdout_s_fusion_inputs_are_forward_passes_of_the_fused_models():
    """On the holdout the fusion heads read a fine-tuned image model's and the caption encoder's outputs,
    computed by one pass over every row (``study.fusion.sub_model_outputs``): the plan counts both; out of
    fold (``split.folds``) the heads read saved probabilities and no pass runs."""
    from mlc_utils.study.plan import stage_plans
    demo = Path(__file__).resolve().parent.parent / "params" / "demo.yaml"
    fusion, = stage_plans(load_params(demo), 1000, 100, ["fusion"])
    passes = {t.kind: t for t in fusion.trainings}
    assert set(passes) == {"image-predict", "caption-predict"}
    assert all(t.eval_rows == 1100 and t.epochs == 0 and t.build is not None for t in passes.values())
    assert "lite0-finetune" in passes["image-predict"].label   # as large as lite0-scratch: the first is planned
    assert "predicts 1,100 images" in fusion.work and "predicts 1,100 captions" in fusion.work
    named, = stage_plans(load_params(demo, ["fusion.image_model=lite0-scratch"]), 1000, 100, ["fusion"])
    assert [t.label for t in named.trainings if t.kind == "image-predict"] == ["fusion input: lite0-scratch"]
    folds, = stage_plans(load_params(demo, ["split.folds=5"]), 1000, 100, ["fusion"])
    assert folds.trainings == []


@pytest.mark.parametrize("allocator", ["tcmalloc", "glibc, tuned"])
def test_the_first_line_names_the_allocator_and_without_tcmalloc_what_it_costs(allocator, tiny_data, tmp_path,
                                                                               monkeypatch):
    from mlc_utils.core.allocator import TCMALLOC_INSTALL
    from mlc_utils.study.plan import calibration
    real = calibration.machine_facts
    monkeypatch.setattr(calibration, "machine_facts", lambda device: {**real(device), "allocator": allocator})
    # a quarter of the timed batches' CPU time in the kernel (a short calibration may see none in ticks)
    monkeypatch.setattr(calibration._KernelShare, "__exit__", lambda self, *exc: setattr(self, "share", 0.25))
    plan = make_plan(_tiny_params(tiny_data, tmp_path), tmp_path)
    lines = plan.render().splitlines()
    assert lines[0].endswith(f"device cpu, allocator {allocator}")
    if allocator == "tcmalloc":
        assert plan.allocator_saving_s == 0 and not any("without tcmalloc" in line for line in lines)
    else:   # the calibration's own kernel time says what tcmalloc would save, and how to install it
        assert plan.allocator_saving_s > 0
        assert lines[1].startswith("  without tcmalloc: the calibration's batches spent CPU time in the kernel")
        saved = float(lines[1].split("(")[1].split("%")[0])
        assert 0 < saved <= 25 and TCMALLOC_INSTALL in lines[1]      # no more than the kernel's share


@pytest.mark.skipif(not __import__("mlc_utils.core.openvino", fromlist=["available"]).available(),
                    reason="openvino is not installed")
@pytest.mark.parametrize("runtime", ["auto", "torch"])
def test_a_large_feature_pass_is_timed_on_the_runtime_the_run_will_use(runtime, tiny_data, tmp_path):
    params = _tiny_params(tiny_data, tmp_path, **{
        "stages": ["image"], "inference.runtime": runtime,
        "image.models": [{"name": "test_resnet", "img_size": 32, "pretrained": False, "mode": "frozen_backbone",
                          "head": "replace"}]})
    [image] = make_plan(params, tmp_path, rows=(3000, 1000)).stages
    [training] = image.trainings
    assert training.runtime == ("openvino" if runtime == "auto" else "torch")
    assert ("rows once (OpenVINO)" in image.work) == (runtime == "auto")
