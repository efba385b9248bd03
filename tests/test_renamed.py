"""Renamed words keep working: users' params files and saved checkpoints use the old ones.

Each old spelling loads as the new one, with a :class:`RenamedWarning` that names the new word, and
a file that gives a section under both names is an error naming both.
"""
from __future__ import annotations

import pytest
import torch

from mlc_utils.core.config import RenamedWarning
from mlc_utils.study.params import ParamError, load_params


def _params(tmp_path, text: str, overrides=()):
    path = tmp_path / "p.yaml"
    path.write_text(("" if "stages:" in text else "stages: [split, caption]\n") + text)
    return load_params(path, list(overrides))


def test_the_old_text_section_loads_as_caption_with_a_warning(tmp_path):
    with pytest.warns(RenamedWarning, match="'text' is the old name of 'caption'"):
        params = _params(tmp_path, "text: {max_length: 20, members: [tfidf]}\n")
    assert params.caption.max_length == 20 and params.caption.members == ["tfidf"]


def test_the_warning_names_the_file_and_the_line_that_loaded_it(tmp_path):
    with pytest.warns(RenamedWarning) as caught:
        _params(tmp_path, "text: {max_length: 20}\n", ["text.pooling=cls"])
    messages = [str(w.message) for w in caught]
    assert messages == [f"{tmp_path / 'p.yaml'}: text: 'text' is the old name of 'caption'; it still works, but write 'caption'",
                        "--set text.pooling: 'text' is the old name of 'caption'; it still works, but write 'caption'"]
    assert {w.filename for w in caught} == {__file__}   # where the params were loaded, not inside mlc_utils


def test_a_file_with_both_sections_names_both(tmp_path):
    with pytest.raises(ParamError, match="text and caption: both are given"):
        _params(tmp_path, "text: {max_length: 20}\ncaption: {max_length: 30}\n")


def test_an_old_set_key_lands_in_the_caption_section(tmp_path):
    with pytest.warns(RenamedWarning, match=r"--set text.max_length: 'text' is the old name of 'caption'"):
        params = _params(tmp_path, "caption: {members: [tfidf]}\n", ["text.max_length=24"])
    assert params.caption.max_length == 24 and params.caption.members == ["tfidf"]


def test_the_old_stage_name_in_stages(tmp_path):
    with pytest.warns(RenamedWarning, match=r"stages\[2\]: 'text' is the old name of 'caption'"):
        params = _params(tmp_path, "stages: [eda, split, text]\n")
    assert params.stages == ["eda", "split", "caption"]


def test_a_caption_checkpoint_saved_with_kind_text_loads(tmp_path):
    from mlc_utils.models.caption import CaptionClassifier, create_caption_model
    from mlc_utils.models.checkpoint import load_checkpoint, make_checkpoint
    model = create_caption_model(pretrained=False, max_length=12, num_classes=3)
    checkpoint = make_checkpoint(model)
    checkpoint["spec"]["kind"] = "text"   # as it was saved before the rename
    torch.save(checkpoint, tmp_path / "best.pt")
    loaded, _ = load_checkpoint(tmp_path / "best.pt")
    assert isinstance(loaded, CaptionClassifier) and loaded.spec["kind"] == "caption"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_fusion_spec_saved_with_text_keys_loads(tmp_path):
    from mlc_utils.models import current_spec
    from mlc_utils.models.checkpoint import load_checkpoint, make_checkpoint
    from mlc_utils.models.fusion import PrecomputedFusion
    head = PrecomputedFusion("bilinear", 4, 3, num_classes=3)
    checkpoint = make_checkpoint(head)
    checkpoint["spec"]["text_dim"] = checkpoint["spec"].pop("caption_dim")
    torch.save(checkpoint, tmp_path / "best.pt")
    loaded, _ = load_checkpoint(tmp_path / "best.pt")
    assert loaded.spec == head.spec
    old = {"kind": "fusion", "image": {"kind": "image"}, "text": {"kind": "text", "num_classes": 3}, "text_dim": 3}
    assert current_spec(old) == {"kind": "fusion", "image": {"kind": "image"},
                                 "caption": {"kind": "caption", "num_classes": 3}, "caption_dim": 3}


@pytest.mark.parametrize("text, new, where", [
    ("image: {models: [{name: resnet18, mode: frozen}]}\n", "frozen_backbone", r"image.models\[0\].mode"),
    ("caption: {members: [tfidf, frozen]}\n", "frozen_encoder", r"caption.members\[1\]"),
    ("fusion: {mode: frozen}\n", "frozen_submodels", "fusion.mode"),
])
def test_each_old_frozen_loads_as_what_it_freezes(tmp_path, text, new, where):
    with pytest.warns(RenamedWarning, match=rf"{where}: 'frozen' is the old name of '{new}'"):
        params = _params(tmp_path, "stages: [split, image, caption, fusion]\n"
                                   + ("" if text.startswith("image") else "image: {models: [{name: resnet18}]}\n") + text)
    assert new in (params.image.models[0].mode, params.fusion.mode, *params.caption.members)


def test_an_old_member_name_in_ensemble_members_is_mapped(tmp_path):
    old = "caption:all-MiniLM-L6-v2-frozen"
    with pytest.warns(RenamedWarning, match=rf"ensemble.members\[1\]: '{old}' is the old name of '{old}_encoder'"):
        params = _params(tmp_path, "caption: {members: [frozen_encoder]}\n"
                                   f"ensemble: {{members: ['late fusion', '{old}']}}\n")
    assert params.ensemble.members == ["late fusion", "caption:all-MiniLM-L6-v2-frozen_encoder"]


def test_a_fusion_model_built_with_the_old_mode(tmp_path):
    from torch import nn

    from mlc_utils.models.fusion import FusionModel
    with pytest.warns(RenamedWarning, match="mode: 'frozen' is the old name of 'frozen_submodels'"):
        model = FusionModel(nn.Linear(4, 3), nn.Linear(4, 3), "concat", "logits", mode="frozen", num_classes=3,
                            image_dim=3, caption_dim=3)
    assert model.mode == model.spec["mode"] == "frozen_submodels" and not list(model.backbone_parameters())


def test_run_only_takes_the_old_stage_name(tmp_path):
    """``run --only text`` runs the caption stage (here it stops at once: the split has not run)."""
    from mlc_utils.run.pipeline import run_study
    path = tmp_path / "p.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nstages: [split, caption]\n")
    (tmp_path / "data").mkdir()
    with pytest.warns(RenamedWarning, match="--only text: 'text' is the old name of 'caption'"):
        results = run_study(str(path), only=["text"], root=tmp_path, log=lambda *_: None, plan=False)
    assert [(r.stage, r.status) for r in results] == [("caption", "failed")]
    assert "needs split to have run first" in results[0].error
