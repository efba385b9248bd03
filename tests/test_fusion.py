"""Fusion heads (concat, bilinear), frozen vs end-to-end gradients, the precomputed path, late fusion."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mlc_utils.core.inference import Inference
from mlc_utils.evaluation.late_fusion import late_fusion, tune_late_fusion
from mlc_utils.models.fusion import (
    FUSION_HEADS,
    FUSION_MODES,
    ArrayPairDataset,
    ConcatHead,
    FusionModel,
    ImageCaptionDataset,
    PrecomputedFusion,
    compute_outputs,
    create_head,
    output_dim,
)

C = 5


class TinyImage(nn.Module):
    """An image model with the ImageModel surface (embed, head, spec) and batch-norm to check eval mode."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, C)
        self.spec = {"kind": "test-image", "num_classes": C}

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.embed(x))


class TinyCaption(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.EmbeddingBag(50, 6)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6, C)
        self.num_classes, self.feature_dim = C, 6

    def features(self, inputs):
        return self.drop(self.emb(inputs["input_ids"]))

    def forward(self, inputs):
        return self.head(self.features(inputs))


def batch(n=3):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 3, 8, 8, generator=g), "input_ids": torch.randint(0, 50, (n, 4), generator=g),
            "attention_mask": torch.ones(n, 4, dtype=torch.long)}


def grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("head", sorted(FUSION_HEADS))
@pytest.mark.parametrize("fusion_input, dims", [("logits", (C, C)), ("features", (4, 6))])
def test_heads_shapes_and_frozen_gradients(head, fusion_input, dims):
    image, caption = TinyImage(), TinyCaption()
    model = FusionModel(image, caption, head, fusion_input, mode="frozen_submodels", num_classes=C)
    assert (model.spec["image_dim"], model.spec["caption_dim"]) == dims
    model.train()
    assert not image.training and not caption.training  # dropout/batch-norm stay fixed when frozen
    before = image.body[1].running_mean.clone()
    out = model(batch())
    assert out.shape == (3, C)
    out.sum().backward()
    assert all(g is not None for g in grads(model.head))
    assert all(g is None for g in grads(image) + grads(caption))
    assert torch.equal(before, image.body[1].running_mean)
    assert list(model.backbone_parameters()) == []


@pytest.mark.parametrize("head", sorted(FUSION_HEADS))
def test_end_to_end_gradients_reach_sub_models(head):
    image, caption = TinyImage(), TinyCaption()
    FusionModel(image, caption, head, "features", mode="frozen_submodels", num_classes=C)  # an earlier frozen use
    model = FusionModel(image, caption, head, "features", mode="end_to_end", num_classes=C).train()
    assert image.training and caption.training
    model(batch()).sum().backward()
    assert all(g is not None for g in grads(model.head))
    assert all(g is not None for g in grads(image.body[0]) + grads(caption.emb))
    assert len(list(model.backbone_parameters())) == len(list(image.parameters())) + len(list(caption.parameters()))


def test_concat_on_logits_starts_as_their_average():
    image, caption = TinyImage().eval(), TinyCaption().eval()
    model = FusionModel(image, caption, "concat", "logits", num_classes=C).eval()
    x = batch()
    expected = 0.5 * (image(x["image"]) + caption({"input_ids": x["input_ids"]}))
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(ValueError, match="identity_init"):
        ConcatHead(4, 6, C, identity_init=True)
    with pytest.raises(ValueError, match="identity_init: only the concat head"):  # the bilinear head has none
        create_head("bilinear", C, C, C, identity_init=True)


def test_bad_choices_name_the_parameter():
    with pytest.raises(ValueError, match="head"):
        create_head("sum", 3, 3, C)
    with pytest.raises(ValueError, match="fusion_input"):
        FusionModel(TinyImage(), TinyCaption(), fusion_input="pixels")
    with pytest.raises(ValueError, match="mode"):
        FusionModel(TinyImage(), TinyCaption(), mode="half")
    with pytest.raises(ValueError, match="output width"):
        output_dim(nn.Identity(), "features")


def test_precomputed_path_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, C)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
    np.save(tmp_path / "img.npy", a)
    ds = ArrayPairDataset(tmp_path / "img.npy", b, np.eye(C, dtype=np.float32)[rng.integers(0, C, 6)])
    assert ds.dims == (C, 3)
    inputs, target = ds[2]
    assert torch.equal(inputs["image"], torch.from_numpy(a[2])) and target.shape == (C,)
    for head in FUSION_HEADS:
        model = PrecomputedFusion(head, *ds.dims, num_classes=C)
        out = model({"image": ds.image[:4], "caption": ds.caption[:4]})
        assert out.shape == (4, C)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="caption_outputs"):
        ArrayPairDataset(a, b[:5])
    with pytest.raises(ValueError, match="image_outputs"):
        ArrayPairDataset(np.full((2, C), np.nan), b[:2])


