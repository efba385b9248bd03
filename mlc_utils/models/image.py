"""Image classifiers: any timm backbone plus a multi-label head that outputs logits.

Heads (registry :data:`HEADS`):

- ``extra_linear`` (the paper): the backbone keeps its 1000-way ImageNet output and one extra
  ``Linear(1000, num_classes)`` follows it, so pretrained class evidence is reused as features.
- ``replace``: timm's classifier is removed (``reset_classifier(0)``) and a ``Linear`` from the
  pooled features to ``num_classes`` takes its place (the usual fine-tuning head). Its pooling can
  be any of timm's (``global_pool``): ``catavgmax`` concatenates average and max pooling, which keeps
  the evidence of small objects that an average over the whole image dilutes (a frozen Lite0 on the
  dev pack: 0.818 val sample-F1 against 0.804 for the average alone, 320 px squashed).
- ``class_attention``: the feature map is average-pooled to a grid of regions (``attention_grid``,
  3x3 by default) and one ``Linear`` scores every region for every class; a class's logit is the
  mean of its region scores plus half their softmax-weighted sum (class-specific residual
  attention, Zhu and Wu 2021). A class present in one corner is no longer averaged away with the
  rest of the image. Frozen Lite0 at 320 px on the dev pack, 5 folds out-of-fold: 0.822 against
  0.815 for ``catavgmax``, for the same feature pass (the cache keeps 9 regions instead of 2 vectors).

``tail_stages: N`` moves the backbone's last N stages and its final convolution into the head
(:class:`TailHead`): the frozen part's output, a smaller feature map, is what ``embed`` gives and the
feature cache keeps, and the head trains those stages on it. Fine-tuning the top of the network costs
its share of the FLOPs (Lite0 at 320 px: the last stage is about a tenth), not a whole pass per epoch.

Preprocessing for evaluation is timm's; ``crop_mode: squash`` resizes the whole image to the input
size instead of centre-cropping it, so objects at the borders (a car at the edge of a street scene)
stay in the picture: a multi-label target describes the whole image.

The model returns logits; the loss and prediction apply the sigmoid. ``spec`` is a JSON-able
description that checkpoints carry: the :class:`~mlc_utils.models.image_config.ImageModelConfig`
serialised (its fields at the top level), plus the resolved timm ``arch``, class count, weights'
source, preprocessing and TTA views,
so a model is rebuilt for prediction without the params file and a checkpoint loaded into the
wrong model fails with a clear message.
"""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlc_utils.models.image_config import (  # noqa: F401  (re-exported)
    CROP_MODES,
    DEFAULT_TTA_VIEWS,
    GLOBAL_POOLS,
    ImageModelConfig,
    check_pooling,
)
from mlc_utils.models.weights import create_backbone, resolve_pretrained


class RegionPool(nn.Module):
    """Average-pools a ``(B, C, H, W)`` feature map to ``grid x grid`` regions, flattened to
    ``(B, C * grid * grid)`` (channel-major), so cached features stay 2-D rows."""

    def __init__(self, grid: int, arch: str = ""):
        super().__init__()
        self.grid, self.arch = int(grid), arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"head: class_attention needs a backbone that outputs a feature map (B, C, H, W); "
                             f"{self.arch or 'this backbone'} gives shape {tuple(x.shape)} (a transformer's "
                             "tokens): use head: replace for it")
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)


class ClassAttentionHead(nn.Module):
    """Region scores per class pooled by their mean plus ``lam`` x their softmax-weighted sum.

    Reads :class:`RegionPool`'s rows; ``in_features`` is that row width, as for a ``Linear`` head.
    """

    def __init__(self, channels: int, regions: int, num_classes: int, lam: float = 0.5, temperature: float = 1.0):
        super().__init__()
        self.channels, self.regions, self.lam, self.temperature = channels, regions, lam, temperature
        self.classifier = nn.Linear(channels, num_classes)

    @property
    def in_features(self) -> int:
        return self.channels * self.regions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.classifier(x.reshape(len(x), self.channels, self.regions).transpose(1, 2))  # (B, R, K)
        attention = torch.softmax(self.temperature * scores, dim=1)
        return scores.mean(dim=1) + self.lam * (attention * scores).sum(dim=1)


class HeadParts(NamedTuple):
    backbone: nn.Module   # adjusted in place (its classifier removed or kept)
    pool: nn.Module       # between the backbone's output and the head (what the feature cache stores)
    head: nn.Module       # outputs num_classes logits


def _extra_linear(backbone: nn.Module, num_classes: int, global_pool: str = "", grid: int = 0) -> HeadParts:
    return HeadParts(backbone, nn.Identity(), nn.Linear(int(backbone.num_classes), num_classes))


