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
    ("caption: {members: [frozen_encoder, bert]}\n", [], "caption.members[1]: 'bert' is not one of 'finetune' | 'frozen_encoder' | 'tfidf'"),
    ("caption: {members: []}\n", [], "caption.members: name at least one of ['finetune', 'frozen_encoder', 'tfidf']"),
    ("caption: {members: [tfidf, tfidf]}\n", [], "caption.members: repeated (got ['tfidf', 'tfidf'])"),
    ("caption: {tfidf_c: 0}\n", [], "caption.tfidf_c: must be > 0 (got 0"),
    ("caption: {head_train: {lr: -1}}\n", [], "caption.head_train"),
    ("image:\n  models:\n    - {name: resnet18, head: replace, global_pool: mean}\n", [],
     "image.models[0].global_pool: must be one of"),
    ("image:\n  models:\n    - {name: resnet18, global_pool: catavgmax}\n", [],
     "image.models[0].global_pool: applies to head: replace"),
    ("image:\n  models:\n    - {name: resnet18, head: class_attention, global_pool: avg}\n", [],
     "image.models[0].global_pool: applies to head: replace (the class_attention head"),
    ("image:\n  models:\n    - {name: resnet18, head: class_attention, attention_grid: 0}\n", [],
     "image.models[0].attention_grid: must be an integer >= 1 (got 0)"),
    ("image:\n  models:\n    - {name: resnet18, head: attention}\n", [],
     "image.models[0].head: 'attention' is not one of"),
    ("image:\n  models:\n    - {name: resnet18, crop_mode: fill}\n", [], "image.models[0].crop_mode: 'fill' is not one of"),
    ("split: {folds: 1}\n", [], "split.folds: 0 (holdout only) or the number of cross-validation folds, >= 2 (got 1)"),
    ("stages: [split]\nsplit: {folds: 5}\nfusion: {mode: end_to_end}\n", [], "fusion.mode: end_to_end is not cross-validated"),
    ("stages: [split]\nsplit: {folds: 5}\nfusion: {fusion_input: features}\n", [], "fusion.fusion_input: the heads read out-of-fold"),
    ("image:\n  models:\n    - {name: resnet18}\nensemble: {members: [resnet18, 'fusion:concatt']}\n", [],
     "ensemble.members[1]: 'fusion:concatt' is not a member these stages save"),
    ("image:\n  models:\n    - {name: resnet18, label: r18}\nensemble: {members: [r19]}\n", [],
     "(did you mean 'r18'?)"),
    ("image: {models: [{name: resnet18}]}\nfusion: {mode: end_to_end}\nensemble: {members: ['fusion:concat']}\n", [], "(did you mean 'fusion:concat-e2e'?)"),
    ("image: {models: [{name: resnet18}]}\ncaption: {members: [frozen_encoder]}\nensemble: {members: ['caption:all-MiniLM-L6-v2']}\n", [],
     "(did you mean 'caption:all-MiniLM-L6-v2-frozen_encoder'?)"),
])
def test_bad_params_name_the_parameter(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ParamError) as info:
        load_params(path, overrides)
    assert message in str(info.value) and str(path) in str(info.value)


def test_ensemble_members_are_checked_against_the_names_the_stages_give(tmp_path):
    """Every name the image, caption and fusion stages save is accepted (the caption stage names its
    members with the same ``caption_member_name``)."""
    from mlc_utils.study.params import ensemble_candidates
    path = tmp_path / "p.yaml"
    path.write_text("image:\n  models:\n    - {name: resnet18}\n    - {name: resnet34, label: r34}\n"
                    "caption: {model_name: /models/bert-base, members: [finetune, frozen_encoder, tfidf]}\n")
    params = load_params(path)
    names = ensemble_candidates(params)
    assert names == ["resnet18", "r34", "caption:bert-base", "caption:bert-base-frozen_encoder", "caption:tfidf",
                     "fusion:concat", "fusion:bilinear", "late fusion"]
    assert load_params(path, [f"ensemble.members={names}"]).ensemble.members == names


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


@pytest.mark.parametrize("name", ["comp5329-gpu.yaml", "comp5329-gpu-timm.yaml"])
def test_gpu_profiles_pass_preflight_but_for_the_offline_weights(name, monkeypatch):
    """Offline, on a machine with the profile's two GPUs, the only problems are the hub weights, each with
    the offline choices."""
    import torch

    from mlc_utils.models import weights as weights_module
    from mlc_utils.study import preflight as preflight_module
    from mlc_utils.study.preflight import preflight
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights_module, "_hub_cached_file", lambda arch: None)
    # and a disk with room: the profile writes about 17 GB, more than some machines have free
    monkeypatch.setattr(preflight_module, "_free_bytes", lambda path: (Path(path), 2**40, 0))
    params = load_params(PARAMS_DIR / name)
    problems = preflight(params, params.stages)
    assert [p.split(":")[0] for p in problems] == ["image.models[swin-large-224].pretrained",
                                                   "image.models[swinv2-large-256].pretrained",
                                                   "caption.model_name"] or \
        [p.split(":")[0] for p in problems] == ["image.models[swin-large-224].pretrained",
                                                "image.models[swinv2-large-256].pretrained"]  # BERT cached
    assert all("offline choices" in p for p in problems)


