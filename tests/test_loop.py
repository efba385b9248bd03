"""The training loop (train.loop.fit): outputs, options, exact resumption, identity checks, feature cache."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_resumed_like_straight
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from mlc_utils.core.config import ParamError
from mlc_utils.core.inference import Inference
from mlc_utils.data.images import image_dataset
from mlc_utils.evaluation.predict import predict_probs
from mlc_utils.models import create_image_model
from mlc_utils.models.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    read_checkpoint,
)
from mlc_utils.train import features
from mlc_utils.train.config import TrainConfig
from mlc_utils.train.loop import fit

CPU = Inference("cpu")

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """A 'backbone' and a head, like the real models, on 8 input features."""

    def __init__(self, classes: int = 4, dropout: float = 0.0):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(16, classes)
        self.spec = {"kind": "tiny", "num_classes": classes}

    def forward(self, x):
        if isinstance(x, dict):
            x = torch.cat([x["a"], x["b"]], dim=1)
        return self.head(self.backbone(x))

    def backbone_parameters(self):
        return self.backbone.parameters()


def make_data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, :4] > 0).float())


def tiny_model(seed: int = 0, **kwargs) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kwargs)


def quiet(**kwargs) -> TrainConfig:
    return TrainConfig(**{"batch_size": 16, "lr": 1e-2, "progress": False, **kwargs})


def test_fit_writes_every_output_and_learns(tmp_path):
    result = fit(tiny_model(), make_data(128), make_data(16, seed=1), quiet(epochs=4, lr=3e-2, scheduler="none"),
                 tmp_path)
    for name in ("last.pt", "best.pt", "log.csv", "val_probs.npy", "metrics.json"):
        assert (tmp_path / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    log = pd.read_csv(tmp_path / "log.csv")
    assert len(log) == 4 and {"sample_f1", "micro_f1", "macro_f1", "mAP", "train_loss", "lr"} <= set(log.columns)
    assert np.load(tmp_path / "val_probs.npy").shape == (16, 4)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["best_epoch"] == result.best_epoch == int(log.sample_f1.idxmax())
    assert result.best_metrics["sample_f1"] > 0.6
    assert log.train_loss.iloc[-1] < log.train_loss.iloc[0]
    np.testing.assert_allclose(result.val_probs, np.load(tmp_path / "val_probs.npy"))


def _resume_cfg(**kwargs) -> TrainConfig:
    return quiet(mixup=True, ema=True, ema_decay=0.9, label_smoothing=0.1, scheduler="step", step_size=1,
                 gamma=0.5, **kwargs)


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    train, val = make_data(), make_data(16, seed=1)
    straight = fit(tiny_model(dropout=0.2), train, val, _resume_cfg(epochs=2), tmp_path / "straight")
    fit(tiny_model(dropout=0.2), train, val, _resume_cfg(epochs=1), tmp_path / "split")  # "interrupted"
    resumed = fit(tiny_model(seed=99, dropout=0.2), train, val, _resume_cfg(epochs=2, resume=True),
                  tmp_path / "split")
    assert_resumed_like_straight(straight, resumed, tmp_path / "straight", tmp_path / "split")
    assert len(pd.read_csv(tmp_path / "split" / "log.csv")) == 2


def test_resume_refuses_other_parameters(tmp_path):
    fit(tiny_model(), make_data(), make_data(16, 1), quiet(epochs=1), tmp_path)
    with pytest.raises(ValueError, match=r"resume: .*lr: 0.01 -> 0.1"):
        fit(tiny_model(), make_data(), make_data(16, 1), quiet(epochs=2, lr=0.1, resume=True), tmp_path)


def test_freeze_epochs_then_after_freeze_lr(tmp_path):
    model = tiny_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, make_data(), make_data(16, 1), quiet(epochs=1, freeze_epochs=1, restore_best=False), tmp_path / "a")
    assert torch.equal(model.backbone[0].weight.cpu(), start["backbone.0.weight"])
    assert not torch.equal(model.head.weight.cpu(), start["head.weight"])
    result = fit(tiny_model(), make_data(), make_data(16, 1),
                 quiet(epochs=2, freeze_epochs=1, after_freeze_lr=1e-3, scheduler="none"), tmp_path / "b")
    assert [h["lr"] for h in result.history] == pytest.approx([1e-2, 1e-3])
    assert [h["frozen"] for h in result.history] == [True, False]


@pytest.mark.parametrize("loss", ["bce", "weighted_bce", "focal", "asl"])
def test_every_loss_trains(tmp_path, loss):
    result = fit(tiny_model(), make_data(), make_data(16, 1), quiet(epochs=1, loss=loss), tmp_path)
    assert np.isfinite(result.history[0]["train_loss"])


def test_distillation_accumulation_and_step_cap(tmp_path):
    teacher = tiny_model(seed=5)
    cfg = quiet(epochs=1, kd_alpha=0.7, kd_temp=3.0, grad_accum=2, max_steps_per_epoch=1, max_grad_norm=1.0)
    fit(tiny_model(), make_data(), make_data(16, 1), cfg, tmp_path, teacher=teacher)
    assert read_checkpoint(tmp_path / "last.pt")["global_step"] == 1


class NanAfter(TinyNet):
    """Training logits turn NaN after ``after`` training batches."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x):
        logits = super().forward(x)
        self.calls += self.training
        return logits * float("nan") if self.training and self.calls > self.after else logits