def _reset_classifier(backbone: nn.Module, pool_args: tuple, refusal: str) -> None:
    """timm's ``reset_classifier(0, *pool_args)``; its refusal becomes a ValueError starting ``refusal``."""
    try:
        backbone.reset_classifier(0, *pool_args)
    except (AssertionError, KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{refusal} ({err})") from None


def _replace(backbone: nn.Module, num_classes: int, global_pool: str = "", grid: int = 0) -> HeadParts:
    # no global_pool: each model's own default pooling (timm's signatures differ in what None means)
    _reset_classifier(backbone, (global_pool,) if global_pool else (),
                      f"global_pool: {type(backbone).__name__} does not support {global_pool!r}")
    # timm's head_hidden_size counts the pooling's width (catavgmax doubles it)
    width = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
    return HeadParts(backbone, nn.Identity(), nn.Linear(width, num_classes))


def _class_attention(backbone: nn.Module, num_classes: int, global_pool: str = "", grid: int = 3) -> HeadParts:
    arch = type(backbone).__name__
    _reset_classifier(backbone, ("",), f"head: class_attention needs an unpooled feature map, which {arch} cannot give")
    head = ClassAttentionHead(int(backbone.num_features), grid * grid, num_classes)
    return HeadParts(backbone, RegionPool(grid, arch), head)


class TailHead(nn.Module):
    """The backbone's last stages, then a head's pooling and classifier, on flattened rows of the
    feature map the stages before them output (``shape``: its channels, height, width)."""

    def __init__(self, tail: nn.Module, pool: nn.Module, head: nn.Module, shape: tuple[int, int, int]):
        super().__init__()
        self.tail, self.pool, self.head, self.shape = tail, pool, head, tuple(int(s) for s in shape)

    @property
    def in_features(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.tail(rows.reshape(len(rows), *self.shape))))


TAIL_PARTS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")   # timm's EfficientNet family


def _split_tail(parts: HeadParts, stages: int, img_size: int) -> HeadParts:
    """``parts`` with the backbone's last ``stages`` stages, final convolution and norm moved into the head."""
    backbone = parts.backbone
    arch = type(backbone).__name__
    if not all(hasattr(backbone, name) for name in TAIL_PARTS):
        raise ValueError(f"tail_stages: needs a backbone with stages in `blocks` and a final `conv_head` "
                         f"(timm's EfficientNet family); {arch} has none")
    if not 0 < stages < len(backbone.blocks):
        raise ValueError(f"tail_stages: {arch} has {len(backbone.blocks)} stages, so at most "
                         f"{len(backbone.blocks) - 1} can train (got {stages})")
    cut = len(backbone.blocks) - stages
    stem = nn.Sequential(backbone.conv_stem, backbone.bn1, *backbone.blocks[:cut])
    tail = nn.Sequential(*backbone.blocks[cut:], backbone.conv_head, backbone.bn2)
    pool = parts.pool if not isinstance(parts.pool, nn.Identity) else backbone.global_pool
    with torch.no_grad():
        shape = stem.eval()(torch.zeros(1, 3, img_size, img_size)).shape[1:]
    return HeadParts(nn.Sequential(stem, nn.Flatten(1)), nn.Identity(), TailHead(tail, pool, parts.head, shape))


# head name -> fn(backbone, num_classes, global_pool, grid) -> HeadParts
HEADS: dict[str, Callable[..., HeadParts]] = {
    "extra_linear": _extra_linear,
    "replace": _replace,
    "class_attention": _class_attention,
}


class ImageModel(nn.Module):
    """``head(embed(x))``: ``embed`` is the (possibly frozen) backbone and its pooling, ``head`` the
    trained classifier (a Linear, or the class-attention head over regions)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: dict, pool: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.pool = pool if pool is not None else nn.Identity()
        self.head = head
        self.spec = dict(spec)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """What the head reads: ImageNet logits (extra_linear), pooled features (replace) or region
        features (class_attention)."""
        return self.pool(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Frozen during ``freeze_epochs``."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    def no_weight_decay(self) -> set[str]:
        """The backbone's decay-free tables (position embeddings ...), for timm's optimizer factory."""
        own = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{name}" for name in (own() if own is not None else ())}

    def group_matcher(self, coarse: bool = False) -> dict:
        """The backbone's layer groups (timm layer-wise lr decay); the head, unmatched, is the top layer."""
        own = getattr(self.backbone, "group_matcher", None)
        if own is None:
            raise AttributeError(f"group_matcher: timm model {self.spec.get('arch', '?')!r} defines none, "
                                 "so layer_decay cannot group its layers")
        return prefix_matcher(own(coarse=coarse), "backbone.")

    @property
    def config(self) -> ImageModelConfig:
        """The :class:`ImageModelConfig` the spec records (fields an older checkpoint lacks at their defaults)."""
        return ImageModelConfig.from_spec(self.spec)

    @property
    def data_config(self) -> dict:
        return dict(self.spec["data"])


