"""The one description of a caption model: :class:`CaptionModelConfig`, without torch.

As :class:`mlc_utils.models.image_config.ImageModelConfig` does for image models: the params file's
``caption`` section (``study.params.CaptionStageParams`` adds the stage's own keys to it), a checkpoint's
``spec`` (its fields at the top level beside ``kind`` and ``num_classes``) and the dataset the model
reads (its ``max_length`` and ``cleaning``) are this dataclass serialised. A new field is added
here, with its default and its check, and nowhere else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Mapping, get_args

from mlc_utils.core.config import from_dict, require
from mlc_utils.data.captions import CaptionCleaner

DEFAULT_CAPTION_MODEL = "all-MiniLM-L6-v2"
PoolingName = Literal["mean", "cls"]  # models.caption.POOLINGS implements each


@dataclass
class CaptionModelConfig:
    """A transformers encoder, its pooling and a linear head, with the preprocessing of its captions."""
    model_name: str = DEFAULT_CAPTION_MODEL   # a packaged name, a local folder or a hub id
    pretrained: bool = True                   # false: a tiny random BERT (tests, smoke runs)
    pooling: PoolingName = "mean"
    dropout: float = 0.1
    max_length: int = 48
    cleaning: CaptionCleaner = field(default_factory=CaptionCleaner)

    def check(self):
        require(bool(str(self.model_name).strip()), "model_name: must not be empty")
        require(self.pooling in get_args(PoolingName),
                f"pooling: must be one of {list(get_args(PoolingName))} (got {self.pooling!r})")
        require(0.0 <= self.dropout < 1.0, f"dropout: must be in [0, 1) (got {self.dropout})")
        require(2 <= self.max_length <= 512, f"max_length: must be in 2..512 (got {self.max_length})")
        self.cleaning.check()

    def model_config(self) -> CaptionModelConfig:
        """This config's own fields as a plain :class:`CaptionModelConfig` (a subclass's extras dropped)."""
        return CaptionModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(CaptionModelConfig)})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self.model_config())

    @classmethod
    def from_spec(cls, spec: Mapping, where: str = "spec") -> CaptionModelConfig:
        """The config a mapping holds among other keys (a checkpoint's ``spec``); fields it lacks keep
        their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return from_dict(cls, {k: v for k, v in spec.items() if k in names and v is not None}, where)

    @classmethod
    def resolve(cls, config: CaptionModelConfig | str, fields: Mapping) -> CaptionModelConfig:
        """``config`` as given, or a model name that ``fields`` complete; checked."""
        if isinstance(config, str):
            config = cls(config, **fields)
        elif fields:
            raise TypeError(f"{sorted(fields)}: fields of the CaptionModelConfig given, set them there")
        config.check()
        return config.model_config()