def test_gpu_profile_is_the_papers_run():
    """The appendix's numbers: 20 epochs, lr 1e-5, StepLR step 8 gamma 0.5 per epoch, mixup 0.4, seed 3407,
    Swin-L 224 (global batch 32) and Swin-V2-L 256 (global batch 8) on 2 GPUs."""
    from mlc_utils.study.image import image_train_config

    class Ctx:  # what image_train_config reads
        params = load_params(PARAMS_DIR / "comp5329-gpu.yaml")
    by_label = {m.label: m for m in Ctx.params.image.models}
    for label, arch, size, batch in [("swin-large-224", "swin_large_patch4_window7_224", 224, 32),
                                     ("swinv2-large-256", "swinv2_large_window12to16_192to256", 256, 8)]:
        spec = by_label[label]
        cfg = image_train_config(Ctx, spec)
        assert spec.name.split(".")[0] == arch and spec.img_size == size and spec.head == "extra_linear"
        assert cfg.batch_size * Ctx.params.image.gpus == batch
        assert (cfg.epochs, cfg.lr, cfg.scheduler, cfg.schedule_unit, cfg.step_size, cfg.gamma) == \
            (20, 1e-5, "step", "epoch", 8, 0.5)
        assert (cfg.mixup, cfg.mixup_alpha, cfg.seed, cfg.freeze_epochs, cfg.label_smoothing) == \
            (True, 0.4, 3407, 0, 0.0)


@pytest.mark.parametrize("launcher,gpus,processes", [("auto", 0, 0), ("auto", 1, 0), ("auto", 2, 2),
                                                     ("torchrun", 0, 1), ("torchrun", 1, 1), ("torchrun", 4, 4)])
def test_image_launcher_sends_one_gpu_through_torchrun_on_request(launcher, gpus, processes):
    params = load_params(PARAMS_DIR / "demo.yaml", {"image.launcher": launcher, "image.gpus": gpus})
    assert params.image.torchrun_processes() == processes


def test_image_launcher_typo_names_the_parameter():
    with pytest.raises(ParamError, match="image.launcher"):
        load_params(PARAMS_DIR / "demo.yaml", {"image.launcher": "slurm"})


def _profile_table() -> dict[str, str]:
    """The README's "Parameter profiles" table: params file -> what its row says."""
    import re
    readme = (PARAMS_DIR.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Parameter profiles", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `params/([\w.-]+\.yaml)` \| (.*) \|$", section, re.M)}


#: how the README says an image model's head, by (head, global_pool); {g}: its attention_grid
HEAD_WORDS = {("class_attention", ""): "class-attention head over a {g}x{g} grid",
              ("replace", "catavgmax"): "average+max pooling",
              ("extra_linear", ""): "a linear layer after the ImageNet classifier"}
NUMBERS = {7: "seven", 8: "eight"}


def _quotes(params, row: str) -> tuple[list[str], list[str]]:
    """(phrases a profile's row must hold, phrases it must not), from the loaded params: a row that
    speaks of a subject (the image models, the caption members, the schedule, the ensemble) must
    quote it as the file has it, and no row may name an image head the file does not use."""
    must, must_not = [], []
    if params.split.folds or "split.folds" in row:
        must.append(f"`split.folds: {params.split.folds}`")
    used = {(m.head, m.global_pool): m for m in params.image.models}
    for key, words in HEAD_WORDS.items():
        if key not in used:
            must_not.append(words.split("{")[0])
        elif " px" in row or " 224 " in row:
            must.append(words.format(g=used[key].attention_grid))
    if " px" in row or " 224 " in row:  # the row describes the image models: their sizes and crops
        for model in params.image.models:
            must.append(f"{model.img_size}" + (" px, squashed" if model.crop_mode == "squash" else ""))
    if "caption" in row:
        (must if "frozen_encoder" in params.caption.members else must_not).append("cached MiniLM caption embeddings")
        (must if "tfidf" in params.caption.members else must_not).append("TF-IDF")
    if "StepLR" in row:
        train = params.image.train
        must += [f"{params.image.gpus * m.train.batch_size}" for m in params.image.models]
        must += [f"{train.epochs} epochs", f"StepLR every {train.step_size} epochs x {train.gamma}",
                 f"mixup {train.mixup_alpha}", f"seed {params.seed}", f"({params.image.gpus} GPUs"]
    if "weighted ensemble" in row:
        must.append(f"{params.ensemble.weights}-weighted ensemble")
    return must, must_not


def test_readme_profile_table_quotes_the_params_files():
    """Every profile is in the README's table, and what its row quotes (folds, image head and size,
    caption members, the GPU run's schedule) is what the file loads to."""
    rows = _profile_table()
    assert set(rows) == {p.name for p in PARAMS_DIR.glob("*.yaml")}
    problems = []
    for name, row in rows.items():
        params = load_params(PARAMS_DIR / name)
        must, must_not = _quotes(params, row)
        if name == "demo.yaml":
            must.append(f"all {NUMBERS[len(params.stages)]} stages")
        problems += [f"{name}: the README row lacks {p!r}" for p in must if p not in row]
        problems += [f"{name}: the README row says {p!r}, which the file does not" for p in must_not if p in row]
    assert not problems, "\n".join(problems)
