from __future__ import annotations

from pathlib import Path

import pytest

from mlc_utils.study.params import ParamError, load_params, parse_override

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"


@pytest.mark.parametrize("name", sorted(p.name for p in PARAMS_DIR.glob("*.yaml")))
def test_shipped_params_files_load(name):
    params = load_params(PARAMS_DIR / name)
    assert params.run and params.stages


def test_overrides_and_types(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("run: x\nsplit:\n  val_fraction: 0.25\nimage:\n  models:\n    - name: resnet18\n      train: {lr: 1e-3}\n")
    params = load_params(path, ["data_dir=/elsewhere", "split.method=random", "seed=7"])
    assert params.data_dir == "/elsewhere" and params.split.method == "random" and params.seed == 7
    assert params.split.val_fraction == 0.25 and params.image.models[0].label == "resnet18"


@pytest.mark.parametrize("yaml_text, overrides, message", [
    ("split:\n  val_fracton: 0.2\n", [], "unknown parameter 'split.val_fracton'; did you mean 'val_fraction'?"),
    ("", ["spilt.method=random"], "unknown parameter 'spilt'; did you mean 'split'?"),
    ("threshold: 1.5\n", [], "threshold: must be in (0, 1) (got 1.5)"),
    ("seed: many\n", [], "seed: expected an integer, got 'many'"),
    ("split:\n  method: stratified\n", [], "split.method: 'stratified' is not one of 'iterative' | 'random'"),
    ("image:\n  models:\n    - {name: resnet18, img_size: 8}\n", [], "image.models[0].img_size: must be >= 16"),
    ("stages: [eda, splits]\n", [], "stages[1]: 'splits' is not one of"),
    ("run: [a]\n", [], "run: expected a string"),
    ("split: 3\n", [], "split: expected a mapping"),
    ("image:\n  models:\n    - {name: resnet18, head: replace, global_pool: mean}\n", [],
     "image.models[0].global_pool: must be one of"),
    ("image:\n  models:\n    - {name: resnet18, global_pool: catavgmax}\n", [],
     "image.models[0].global_pool: applies to head: replace"),
    ("image:\n  models:\n    - {name: resnet18, crop_mode: fill}\n", [], "image.models[0].crop_mode: 'fill' is not one of"),
    ("split: {folds: 1}\n", [], "split.folds: 0 (holdout only) or the number of cross-validation folds, >= 2 (got 1)"),
    ("stages: [split]\nsplit: {folds: 5}\nfusion: {mode: end_to_end}\n", [], "fusion.mode: end_to_end is not cross-validated"),
    ("stages: [split]\nsplit: {folds: 5}\nfusion: {fusion_input: features}\n", [], "fusion.fusion_input: the heads read out-of-fold"),
    ("stages: [split]\nsplit: {folds: 5}\nimage: {gpus: 2}\n", [], "image.gpus: 2 GPUs (torchrun) trains on the holdout"),
])
def test_bad_params_name_the_parameter(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ParamError) as info:
        load_params(path, overrides)
    assert message in str(info.value) and str(path) in str(info.value)


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run: demo\nsplit: [unclosed\n")
    with pytest.raises(ParamError, match=r"bad.yaml:\d+: not valid YAML"):
        load_params(path)


def test_parse_override():
    assert parse_override("image.train.epochs=3") == ("image.train.epochs", 3)
    assert parse_override("data_dir=../x") == ("data_dir", "../x")
    with pytest.raises(ParamError, match="expected KEY=VALUE"):
        parse_override("epochs")
