"""Models the training loop trains, and the registry that rebuilds one from a checkpoint's ``spec``.

Every model carries ``spec`` (a JSON-able dict with at least ``kind`` and ``num_classes``).
Other stages (caption, fusion) add their builders to :data:`MODEL_BUILDERS` under their ``kind``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable

from mlc_utils.models.image_config import DEFAULT_TTA_VIEWS, ImageModelConfig

if TYPE_CHECKING:
    from torch import nn

# kind -> fn(spec) -> model; each kind's module registers its builder when imported
MODEL_BUILDERS: dict[str, Callable[[dict], "nn.Module"]] = {}

# the module of each kind (imported on first use: importing this package imports neither torch nor
# transformers, so params and ``validate`` stay light)
LAZY_KINDS: dict[str, str] = {
    "image": "mlc_utils.models.image",
    "caption": "mlc_utils.models.caption",
    "fusion": "mlc_utils.models.fusion",
    "fusion_head": "mlc_utils.models.fusion",
}

# the names this package gives, from the module that defines them (imported on first use)
_LAZY_NAMES = {
    **dict.fromkeys(("HEADS", "ImageModel", "build_image_model", "create_image_model"), "mlc_utils.models.image"),
    **dict.fromkeys(("PACKAGED_WEIGHTS", "OfflineWeightsError", "WeightSource", "lukemelas_to_timm",
                     "offline_choices", "resolve_pretrained"), "mlc_utils.models.weights"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    globals()[name] = value
    return value


# words of the specs saved before a rename -> the words now: a kind (``"kind": "text"``) or a key of a
# fusion spec (``"text": {...}``, ``"text_dim"``); :func:`current_spec` reads old checkpoints with it
RENAMED_IN_SPECS = {"text": "caption", "text_head": "caption_head", "text_dim": "caption_dim"}


def current_spec(spec: Any) -> Any:
    """``spec`` in the words of now (:data:`RENAMED_IN_SPECS`), its sub-models' specs too, so a checkpoint
    saved before the caption modality was renamed rebuilds and passes the identity check."""
    if not isinstance(spec, dict):
        return spec
    out = {}
    for key, value in spec.items():
        key = RENAMED_IN_SPECS.get(key, key)
        out[key] = RENAMED_IN_SPECS.get(value, value) if key == "kind" else current_spec(value)
    return out


def register_model_kind(kind: str, builder: Callable[[dict], "nn.Module"]) -> None:
    MODEL_BUILDERS[kind] = builder


def build_model(spec: dict) -> "nn.Module":
    """Rebuild the model a checkpoint's ``spec`` describes (weights not loaded)."""
    spec = current_spec(spec)
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in MODEL_BUILDERS and kind in LAZY_KINDS:
        importlib.import_module(LAZY_KINDS[kind])
    if kind not in MODEL_BUILDERS:
        raise ValueError(f"model spec kind {kind!r} has no builder; known kinds: {sorted(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[kind](spec)


__all__ = ["DEFAULT_TTA_VIEWS", "HEADS", "ImageModel", "ImageModelConfig", "MODEL_BUILDERS", "OfflineWeightsError",
           "PACKAGED_WEIGHTS", "WeightSource", "build_image_model", "build_model", "create_image_model", "current_spec",
           "lukemelas_to_timm", "offline_choices", "register_model_kind", "resolve_pretrained"]
