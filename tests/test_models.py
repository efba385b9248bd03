"""Image models, offline weights, image decoding and TTA views."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mlc_utils.data.image_files import ImageReadError, load_image
from mlc_utils.data.images import VIEWS, ImageDataset, build_transform
from mlc_utils.models import (
    PACKAGED_WEIGHTS,
    OfflineWeightsError,
    build_model,
    create_image_model,
    lukemelas_to_timm,
    resolve_pretrained,
)
from mlc_utils.models import weights as weights_module

torch.set_num_threads(1)
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger, Persian, Siamese, Egyptian cat


def test_packaged_lite0_loads_strictly_and_sees_a_cat():
    from skimage import data
    source = resolve_pretrained("efficientnet_lite0", True)
    assert source.kind == "packaged" and source.arch == "tf_efficientnet_lite0"
    model = create_image_model("efficientnet_lite0", num_classes=20, pretrained=True).eval()
    assert model.spec["arch"] == "tf_efficientnet_lite0" and model.spec["data"]["mean"] == [0.5, 0.5, 0.5]
    x = build_transform(model.data_config)(Image.fromarray(data.chelsea())).unsqueeze(0)
    with torch.no_grad():
        imagenet_logits = model.embed(x)
        logits = model(x)
    assert logits.shape == (1, 20)
    top5 = set(imagenet_logits.topk(5).indices[0].tolist())
    assert top5 & CAT_CLASSES, f"top-5 ImageNet classes {top5} hold no cat class"
    assert imagenet_logits.argmax().item() in CAT_CLASSES


@pytest.mark.parametrize("size", [1, 2])
def test_lukemelas_mapping_is_complete_for_lite1_and_lite2(size):
    import timm
    packaged = PACKAGED_WEIGHTS[f"efficientnet_lite{size}"]
    state = torch.load(packaged.path(), map_location="cpu", weights_only=True)
    model = timm.create_model(packaged.arch, pretrained=False)
    model.load_state_dict(lukemelas_to_timm(state, model), strict=True)


def test_lukemelas_mapping_names_a_key_without_counterpart():
    import timm
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with pytest.raises(KeyError, match="_blocks.99._bn0"):
        lukemelas_to_timm({"_blocks.99._bn0.weight": torch.zeros(1)}, model)


def test_hub_name_offline_raises_fast_with_the_offline_choices(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights_module, "_hub_cached_file", lambda arch: None)
    with pytest.raises(OfflineWeightsError) as err:
        create_image_model("resnet18", pretrained=True)
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and "efficientnet_lite0" in message and "pretrained: false" in message


def test_local_checkpoint_path_is_loaded(tmp_path):
    import timm
    torch.manual_seed(1)
    donor = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "donor.pth"
    torch.save({"state_dict": donor.state_dict()}, path)
    model = create_image_model("test_resnet", num_classes=5, pretrained=str(path), img_size=32)
    for name, tensor in donor.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(model.backbone.state_dict()[name], tensor), name
    assert model.spec["weights"].startswith("file:")


def test_bad_pretrained_paths_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_image_model("test_resnet", pretrained=str(tmp_path / "nope.pth"))
    import timm
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("test_vit").state_dict(), path)
    with pytest.raises(ValueError, match="does not fit timm 'test_resnet'"):
        create_image_model("test_resnet", pretrained=str(path))


@pytest.mark.parametrize("head", ["extra_linear", "replace", "class_attention"])
def test_heads_output_logits_and_split_parameters(head):
    model = create_image_model("test_resnet", num_classes=7, head=head, img_size=32)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    width = {"extra_linear": 1000, "replace": model.backbone.num_features,
             "class_attention": 9 * model.backbone.num_features}[head]
    assert model.head.in_features == width == model.embed(torch.randn(2, 3, 32, 32)).shape[1]
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    assert backbone_ids.isdisjoint(id(p) for p in model.head_parameters())
    assert len(backbone_ids) + len(list(model.head_parameters())) == len(list(model.parameters()))


def test_catavgmax_pooling_doubles_the_head_input_and_reads_the_max():
    model = create_image_model("test_resnet", num_classes=3, head="replace", img_size=32, global_pool="catavgmax")
    plain = create_image_model("test_resnet", num_classes=3, head="replace", img_size=32)
    assert model.head.in_features == 2 * plain.head.in_features
    model.eval()
    features = torch.zeros(1, model.backbone.num_features, 4, 4)
    features[0, :, 0, 0] = 16.0  # one hot spot: the average sees 1, the max 16
    pooled = model.backbone.forward_head(features, pre_logits=True)
    assert torch.allclose(pooled, torch.cat([torch.ones(1, model.backbone.num_features),
                                             torch.full((1, model.backbone.num_features), 16.0)], 1))
    rebuilt = build_model(model.spec)
    assert rebuilt.spec["global_pool"] == "catavgmax" and rebuilt.head.in_features == model.head.in_features


def test_class_attention_pools_regions_and_lets_one_corner_speak():
    from mlc_utils.models.image import ClassAttentionHead, RegionPool
    # the pool averages each of the grid's regions: a 6x6 map, 3x3 regions of 2x2 pixels
    fmap = torch.arange(2 * 36, dtype=torch.float32).reshape(1, 2, 6, 6)
    pooled = RegionPool(3)(fmap).reshape(1, 2, 3, 3)
    assert torch.allclose(pooled[0, 1, 2, 0], fmap[0, 1, 4:6, 0:2].mean())
    # class 0 reads channel 0; one region of nine carries it (a car in a corner)
    head = ClassAttentionHead(channels=2, regions=9, num_classes=1)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.classifier.bias.zero_()
    rows = torch.zeros(1, 2, 9)
    rows[0, 0, 4] = 3.0
    logit = head(rows.flatten(1)).item()
    mean, attended = 3.0 / 9, 3.0 * math.exp(3.0) / (math.exp(3.0) + 8)
    assert logit == pytest.approx(mean + 0.5 * attended, rel=1e-6)
    assert logit > 4 * mean  # the average alone would dilute it nine times


def test_the_image_config_is_what_params_checkpoints_and_the_feature_key_serialise():
    """One definition: params' ImageModelSpec extends ImageModelConfig, the checkpoint's spec holds it
    serialised and rebuilds it, and an older spec without the newer fields takes their defaults."""
    from dataclasses import asdict, fields

    from mlc_utils.models import ImageModelConfig
    from mlc_utils.study.params import ImageModelSpec
    config = ImageModelConfig("test_resnet", head="replace", img_size=32, global_pool="catavgmax", drop_rate=0.25)
    assert {f.name for f in fields(ImageModelConfig)} <= {f.name for f in fields(ImageModelSpec)}
    assert ImageModelSpec(**asdict(config), label="x").model_config() == config
    model = create_image_model(config, num_classes=3)
    assert {k: model.spec[k] for k in asdict(config)} == asdict(config) and model.config == config
    assert "drop_rate" not in config.feature_identity() and config.feature_identity()["global_pool"] == "catavgmax"
    older = {k: v for k, v in model.spec.items() if k not in ("pretrained", "attention_grid")}
    rebuilt = build_model(older)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == config and rebuilt.spec == older
    with pytest.raises(TypeError):
        create_image_model(config, num_classes=3, head="replace")  # a field goes in the config, not beside it


def test_stochastic_depth_is_one_field_that_reaches_timm_and_not_the_feature_key():
    """drop_path_rate: null keeps the architecture's own (timm drops None), a rate builds DropPath layers,
    a rate out of range names the field; it changes training only, so cached features stay valid."""
    from timm.layers import DropPath

    from mlc_utils.models import ImageModelConfig

    def rates(config):
        return [m.drop_prob for m in create_image_model(config, num_classes=3).modules() if isinstance(m, DropPath)]
    assert rates(ImageModelConfig("test_resnet", img_size=32)) == []
    assert max(rates(ImageModelConfig("test_resnet", img_size=32, drop_path_rate=0.2))) == pytest.approx(0.2)  # the deepest block's
    config = ImageModelConfig("test_resnet", img_size=32, drop_path_rate=0.2)
    assert "drop_path_rate" not in config.feature_identity()
    assert build_model(create_image_model(config, num_classes=3).spec).config == config
    with pytest.raises(ValueError, match=r"drop_path_rate: must be in \[0, 1\)"):
        create_image_model("test_resnet", drop_path_rate=1.5)


def test_class_attention_round_trips_and_names_its_errors():
    model = create_image_model("test_resnet", num_classes=3, head="class_attention", img_size=32,
                               attention_grid=2).eval()
    assert model.spec["attention_grid"] == 2 and model.head.in_features == 4 * model.backbone.num_features
    rebuilt = build_model(model.spec)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(rebuilt.eval()(x), model(x))
    with pytest.raises(ValueError, match="global_pool: applies to head: replace .*class_attention"):
        create_image_model("test_resnet", head="class_attention", global_pool="catavgmax")
    with pytest.raises(ValueError, match="attention_grid: must be an integer >= 1"):
        create_image_model("test_resnet", head="class_attention", attention_grid=0)
    vit = create_image_model("test_vit", head="class_attention", img_size=32)
    with pytest.raises(ValueError, match="class_attention needs a backbone that outputs a feature map"):
        vit(torch.randn(1, 3, 32, 32))


def test_pooling_and_crop_errors_name_the_parameter():
    with pytest.raises(ValueError, match="global_pool: applies to head: replace"):
        create_image_model("test_resnet", head="extra_linear", global_pool="catavgmax")
    with pytest.raises(ValueError, match="global_pool: must be one of"):
        create_image_model("test_resnet", head="replace", global_pool="mean")
    with pytest.raises(ValueError, match="global_pool: ConvNeXt does not support 'catavgmax'"):
        create_image_model("convnext_atto", head="replace", global_pool="catavgmax")
    with pytest.raises(ValueError, match="crop_mode: must be one of"):
        create_image_model("test_resnet", crop_mode="fill")


def test_squash_keeps_the_borders_that_a_centre_crop_cuts():
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, :8] = 255  # a white object at the left edge of a wide image
    image = Image.fromarray(array)
    centre = create_image_model("test_resnet", img_size=32).data_config
    squash = create_image_model("test_resnet", img_size=32, crop_mode="squash").data_config
    assert squash["crop_mode"] == "squash" and squash["crop_pct"] == 1.0
    bright = lambda cfg: float(build_transform(cfg)(image)[0].max())  # noqa: E731
    assert bright(squash) > 0.9 and bright(centre) < -0.9  # normalised: white ~ +2, black ~ -2
    assert build_transform(squash)(image).shape == (3, 32, 32)


def test_spec_rebuilds_the_same_model():
    model = create_image_model("test_vit", num_classes=4, head="replace", img_size=32, tta_views=["center"])
    rebuilt = build_model(model.spec)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(model.eval()(x), rebuilt.eval()(x))
    assert rebuilt.spec == model.spec


def test_model_argument_errors_name_the_parameter():
    with pytest.raises(ValueError, match="name: 'resnet1' is not a timm model"):
        create_image_model("resnet1")
    with pytest.raises(ValueError, match="head: must be one of"):
        create_image_model("test_resnet", head="mlp")
    with pytest.raises(ValueError, match="tta_views"):
        create_image_model("test_resnet", tta_views=["spin"])
    with pytest.raises(ValueError, match="kind"):
        build_model({"kind": "nope"})


# ---- image decoding ---------------------------------------------------------------------------

def _save(image: Image.Image, path, fmt):
    image.save(path, format=fmt)
    return path


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"),
                                      ("I;16", "PNG"), ("RGB", "PNG")])
def test_every_image_mode_decodes_to_rgb(tmp_path, mode, fmt):
    image = Image.new("RGB", (12, 9), (200, 30, 60)).convert(mode) if mode != "I;16" else \
        Image.fromarray(np.full((9, 12), 40000, dtype=np.uint16))
    path = _save(image, tmp_path / "x.jpg", fmt)  # a PNG named .jpg too: decoding goes by content
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (12, 9)


def test_unreadable_images_are_named(tmp_path):
    with pytest.raises(ImageReadError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all" * 10)
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        load_image(corrupt)
    whole = _save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                  tmp_path / "whole.jpg", "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[:600])
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        load_image(truncated)


def test_views_shapes_and_flip(tmp_path):
    model = create_image_model("test_resnet", img_size=32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    tensors = {view: build_transform(model.data_config, view=view)(image) for view in VIEWS}
    assert all(t.shape == (3, 32, 32) for t in tensors.values())
    assert torch.allclose(tensors["hflip"], tensors["center"].flip(-1), atol=1e-5)
    assert not torch.allclose(tensors["full"], tensors["center"])
    train = build_transform(model.data_config, train=True)
    assert train(image).shape == (3, 32, 32)
    assert "RandAugment" in repr(train)
    with pytest.raises(ValueError, match="view: must be one of"):
        build_transform(model.data_config, view="zoom")


def test_image_dataset_items(tmp_path):
    (tmp_path / "data").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "data" / "a.jpg")
    ds = ImageDataset(tmp_path / "data", ["a.jpg"], None, build_transform(
        create_image_model("test_resnet", img_size=32).data_config), num_classes=20)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y.shape == (20,) and y.sum() == 0
    with pytest.raises(ValueError, match="targets"):
        ImageDataset(tmp_path / "data", ["a.jpg"], np.zeros((2, 20)))


@pytest.mark.parametrize("head", ["class_attention", "replace"])
def test_tail_stages_move_the_last_stages_into_the_head_and_change_nothing_else(head):
    def build(**extra):
        torch.manual_seed(0)   # the same weights: moving stages draws no random numbers
        return create_image_model("test_efficientnet", num_classes=3, head=head, img_size=32, **extra).eval()
    whole, tailed = build(), build(tail_stages=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tailed(x), whole(x), atol=1e-6)
        assert tailed.embed(x).shape == (2, tailed.head.in_features)    # the cached rows: the cut's feature map
    # the tail's stages train with the head; what stays frozen is smaller
    assert _count(tailed.head_parameters()) > _count(whole.head_parameters())
    assert _count(tailed.backbone_parameters()) < _count(whole.backbone_parameters())
    assert tailed.config.feature_identity()["tail_stages"] == 2    # another cut, other cached features
    rebuilt = build_model(tailed.spec)
    rebuilt.load_state_dict(tailed.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), tailed(x))


def test_tail_stages_name_what_they_need():
    with pytest.raises(ValueError, match="tail_stages: needs a backbone with stages in `blocks`.*ResNet"):
        create_image_model("test_resnet", head="replace", img_size=32, tail_stages=1)
    with pytest.raises(ValueError, match="tail_stages: EfficientNet has 5 stages, so at most 4 can train"):
        create_image_model("test_efficientnet", head="replace", img_size=32, tail_stages=5)
    with pytest.raises(ValueError, match="tail_stages: trains the backbone's last stages with head: replace"):
        create_image_model("test_efficientnet", head="extra_linear", img_size=32, tail_stages=1)
    with pytest.raises(ValueError, match="tail_stages: must be an integer >= 0"):
        create_image_model("test_efficientnet", head="replace", img_size=32, tail_stages=-1)


def _count(parameters) -> int:
    return sum(p.numel() for p in parameters)
