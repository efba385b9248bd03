"""No stale numbers: every cache says what it depends on, and a change to any of it is seen.

* a trained member is retrained when the code that trains it changes, or an image it read;
* ``run --force`` retrains members, not only re-executes the notebooks around them;
* a stage notebook run by hand (other parameters) makes the next ``run`` re-run it and every stage
  downstream of it;
* the feature cache recomputes the row of an image file that was replaced.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT, draw, make_project

from mlc_utils.core.inference import Inference
from mlc_utils.evaluation.ensemble import Member
from mlc_utils.models import create_image_model
from mlc_utils.study import members as study
from mlc_utils.study.context import StageContext, open_stage
from mlc_utils.study.params import load_params
from mlc_utils.train.features import FeatureCache, cached_features, compute_features

CPU = Inference("cpu")

torch.set_num_threads(1)


def _replace_image(path: Path, seed: int) -> None:
    """Overwrite an image with other content, as a re-download would (newer modification time)."""
    from PIL import Image
    before = path.stat().st_mtime_ns
    Image.fromarray(draw([0, 3], 32, np.random.default_rng(seed))).save(path, quality=80)
    os.utime(path, ns=(before + 2 * 10**9, before + 2 * 10**9))


def test_feature_cache_recomputes_a_replaced_image(tiny_images, tmp_path):
    model = create_image_model("test_resnet", img_size=32, head="replace")
    root, ids = tiny_images["root"], tiny_images["ids"][:5]
    cache = FeatureCache(tmp_path / "cache")
    first = cached_features(model, root, ids, "center", CPU, cache=cache, progress=False)
    _replace_image(root / "data" / ids[2], seed=99)

    second = cached_features(model, root, ids, "center", CPU, cache=cache, progress=False)
    assert cache.computed == 5 + 1, "only the replaced image is computed again"
    fresh = compute_features(model, root, [ids[2]], "center", CPU, progress=False)
    np.testing.assert_allclose(second[2], fresh[0], atol=1e-6)
    assert not np.allclose(second[2], first[2]), "the replaced image's old features were served"
    np.testing.assert_array_equal(np.delete(second, 2, axis=0), np.delete(first, 2, axis=0))
    cached_features(model, root, ids, "center", CPU, cache=cache, progress=False)
    assert cache.computed == 6 and cache.hits == 1, "the new row is cached like the others"


def _member(out_dir: Path) -> Member:
    return Member("m", "image", out_dir, ["0.jpg"], np.zeros((1, 20)), ["40.jpg"], np.zeros((1, 20)))


def test_member_is_retrained_when_its_code_or_an_image_changes(tiny_data, tmp_path, monkeypatch):
    params = load_params(None, {"run": "t", "data_dir": str(tiny_data), "stages": ["split"]})
    ctx = StageContext("image", params, tmp_path)
    (ctx.dir_of("split")).mkdir(parents=True)
    (ctx.dir_of("split") / "split.csv").write_text("ImageID,fold\n0.jpg,train\n")
    # a stand-in for the training code, so the test can edit it
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fake_trainer.py").write_text("LR = 0.1\n")
    monkeypatch.setitem(study.MEMBER_CODE, "image", study.MEMBER_CODE["image"] + ("fake_trainer",))
    trained = []

    def train(kind: str = "image"):
        def run():
            trained.append(kind)
            return _member(tmp_path / "out" / kind)
        return study.reuse_or_train(ctx, tmp_path / "out" / kind, {"a": 1}, run, lambda *_: None, kind=kind)

    train()
    train()
    assert trained == ["image"], "an unchanged member is reused"
    (tmp_path / "fake_trainer.py").write_text("LR = 0.2  # the training code changed\n")
    train()
    assert trained == ["image"] * 2, "a change to the code that trains the member must retrain it"

    train("caption")
    _replace_image(tiny_data / "data" / "3.jpg", seed=5)
    train()
    train("caption")
    assert trained == ["image", "image", "caption", "image"], \
        "a replaced image retrains the image member, not the caption member that never reads it"


def test_a_member_does_not_depend_on_what_was_trained_before_it(tiny_data, tmp_path):
    """Its initial weights come from the study's seed, not from the random state other work left."""
    params = load_params(None, {"run": "t", "data_dir": str(tiny_data), "stages": ["split"]})
    ctx = StageContext("image", params, tmp_path)
    ctx.dir_of("split").mkdir(parents=True)
    (ctx.dir_of("split") / "split.csv").write_text("ImageID,fold\n0.jpg,train\n")

    def fresh_head_member(out_dir):
        weights = torch.nn.Linear(4, 20).weight.detach().numpy()  # a fresh head: random initial weights
        probs = 1 / (1 + np.exp(-weights[:, :1].T))
        return Member("m", "image", out_dir, ["0.jpg"], probs, ["40.jpg"], probs)

    first = study.reuse_or_train(ctx, tmp_path / "a", {"a": 1}, lambda: fresh_head_member(tmp_path / "a"),
                                 lambda *_: None, kind="image")
    torch.rand(1000)
    np.random.rand(1000)  # other members trained before this one, drawing random numbers
    again = study.reuse_or_train(ctx, tmp_path / "b", {"a": 2}, lambda: fresh_head_member(tmp_path / "b"),
                                 lambda *_: None, kind="image")
    np.testing.assert_array_equal(first.val_probs, again.val_probs)


def test_every_kind_of_member_hashes_the_training_loop_metrics_and_its_own_model():
    from mlc_utils.core.fingerprint import module_files

    def files(kind):
        return {str(path.relative_to(PROJECT)) for module in study.MEMBER_CODE[kind] for path in module_files(module)}
    for kind in study.MEMBER_CODE:
        assert {"mlc_utils/train/loop.py", "mlc_utils/evaluation/metrics.py", "mlc_utils/train/losses.py",
                "mlc_utils/study/members.py"} <= files(kind), kind
    assert {"mlc_utils/models/image.py", "mlc_utils/data/images.py", "mlc_utils/train/features.py"} <= files("image")
    assert {"mlc_utils/models/caption.py", "mlc_utils/data/caption_tokens.py"} <= files("caption")
    assert "mlc_utils/models/fusion.py" in files("fusion")


@pytest.mark.slow
def test_force_retrains_and_a_hand_run_stage_reruns_downstream(tmp_path, tiny_data):
    from mlc_utils.run.pipeline import run_study
    root, params = make_project(tmp_path, tiny_data, stages="[split, image]")
    quick = ["image.train.epochs=1", "image.train.progress=false", f"image.cache_dir={tmp_path / 'cache'}"]
    logs: list[str] = []
    assert [r.status for r in run_study(str(params), quick, root=root, log=logs.append)] == ["ran", "ran"], logs
    checkpoint = root / "runs" / "t" / "image" / "test_vit" / "best.pt"
    trained_once = checkpoint.stat().st_ino

    # --force re-executes the notebook *and* retrains its members (a new checkpoint file)
    assert [r.status for r in run_study(str(params), quick, only=["image"], force=True, root=root,
                                        log=logs.append)] == ["ran"]
    assert any("trained again" in line for line in logs), logs
    assert checkpoint.stat().st_ino != trained_once, "--force reused the saved member"

    # the split notebook opened by hand with another fraction: both stages run again
    open_stage("split", str(params), {"split.val_fraction": 0.3}, root)
    results = run_study(str(params), quick, root=root, log=logs.append)
    assert [r.status for r in results] == ["ran", "ran"], logs
    assert [r.status for r in run_study(str(params), quick, root=root, log=logs.append)] == ["skipped", "skipped"]