def prefix_matcher(matcher: dict, prefix: str) -> dict:
    """A timm ``group_matcher`` dict with every regex moved under ``prefix`` (the wrapped module's name)."""
    escaped = prefix.replace(".", r"\.")

    def move(pattern):  # a regex, or timm's list of (regex, rank) pairs
        if isinstance(pattern, str):
            return "^" + escaped + "(?:" + pattern.removeprefix("^") + ")"  # '^a|b': b under prefix too
        return [(move(regex), rank) for regex, rank in pattern]
    return {key: move(value) for key, value in matcher.items()}


def _data_config(backbone: nn.Module, img_size: int | None, crop_mode: str = "center") -> dict:
    """timm's preprocessing for this backbone (mean/std/interpolation/crop), at ``img_size``.

    ``squash`` resizes the whole image to ``img_size`` (crop_pct 1: nothing is cut away).
    """
    from timm.data import resolve_data_config
    args = {"input_size": (3, img_size, img_size)} if img_size else {}
    if crop_mode == "squash":
        args.update(crop_mode="squash", crop_pct=1.0)
    cfg = resolve_data_config(args, model=backbone)
    return {"input_size": list(cfg["input_size"]), "interpolation": cfg["interpolation"],
            "mean": list(cfg["mean"]), "std": list(cfg["std"]), "crop_pct": float(cfg["crop_pct"]),
            "crop_mode": cfg.get("crop_mode", "center")}


def _timm_size_kwargs(arch: str, img_size: int | None) -> dict:
    """Models with a fixed input size (ViTs) must be built for ``img_size``; convnets take any size."""
    import timm
    cfg = timm.models.get_pretrained_cfg(arch)
    fixed = bool(cfg and getattr(cfg, "fixed_input_size", False))
    return {"img_size": img_size} if fixed and img_size else {}


def create_image_model(config: ImageModelConfig | str, num_classes: int = 20,
                       tta_views: Sequence[str] = DEFAULT_TTA_VIEWS, **kwargs) -> ImageModel:
    """The model ``config`` describes, for ``num_classes`` labels, predicting with ``tta_views``.

    ``config`` may be a timm name instead: the keyword arguments that are :class:`ImageModelConfig`
    fields complete it (``create_image_model("resnet18", head="replace", img_size=32)``); the other
    keyword arguments go to timm's ``create_model``. Weights come from :func:`resolve_pretrained`
    (raises ``OfflineWeightsError`` when only the hub could serve and it is offline).
    """
    import timm
    config, timm_kwargs = ImageModelConfig.and_timm_kwargs(config, kwargs)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: must be a positive integer (got {num_classes!r})")
    from mlc_utils.data.images import VIEWS
    unknown = [v for v in tta_views if v not in VIEWS]
    if unknown or not tta_views:
        raise ValueError(f"tta_views: must be a non-empty list of {sorted(VIEWS)} (got {list(tta_views)})")
    if not timm.is_model(config.name):
        import difflib
        close = difflib.get_close_matches(config.name, timm.list_models(), n=3)
        raise ValueError(f"name: '{config.name}' is not a timm model" + (f" (did you mean {close}?)" if close else ""))
    source = resolve_pretrained(config.name, config.pretrained)
    kwargs = {**config.timm_kwargs(), **_timm_size_kwargs(source.arch, config.img_size), **timm_kwargs}
    backbone = create_backbone(source, **kwargs)
    parts = HEADS[config.head](backbone, num_classes, config.global_pool, config.attention_grid)
    data = _data_config(parts.backbone, config.img_size, config.crop_mode)
    if config.tail_stages:
        parts = _split_tail(parts, config.tail_stages, data["input_size"][1])
    spec = {"kind": "image", **config.as_dict(), "arch": source.arch, "num_classes": num_classes,
            "timm_kwargs": timm_kwargs, "weights": source.ident,
            "data": data, "tta_views": list(tta_views)}
    return ImageModel(parts.backbone, parts.head, spec, parts.pool)


def build_image_model(spec: dict) -> ImageModel:
    """The model ``spec`` describes, randomly initialised (a checkpoint's weights are loaded next).

    The config is read back from the spec's fields (an older checkpoint's missing ones take their
    defaults) and built from the resolved ``arch`` without pretrained weights."""
    config = ImageModelConfig.from_spec({**spec, "name": spec["arch"], "pretrained": False})
    model = create_image_model(config, spec["num_classes"], spec.get("tta_views", DEFAULT_TTA_VIEWS),
                               **spec.get("timm_kwargs", {}))
    model.spec = dict(spec)
    return model


from mlc_utils.models import register_model_kind  # noqa: E402  (the registry imports this module lazily)

register_model_kind("image", build_image_model)