def test_a_non_finite_loss_stops_training_naming_epoch_and_batch(tmp_path):
    """One process: the message names no rank (tests/test_ddp.py covers the ranks)."""
    with pytest.raises(FloatingPointError) as err:
        fit(NanAfter(after=1), make_data(), None, quiet(epochs=1), tmp_path)
    assert str(err.value) == "epoch 1, batch 1: loss is nan (lower lr, or set amp_dtype: bfloat16)"


class DictData(Dataset):
    def __init__(self, base: TensorDataset):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return {"a": x[:4], "b": x[4:]}, y


def test_dict_inputs_train_and_mixup_refuses_them(tmp_path):
    result = fit(tiny_model(), DictData(make_data()), DictData(make_data(16, 1)), quiet(epochs=2), tmp_path / "a")
    assert result.best_metrics["sample_f1"] > 0
    with pytest.raises(ValueError, match="mixup"):
        fit(tiny_model(), DictData(make_data()), None, quiet(epochs=1, mixup=True), tmp_path / "b")


@pytest.mark.parametrize("field,value,match", [
    ("epochs", -1, "epochs: must be >= 0"),
    ("threshold", 1.5, r"threshold: must be in \(0, 1\)"),
    ("loss", "hinge", "loss: must be one of"),
    ("optimizer", "lbfgs", r"optimizer: must be one of \['adamw', 'sgd', 'timm_adamw'\]"),
    ("scheduler", "poly", "scheduler: must be one of"),
    ("batch_size", 0, "batch_size: must be >= 1"),
    ("label_smoothing", 1.0, "label_smoothing"),
])
def test_train_config_check_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value}).check()


def test_train_config_from_dict_rejects_typos():
    assert TrainConfig.from_dict({"epochs": 3, "lr": "1e-3"}).lr == 1e-3
    with pytest.raises(ParamError, match="did you mean 'mixup_alpha'"):
        TrainConfig.from_dict({"mixup_alpa": 0.2})
    with pytest.raises(ParamError, match="train.loss"):
        TrainConfig.from_dict({"loss": "hinge"})


def test_checkpoint_of_another_model_is_refused_clearly(tmp_path):
    model = create_image_model("test_resnet", num_classes=20, img_size=32)
    path = features.save_model(model, tmp_path / "model.pt")
    with pytest.raises(CheckpointMismatchError, match="num_classes"):
        load_checkpoint(path, create_image_model("test_resnet", num_classes=10, img_size=32))
    with pytest.raises(CheckpointMismatchError, match="arch"):
        load_checkpoint(path, create_image_model("test_vit", num_classes=20, img_size=32))
    rebuilt, _ = load_checkpoint(path)  # no model given: rebuilt from the spec
    assert rebuilt.spec == model.spec


def test_predict_probs_keeps_dataset_order():
    model, data = tiny_model().eval(), make_data(37)
    expected = torch.sigmoid(model(data.tensors[0])).detach().numpy()
    np.testing.assert_allclose(predict_probs(model, data, Inference("cpu", batch_size=8)), expected, atol=1e-6)


def test_image_model_trains_with_randaugment_and_mixup(tiny_images, tmp_path):
    d = tiny_images
    torch.manual_seed(0)
    model = create_image_model("test_vit", img_size=32, head="replace")
    train = image_dataset(d["root"], d["ids"][:32], d["targets"][:32], model.spec["data"], train=True)
    val = image_dataset(d["root"], d["ids"][32:], d["targets"][32:], model.spec["data"])
    result = fit(model, train, val, quiet(epochs=2, batch_size=8, lr=1e-3, mixup=True, ema=True), tmp_path)
    assert len(result.history) == 2 and result.val_probs.shape == (8, 20)
    assert read_checkpoint(tmp_path / "best.pt")["spec"]["arch"] == "test_vit"


