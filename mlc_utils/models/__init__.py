"""Models the engine trains, and the registry that rebuilds one from a checkpoint's ``spec``.

Every model carries ``spec`` (a JSON-able dict with at least ``kind`` and ``num_classes``).
Other stages (text, fusion) add their builders to :data:`MODEL_BUILDERS` under their ``kind``.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from mlc_utils.models.image import (
    DEFAULT_TTA_VIEWS,
    HEADS,
    ImageModel,
    build_image_model,
    create_image_model,
)
from mlc_utils.models.weights import (
    PACKAGED_WEIGHTS,
    OfflineWeightsError,
    WeightSource,
    lukemelas_to_timm,
    offline_choices,
    resolve_pretrained,
)

MODEL_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "image": build_image_model,
}


# kinds whose module registers its builder when imported (imported on first use, keeping torch-only
# users free of transformers)
LAZY_KINDS: dict[str, str] = {
    "text": "mlc_utils.models.text",
    "fusion": "mlc_utils.models.fusion",
    "fusion_head": "mlc_utils.models.fusion",
}


def register_model_kind(kind: str, builder: Callable[[dict], nn.Module]) -> None:
    MODEL_BUILDERS[kind] = builder


def build_model(spec: dict) -> nn.Module:
    """Rebuild the model a checkpoint's ``spec`` describes (weights not loaded)."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in MODEL_BUILDERS and kind in LAZY_KINDS:
        import importlib
        importlib.import_module(LAZY_KINDS[kind])
    if kind not in MODEL_BUILDERS:
        raise ValueError(f"model spec kind {kind!r} has no builder; known kinds: {sorted(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[kind](spec)


__all__ = ["DEFAULT_TTA_VIEWS", "HEADS", "ImageModel", "MODEL_BUILDERS", "OfflineWeightsError",
           "PACKAGED_WEIGHTS", "WeightSource", "build_image_model", "build_model", "create_image_model",
           "lukemelas_to_timm", "offline_choices", "register_model_kind", "resolve_pretrained"]
