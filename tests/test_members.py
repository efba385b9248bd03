"""A member names the checkpoint its model is rebuilt from (``Member.checkpoint``), in member.json too;
a member.json written before it had the field still loads."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlc_utils.evaluation.ensemble import Member
from mlc_utils.study.members import MEMBER_FILE, load_member, member_model, save_member
from mlc_utils.train.config import BEST_CHECKPOINT, WHOLE_MODEL


def _member(tmp_path, checkpoint: str = "") -> Member:
    probs = np.full((2, 3), 0.5)
    return Member("m", "image", tmp_path, ["1.jpg", "2.jpg"], probs, ["3.jpg", "4.jpg"], probs, checkpoint=checkpoint)


def test_the_checkpoint_is_saved_and_read_back(tmp_path):
    save_member(_member(tmp_path, WHOLE_MODEL), "k")
    assert json.loads((tmp_path / MEMBER_FILE).read_text())["checkpoint"] == WHOLE_MODEL
    assert load_member(tmp_path, "k").checkpoint == WHOLE_MODEL


@pytest.mark.parametrize("files, expected", [((WHOLE_MODEL, BEST_CHECKPOINT), WHOLE_MODEL), ((BEST_CHECKPOINT,), BEST_CHECKPOINT),
                                             ((), "")])
def test_a_member_json_without_the_field_finds_its_checkpoint(tmp_path, files, expected):
    save_member(_member(tmp_path), "k")
    meta = json.loads((tmp_path / MEMBER_FILE).read_text())
    del meta["checkpoint"]   # as written before the field
    (tmp_path / MEMBER_FILE).write_text(json.dumps(meta))
    for name in files:
        (tmp_path / name).write_bytes(b"")
    assert load_member(tmp_path, "k").checkpoint == expected


def test_member_model_reads_the_named_checkpoint(tmp_path):
    from mlc_utils.models.checkpoint import save_model
    from mlc_utils.models.fusion import PrecomputedFusion
    model = PrecomputedFusion("concat", 3, 3, num_classes=3)
    save_model(model, tmp_path / WHOLE_MODEL)
    (tmp_path / BEST_CHECKPOINT).write_bytes(b"not this one")
    loaded = member_model(_member(tmp_path, WHOLE_MODEL))
    assert not loaded.training and torch.equal(loaded.head.linear.weight, model.head.linear.weight)
    with pytest.raises(ValueError, match="not a torch checkpoint|cannot be read"):
        member_model(_member(tmp_path, BEST_CHECKPOINT))
    with pytest.raises(FileNotFoundError, match="no checkpoint of one model"):
        member_model(_member(tmp_path))