def test_feature_cache_is_reused_and_head_trains(tiny_images, tmp_path, monkeypatch):
    d = tiny_images
    torch.manual_seed(0)
    model = create_image_model("test_resnet", img_size=32, head="replace")
    cache = features.FeatureCache(tmp_path / "cache")
    args = (model, d["root"], d["ids"][:32], d["targets"][:32], d["ids"][32:], d["targets"][32:])
    cfg = quiet(epochs=3, batch_size=8)
    result, tta = features.fit_head(*args, cfg, tmp_path / "run1", CPU, views=("center", "hflip"), cache=cache)
    assert cache.misses == 4 and cache.hits == 0 and cache.computed == 80  # (train, val) x (center, hflip)
    assert tta.shape == (8, 20) and len(result.history) == 3
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # one file per view, rows per image
    monkeypatch.setattr(features, "compute_features", lambda *a, **k: pytest.fail("recomputed cached features"))
    features.fit_head(*args, cfg, tmp_path / "run2", CPU, views=("center", "hflip"), cache=cache)
    assert cache.hits == 4 and cache.computed == 80
    # another split of the same images is served from the cache too, rows in the order asked
    swapped = features.cached_features(model, d["root"], d["ids"][::-1], "center", CPU, cache)
    np.testing.assert_array_equal(swapped[::-1], features.cached_features(model, d["root"], d["ids"], "center", CPU, cache))
    # the saved whole model predicts images like the head on cached features
    whole, _ = load_checkpoint(tmp_path / "run1" / "model.pt")
    from mlc_utils.evaluation.predict import predict_images
    direct = predict_images(whole, d["root"], d["ids"][32:], ("center", "hflip"), CPU, progress=False)
    via_cache = features.predict_head(whole, d["root"], d["ids"][32:], ("center", "hflip"), CPU, cache=cache)
    np.testing.assert_allclose(direct, via_cache, atol=1e-5)  # one inference path: same precision both ways
    # other weights -> another cache entry
    other = create_image_model("test_resnet", img_size=32, head="replace")
    monkeypatch.setattr(features, "compute_features", lambda *a, **k: np.zeros((8, 96), np.float32))
    features.cached_features(other, d["root"], d["ids"][32:], "center", CPU, cache)
    assert cache.misses == 5 and cache.computed == 88


def test_feature_key_follows_pooling_and_crop_mode(tiny_images):
    root = tiny_images["root"]
    keys = []
    for pool, crop in [("", "center"), ("catavgmax", "center"), ("", "squash")]:
        torch.manual_seed(0)  # equal weights: only the pooling or the crop differs
        model = create_image_model("test_resnet", img_size=32, head="replace", global_pool=pool, crop_mode=crop)
        keys.append(json.dumps(features.feature_key(model, root, "center", CPU), sort_keys=True))
    assert len(set(keys)) == 3


def test_class_attention_trains_on_cached_regions_and_predicts_like_the_whole_model(tiny_images, tmp_path):
    d = tiny_images
    torch.manual_seed(0)
    model = create_image_model("test_resnet", img_size=32, head="class_attention", tta_views=["center"])
    cache = features.FeatureCache(tmp_path / "cache")
    result, tta = features.fit_head(model, d["root"], d["ids"][:32], d["targets"][:32], d["ids"][32:],
                                    d["targets"][32:], quiet(epochs=2, batch_size=8), tmp_path / "run",
                                    CPU, views=("center",), cache=cache)
    rows = features.cached_features(model, d["root"], d["ids"], "center", CPU, cache)
    assert rows.shape == (40, 9 * model.backbone.num_features) and len(result.history) == 2
    whole, _ = load_checkpoint(tmp_path / "run" / "model.pt")
    from mlc_utils.evaluation.predict import predict_images
    direct = predict_images(whole, d["root"], d["ids"][32:], ("center",), CPU, progress=False)
    np.testing.assert_allclose(direct, tta, atol=1e-5)
    # the grid is part of what a cached row means: another grid is another entry
    torch.manual_seed(0)
    coarser = create_image_model("test_resnet", img_size=32, head="class_attention", attention_grid=2)
    assert features.feature_key(coarser, d["root"], "center", CPU) != features.feature_key(model, d["root"], "center", CPU)


def test_feature_head_drops_features_like_the_whole_model():
    model = create_image_model("test_resnet", img_size=32, head="replace", drop_rate=0.5)
    head = features.FeatureHead(model.head, model.spec)
    x = torch.ones(64, model.head.in_features)
    torch.manual_seed(0)
    head.train()
    trained = head.drop(x)
    assert 0.3 < float((trained == 0).float().mean()) < 0.7  # about half dropped, the rest scaled by 2
    head.eval()
    assert torch.equal(head(x), model.head(x))
