"""The one description of an image model: :class:`ImageModelConfig`, without torch.

Like transformers' ``PretrainedConfig`` (saved as ``config.json``, loaded back) and timm's one set of
``create_model`` keyword arguments, every place an image model is named reads or writes this
dataclass serialised with :func:`dataclasses.asdict`: a params file's ``image.models`` entry
(``study.params.ImageModelSpec`` adds the study's own keys to it), the ``model`` section of the
torchrun ``config.json``, a checkpoint's ``spec`` (its fields at the top level beside ``arch``,
``weights``, ``data``, ``tta_views``) and the feature-cache key. A new field is added here, with its
default and its check, and nowhere else.

The TTA views are not part of it: they are how a model predicts (the stage's ``image.tta``, or the
centre crop alone), not what the network or its cached features are; :func:`create_image_model`
takes them beside the config and the checkpoint's ``spec`` records them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Mapping, get_args

from mlc_utils.core.config import from_dict, require

DEFAULT_TTA_VIEWS = ("center", "hflip")
GLOBAL_POOLS = ("", "avg", "max", "avgmax", "catavgmax")  # timm's SelectAdaptivePool2d types; "" = the model's own
CROP_MODES = ("center", "squash")  # timm's evaluation crop modes this project offers
HeadName = Literal["extra_linear", "replace", "class_attention"]  # models.image.HEADS implements each

#: field metadata. TIMM: passed by its name to timm's ``create_model``. TRAINING_ONLY: changes training
#: alone, not what the backbone outputs in evaluation (the feature cache's key leaves it out)
TIMM = {"timm": True}
TRAINING_ONLY = {"features": False}


def check_pooling(head: str, global_pool: str) -> None:
    """The ``global_pool`` values a head accepts."""
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool: must be one of {list(GLOBAL_POOLS)} (got {global_pool!r})")
    if global_pool and head == "extra_linear":
        raise ValueError("global_pool: applies to head: replace (the extra_linear head keeps the pretrained "
                         f"ImageNet classifier and its pooling, so {global_pool!r} would not be used)")
    if global_pool and head == "class_attention":
        raise ValueError("global_pool: applies to head: replace (the class_attention head pools the feature map "
                         f"to its own grid of regions, so {global_pool!r} would not be used)")


@dataclass
class ImageModelConfig:
    """A timm backbone and its multi-label head (``models.image`` builds it)."""
    name: str                            # a timm model name
    pretrained: bool | str = False       # true (offline package or hub), false, or a checkpoint path
    head: HeadName = "extra_linear"
    img_size: int = 224
    crop_mode: Literal["center", "squash"] = "center"  # evaluation resize: squash keeps the whole image
    global_pool: str = ""                # timm pooling for head: replace ("" = the model's own; catavgmax)
    attention_grid: int = 3              # head: class_attention scores attention_grid x attention_grid regions
    # the backbone's last tail_stages stages (timm's EfficientNet ``blocks``) and its final convolution go
    # with the head: with mode frozen_backbone they train on cached activations of the stage before them
    tail_stages: int = 0
    drop_rate: float = field(default=0.0, metadata={**TIMM, **TRAINING_ONLY})  # dropout before the head
    drop_path_rate: float | None = field(default=None, metadata={**TIMM, **TRAINING_ONLY})  # stochastic depth (None: timm's)

    def check(self):
        require(bool(str(self.name).strip()), "name: must name a timm model")
        heads = get_args(HeadName)
        require(self.head in heads, f"head: must be one of {sorted(heads)} (got {self.head!r})")
        require(self.crop_mode in CROP_MODES, f"crop_mode: must be one of {list(CROP_MODES)} (got {self.crop_mode!r})")
        require(self.img_size >= 16, f"img_size: must be >= 16 (got {self.img_size})")
        require(0.0 <= self.drop_rate < 1.0, f"drop_rate: must be in [0, 1) (got {self.drop_rate})")
        require(self.drop_path_rate is None or 0.0 <= self.drop_path_rate < 1.0,
                f"drop_path_rate: must be in [0, 1) or null for the architecture's own (got {self.drop_path_rate})")
        require(isinstance(self.attention_grid, int) and not isinstance(self.attention_grid, bool)
                and self.attention_grid >= 1, f"attention_grid: must be an integer >= 1 (got {self.attention_grid!r})")
        require(isinstance(self.tail_stages, int) and not isinstance(self.tail_stages, bool) and self.tail_stages >= 0,
                f"tail_stages: must be an integer >= 0 (got {self.tail_stages!r})")
        require(not self.tail_stages or self.head != "extra_linear",
                "tail_stages: trains the backbone's last stages with head: replace or class_attention (extra_linear "
                "keeps the ImageNet classifier, which the tail would have to feed)")
        check_pooling(self.head, self.global_pool)

    def model_config(self) -> ImageModelConfig:
        """This config's own fields as a plain :class:`ImageModelConfig` (a subclass's extras dropped)."""
        return ImageModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ImageModelConfig)})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self.model_config())

    def timm_kwargs(self) -> dict:
        """The fields timm's ``create_model`` takes by their own names."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ImageModelConfig) if f.metadata.get("timm")}

    def feature_identity(self) -> dict:
        """The fields the backbone's output (a feature-cache row) depends on, serialised."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ImageModelConfig)
                if f.metadata.get("features", True)}

    @classmethod
    def from_spec(cls, spec: Mapping, where: str = "spec") -> ImageModelConfig:
        """The config a mapping holds among other keys (a checkpoint's ``spec``); fields it lacks (an
        older checkpoint) keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return from_dict(cls, {k: v for k, v in spec.items() if k in names and v is not None}, where)

    @classmethod
    def and_timm_kwargs(cls, config: ImageModelConfig | str, kwargs: Mapping) -> tuple[ImageModelConfig, dict]:
        """``(config, timm's keyword arguments)``, checked: ``config`` as given, or a timm name that the
        keyword arguments which are fields complete; the other keyword arguments are timm's."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in kwargs.items() if k in names}
        if isinstance(config, str):
            config = cls(config, **given)
        elif given:
            raise TypeError(f"{sorted(given)}: fields of the ImageModelConfig given, set them there")
        config.check()
        return config, {k: v for k, v in kwargs.items() if k not in names}