def test_compute_outputs_and_zipped_dataset():
    from torch.utils.data import TensorDataset

    class Captions(torch.utils.data.Dataset):
        def __init__(self, ids, y):
            self.ids, self.targets = ids, y

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i])}, self.targets[i]

    y = torch.eye(C)[:4]
    images = TensorDataset(torch.randn(4, 3, 8, 8), y)
    captions = Captions(torch.randint(0, 50, (4, 4)), y)
    image = TinyImage()
    assert compute_outputs(image, images, "features", Inference("cpu", batch_size=3), name="image").shape == (4, 4)
    assert compute_outputs(TinyCaption(), captions, "logits", Inference("cpu", batch_size=3), name="caption").shape == (4, C)
    zipped = ImageCaptionDataset(images, captions)
    inputs, target = zipped[1]
    assert set(inputs) == {"image", "input_ids", "attention_mask"} and torch.equal(target, y[1])
    assert torch.equal(torch.as_tensor(zipped.targets), y)
    shuffled = Captions(captions.ids, y.flip(0))
    with pytest.raises(ValueError, match="disagree"):
        ImageCaptionDataset(images, shuffled)[0]


def test_late_fusion_weighting():
    p_img = np.array([[0.9, 0.1], [0.2, 0.8]])
    p_cap = np.array([[0.1, 0.9], [0.6, 0.4]])
    np.testing.assert_allclose(late_fusion(p_img, p_cap, 0.75), [[0.7, 0.3], [0.3, 0.7]])
    np.testing.assert_allclose(late_fusion(p_img, p_cap, 1.0), p_img)
    with pytest.raises(ValueError, match="weight"):
        late_fusion(p_img, p_cap, 1.5)
    with pytest.raises(ValueError, match="p_caption"):
        late_fusion(p_img, p_cap[:1], 0.5)


def test_tune_late_fusion_finds_the_informative_model():
    rng = np.random.default_rng(1)
    y = (rng.random((60, 4)) < 0.3).astype(float)
    y[y.sum(1) == 0, 0] = 1
    good = np.clip(y * 0.7 + rng.random(y.shape) * 0.3, 0, 1)
    noise = rng.random(y.shape)
    weights = np.linspace(0, 1, 11)
    result = tune_late_fusion(y, good, noise, weights)
    assert result.weight >= 0.7 and result.val_f1 > 0.95
    assert len(result.table) == 11
    flat = tune_late_fusion(y, good, good, weights, tune_threshold=False)  # all weights tie: the middle one wins
    assert flat.weight == 0.5
    np.testing.assert_allclose(result.apply(good, noise), late_fusion(good, noise, result.weight))


@pytest.mark.parametrize("head", sorted(FUSION_HEADS))
def test_head_on_saved_outputs_trains_through_the_training_loop(tmp_path, head):
    from mlc_utils.models.checkpoint import load_checkpoint
    from mlc_utils.train.config import TrainConfig
    from mlc_utils.train.loop import fit

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = (rng.random((48, C)) < 0.4).astype(np.float32)
    image_logits = (y * 4 - 2 + rng.normal(0, 1.5, y.shape)).astype(np.float32)
    caption_logits = (y * 4 - 2 + rng.normal(0, 1.5, y.shape)).astype(np.float32)
    np.save(tmp_path / "img.npy", image_logits)
    train = ArrayPairDataset(tmp_path / "img.npy", caption_logits, y)
    model = PrecomputedFusion(head, *train.dims, num_classes=C)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, scheduler="none", progress=False, device="cpu")
    result = fit(model, train, train, cfg, tmp_path / "run")
    assert result.val_probs.shape == (48, C) and len(result.history) == 2
    reloaded, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    assert isinstance(reloaded, PrecomputedFusion)


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_fusion_model_through_the_training_loop_keeps_frozen_sub_models(tmp_path, mode):
    from torch.utils.data import Dataset

    from mlc_utils.train.config import TrainConfig
    from mlc_utils.train.loop import fit

    class Pairs(Dataset):
        def __init__(self, n=12):
            self.x, self.targets = batch(n), (torch.rand(n, C) < 0.4).float()

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return {k: v[i] for k, v in self.x.items()}, self.targets[i]

    torch.manual_seed(0)
    image, caption = TinyImage(), TinyCaption()
    before = {k: v.clone() for k, v in {**image.state_dict(), **caption.state_dict()}.items()}
    model = FusionModel(image, caption, "bilinear", "features", mode=mode, num_classes=C)
    head_before = model.head.bilinear.weight.detach().clone()
    cfg = TrainConfig(epochs=1, batch_size=6, lr=1e-2, scheduler="none", progress=False, device="cpu")
    fit(model, Pairs(), Pairs(), cfg, tmp_path)
    after = {**image.state_dict(), **caption.state_dict()}
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    assert unchanged == (mode == "frozen_submodels")
    assert not torch.equal(head_before, model.head.bilinear.weight)
