"""The study's parameters: one YAML file per profile, validated in one place.

A params file has common keys (``run``, ``data_dir``, ``num_classes``, ``seed`` ...) and one
section per stage. ``load_params(path, overrides)`` returns a :class:`StudyParams`; every notebook
calls it with the file and the ``--set`` overrides papermill injected, so a typo fails before any
work with the parameter's full name.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from mlc_utils.core.config import (  # noqa: F401  (ParamError is re-exported)
    ParamError,
    RenamedWarning,
    check_device_name,
    current_choice,
    current_keys,
    from_dict,
    old_keys,
    renamed,
    renamed_from,
    require,
    to_dict,
)
from mlc_utils.models.caption_config import CaptionModelConfig
from mlc_utils.models.image_config import ImageModelConfig
from mlc_utils.study.stages import DEFAULT_STAGES, RENAMED_STAGES, STAGE_NAMES
from mlc_utils.train.config import TrainConfig, TrainSettings, merge_settings


@dataclass
class EdaParams:
    n_examples: int = 8          # sample images shown with their captions and labels
    image_size_sample: int = 500  # images whose size is read for the size plot (0 = all)

    def check(self):
        require(self.n_examples >= 0, f"n_examples: must be >= 0 (got {self.n_examples})")
        require(self.image_size_sample >= 0, f"image_size_sample: must be >= 0 (got {self.image_size_sample})")


@dataclass
class SplitParams:
    val_fraction: float = 0.2
    method: Literal["iterative", "random"] = "iterative"  # iterative = scikit-multilearn stratification
    # 0: the holdout above trains and scores every model. K >= 2: K iterative-stratified folds over all
    # labelled rows; every member is trained once per fold and scored out-of-fold, and fusion heads,
    # weights and thresholds learn from out-of-fold outputs only
    folds: int = 0

    def check(self):
        require(0.0 < self.val_fraction < 1.0, f"val_fraction: must be in (0, 1) (got {self.val_fraction})")
        require(self.folds == 0 or self.folds >= 2,
                f"folds: 0 (holdout only) or the number of cross-validation folds, >= 2 (got {self.folds})")


@dataclass
class ImageModelSpec(ImageModelConfig):
    """One backbone to train in the image stage: its :class:`ImageModelConfig` (name, pretrained, head,
    img_size ...: the model's own keys, defaults and checks) and how the study trains and names it;
    ``train`` overrides the stage-wide ``image.train``."""
    # frozen_backbone: the backbone's features computed once (cached), a head trained on them
    mode: Literal["finetune", "frozen_backbone"] = field(default="finetune",
                                                         metadata=renamed_from(frozen="frozen_backbone"))
    label: str = ""                      # display name in tables (default: name)
    auto_augment: str = "rand-m9-mstd0.5"  # timm RandAugment policy for fine-tuning; "" = off
    tta: bool = True                     # average the stage's ``tta`` views (else centre crop only)
    teacher: str = ""                    # checkpoint of a teacher for knowledge distillation
    train: TrainSettings = field(default_factory=TrainSettings)  # over the stage's image.train

    def check(self):
        super().check()
        if not self.label:
            self.label = self.name


# image.launcher -> how many torchrun processes fine-tuning uses for image.gpus (0: in-process)
LAUNCHERS = {"auto": lambda gpus: gpus if gpus > 1 else 0, "torchrun": lambda gpus: max(gpus, 1)}


@dataclass
class ImageStageParams:
    models: list[ImageModelSpec] = field(default_factory=list)
    train: TrainSettings = field(default_factory=TrainSettings)  # shared by all models
    tta: list[str] = field(default_factory=lambda: ["center", "hflip"])
    gpus: int = 0                                # >1: launch through torchrun with this many processes
    # auto: torchrun when gpus > 1, else in the notebook's process. torchrun: always, with max(gpus, 1)
    # processes, so one GPU trains through torchrun, NCCL and DDP exactly as several do
    launcher: Literal["auto", "torchrun"] = "auto"
    cache_dir: str = "cache"                     # feature cache (shared between runs)
    n_examples: int = 6

    def torchrun_processes(self) -> int:
        """Processes fine-tuning starts through torchrun; 0 trains in the notebook's process."""
        return LAUNCHERS[self.launcher](self.gpus)

    def check(self):
        require(self.gpus >= 0, f"gpus: must be >= 0 (got {self.gpus})")
        require(self.launcher in LAUNCHERS, f"launcher: must be one of {sorted(LAUNCHERS)} (got {self.launcher!r})")
        require(self.n_examples >= 0, f"n_examples: must be >= 0 (got {self.n_examples})")
        labels = [m.label for m in self.models]
        require(len(set(labels)) == len(labels), f"models: labels must be unique (got {labels})")
        from mlc_utils.data.images import VIEWS
        bad = [v for v in self.tta if v not in VIEWS]
        require(self.tta and not bad, f"tta: views must be among {sorted(VIEWS)} (got {self.tta})")
        for i, model in enumerate(self.models):  # the merged settings too, so a clash fails at load time
            merge_settings(f"image.models[{i}].train", self.train, model.train)


@dataclass
class FusionStageParams:
    heads: list[Literal["concat", "bilinear"]] = field(default_factory=lambda: ["concat", "bilinear"])
    fusion_input: Literal["logits", "features"] = "logits"   # what the heads read from each sub-model
    # frozen_submodels: the heads train on the sub-models' saved outputs; end_to_end: everything trains
    mode: Literal["frozen_submodels", "end_to_end"] = field(default="frozen_submodels",
                                                            metadata=renamed_from(frozen="frozen_submodels"))
    image_model: str = ""    # label of the image model to fuse (default: the best on validation)
    train: TrainSettings = field(default_factory=TrainSettings)  # over the heads' defaults (_fusion_head_training)

    def check(self):
        require(len(set(self.heads)) == len(self.heads) and self.heads, f"heads: one or more of concat, bilinear "
                                                                         f"without repeats (got {self.heads})")

    def training(self, **defaults) -> TrainConfig:
        """The TrainConfig of every fusion head: ``defaults`` (seed, threshold, device), the heads'
        defaults, then ``train``."""
        return merge_settings("fusion.train", defaults, _fusion_head_training(), self.train)


def _fusion_head_training() -> TrainSettings:
    # heads on a few thousand rows of logits: many short epochs at a high rate (measured on the demo
    # data: 20 epochs at 1e-3 left the concat head below the caption model, 60 at 1e-2 well above)
    return TrainSettings(epochs=60, lr=1e-2, batch_size=64, scheduler="cosine", weight_decay=1e-3)


@dataclass
class AblationStageParams:
    base: str = ""           # label of the image model whose configuration is ablated (default: first)
    switches: list[Literal["mixup", "randaugment", "tta", "loss"]] = field(
        default_factory=lambda: ["mixup", "randaugment", "tta", "loss"])
    alt_loss: Literal["bce", "weighted_bce", "focal", "asl"] = "asl"   # the loss the 'loss' switch moves to
    train: TrainSettings = field(default_factory=TrainSettings)  # over the base model's (e.g. fewer epochs)

    def check(self):
        require(len(set(self.switches)) == len(self.switches), f"switches: repeated (got {self.switches})")


def _caption_training() -> TrainSettings:
    # A fresh head at a fine-tuning rate learns too slowly in a few hundred steps: on the dev captions
    # (8,000 train, batch 64) one epoch at 1e-4 reached 0.67 val sample-F1; one head-only epoch at
    # 3e-3 0.79, at 1e-2 0.84, then one fine-tuning epoch at 1e-4 0.86. So the head goes first, fast:
    # lr is the rate of the head-only epochs (encoder frozen), after_freeze_lr the fine-tuning rate.
    return TrainSettings(epochs=3, batch_size=64, lr=1e-2, freeze_epochs=1, after_freeze_lr=1e-4,
                         weight_decay=0.01, scheduler="cosine", warmup_epochs=0)


def _caption_head_training() -> TrainSettings:
    # the linear head on cached sentence embeddings: 8,000 x 384 inputs, a second an epoch on a CPU
    return TrainSettings(epochs=30, batch_size=256, lr=1e-2, weight_decay=1e-4, scheduler="cosine",
                         warmup_epochs=0)


CAPTION_MEMBER_KINDS = ("finetune", "frozen_encoder", "tfidf")
RENAMED_CAPTION_KINDS = {"frozen": "frozen_encoder"}   # old kind -> kind now (params files, member names)


@dataclass
class CaptionStageParams(CaptionModelConfig):
    """The caption members: which (``members``), the encoder they share (the
    :class:`~mlc_utils.models.caption_config.CaptionModelConfig` fields: ``model_name``, ``pooling``,
    ``max_length``, ``cleaning``, ...), and how each is trained.

    ``finetune`` fine-tunes the encoder (``train``); ``frozen_encoder`` runs it once over every caption and
    trains a linear head on the pooled embeddings (``head_train``), cheap enough for K folds on a
    CPU; ``tfidf`` is word and character n-grams with a logistic regression per label (``tfidf_c``).
    """
    members: list[Literal["finetune", "frozen_encoder", "tfidf"]] = field(
        default_factory=lambda: ["finetune"], metadata=renamed_from(**RENAMED_CAPTION_KINDS))
    train: TrainSettings = field(default_factory=_caption_training)
    head_train: TrainSettings = field(default_factory=_caption_head_training)
    tfidf_c: float = 8.0                    # inverse L2 strength of the tfidf member's regressions

    def check(self):
        super().check()
        require(bool(self.members), f"members: name at least one of {list(CAPTION_MEMBER_KINDS)}")
        require(len(set(self.members)) == len(self.members), f"members: repeated (got {self.members})")
        require(self.tfidf_c > 0, f"tfidf_c: must be > 0 (got {self.tfidf_c})")

    def training(self, **defaults) -> TrainConfig:
        """The TrainConfig of the fine-tuned caption model: ``defaults`` (seed, threshold), then its
        defaults, then ``train``."""
        return merge_settings("caption.train", defaults, _caption_training(), self.train)

    def head_training(self, **defaults) -> TrainConfig:
        """The TrainConfig of the frozen_encoder member's head: ``defaults``, its defaults, then ``head_train``."""
        return merge_settings("caption.head_train", defaults, _caption_head_training(), self.head_train)


# --- the names of the members the ensemble can choose (``ensemble.members``) ---------------------
# The stages name their members by these rules (study/caption.py, study/fusion.py);
# ``ensemble.members`` is checked against them when params load, not when stage 7 runs.
LATE_FUSION_MEMBER = "late fusion"


def caption_member_name(model_name: str, kind: str = "finetune") -> str:
    """``caption:<encoder>`` for the fine-tuned model (the paper's BERT row), a suffix for the others."""
    if kind == "tfidf":
        return "caption:tfidf"
    name = "caption:" + Path(str(model_name)).name
    return name if kind == "finetune" else f"{name}-{kind}"


def fusion_member_name(head: str, mode: str = "frozen_submodels") -> str:
    return f"fusion:{head}" + ("-e2e" if mode == "end_to_end" else "")


def renamed_member_names(params: "StudyParams") -> dict[str, str]:
    """Member names of before a rename -> the names now (``caption:<encoder>-frozen`` is now
    ``caption:<encoder>-frozen_encoder``), so ``ensemble.members`` of older params files keep working."""
    model = params.caption.model_name
    return {caption_member_name(model, old): caption_member_name(model, new) for old, new in RENAMED_CAPTION_KINDS.items()}


def ensemble_candidates(params: "StudyParams") -> list[str]:
    """Every member name the image, caption and fusion stages can save with these params."""
    return ([m.label or m.name for m in params.image.models]
            + [caption_member_name(params.caption.model_name, kind) for kind in params.caption.members]
            + [fusion_member_name(head, params.fusion.mode) for head in params.fusion.heads] + [LATE_FUSION_MEMBER])


@dataclass
class EnsembleStageParams:
    members: list[str] = field(default_factory=list)   # probability sets by name; empty = every one saved
    weights: Literal["equal", "score", "optimized"] = "score"
    per_class_thresholds: bool = False


@dataclass
class InferenceParams:
    """How every pass of a model over a dataset runs (``mlc_utils.core.inference``) on the study's
    ``device``; 0, -1 and auto choose for the device (CPU: 16 images a batch, no workers, fp32;
    CUDA: 128 images, 8 workers, bf16 where the card has it natively, else fp16). ``runtime``: auto
    runs large fp32 passes over images or captions on the CPU under OpenVINO where it is installed and matches torch
    (``core.openvino``), torch keeps every pass on torch, openvino tries it for every CPU pass."""
    batch_size: int = 0
    num_workers: int = -1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    runtime: Literal["auto", "torch", "openvino"] = "auto"

    def check(self):
        require(self.batch_size >= 0, f"batch_size: must be >= 0, 0 = chosen for the device (got {self.batch_size})")
        require(self.num_workers >= -1, f"num_workers: must be >= -1, -1 = chosen for the device (got {self.num_workers})")


@dataclass
class StudyParams:
    run: str = "demo"
    data_dir: str = "data/demo"
    num_classes: int = 20
    class_names: list[str] = field(default_factory=list)
    seed: int = 3407
    threshold: float = 0.5
    # where every model trains and runs: auto = CUDA when visible, else the CPU; cpu; cuda; cuda:N
    device: str = "auto"
    inference: InferenceParams = field(default_factory=InferenceParams)
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES), metadata=renamed_from(**RENAMED_STAGES))
    eda: EdaParams = field(default_factory=EdaParams)
    split: SplitParams = field(default_factory=SplitParams)
    image: ImageStageParams = field(default_factory=ImageStageParams)
    caption: CaptionStageParams = field(default_factory=CaptionStageParams, metadata=renamed_from("text"))
    fusion: FusionStageParams = field(default_factory=FusionStageParams)
    ablation: AblationStageParams = field(default_factory=AblationStageParams)
    ensemble: EnsembleStageParams = field(default_factory=EnsembleStageParams)
    source: str = ""          # the params file this came from (set by load_params)

    def check(self):
        require(bool(self.run) and all(c.isalnum() or c in "-_." for c in self.run),
                f"run: must be a plain name of letters, digits, '-', '_' or '.' (got {self.run!r})")
        require(self.num_classes >= 1, f"num_classes: must be >= 1 (got {self.num_classes})")
        require(not self.class_names or len(self.class_names) == self.num_classes,
                f"class_names: {len(self.class_names)} names for num_classes={self.num_classes}")
        require(0.0 < self.threshold < 1.0, f"threshold: must be in (0, 1) (got {self.threshold})")
        require(self.seed >= 0, f"seed: must be >= 0 (got {self.seed})")
        check_device_name(self.device, "device")
        for where, settings in self.train_sections():
            require(settings.device is None, f"{where}.device: the study has one device, the top-level "
                                             f"'device' key (got {settings.device!r} here)")
        needs_models = [s for s in ("image", "fusion", "ablation", "ensemble") if s in self.stages]
        require(self.image.models or not needs_models,
                f"image.models: is empty, but stage(s) {', '.join(needs_models)} need at least one image model")
        require(not self.ablation.base or any(m.label == self.ablation.base for m in self.image.models),
                f"ablation.base: '{self.ablation.base}' is not one of the image models "
                f"{[m.label for m in self.image.models]}")
        require(not self.fusion.image_model or any(m.label == self.fusion.image_model for m in self.image.models),
                f"fusion.image_model: '{self.fusion.image_model}' is not one of the image models "
                f"{[m.label for m in self.image.models]}")
        for i, stage in enumerate(self.stages):
            close = difflib.get_close_matches(stage, STAGE_NAMES, n=1)
            require(stage in STAGE_NAMES, f"stages[{i}]: {stage!r} is not one of {' | '.join(map(repr, STAGE_NAMES))}"
                                          + (f" (did you mean {close[0]!r}?)" if close else ""))
        candidates, renames = ensemble_candidates(self), renamed_member_names(self)
        self.ensemble.members = [current_choice(name, renames, f"ensemble.members[{i}]")
                                 for i, name in enumerate(self.ensemble.members)]
        for i, name in enumerate(self.ensemble.members):
            close = difflib.get_close_matches(str(name), candidates, n=1)
            require(name in candidates, f"ensemble.members[{i}]: {name!r} is not a member these stages save "
                                        f"({', '.join(map(repr, candidates))})"
                                        + (f" (did you mean {close[0]!r}?)" if close else ""))
        self.caption.training()  # the caption stage's training fields, checked before any work
        self.caption.head_training()
        if self.split.folds:
            require(self.fusion.mode == "frozen_submodels", f"fusion.mode: end_to_end is not cross-validated; use "
                                                            f"frozen_submodels with split.folds: {self.split.folds}")
            require(self.fusion.fusion_input == "logits",
                    f"fusion.fusion_input: the heads read out-of-fold outputs, which are logits; 'features' "
                    f"needs split.folds: 0 (got split.folds: {self.split.folds})")

    def training_defaults(self) -> dict:
        """What every TrainConfig of the study starts from: its seed, threshold and device."""
        return {"seed": self.seed, "threshold": self.threshold, "device": self.device}

    def train_sections(self):
        """(params path, TrainSettings) of every ``train:`` section."""
        yield "image.train", self.image.train
        for i, model in enumerate(self.image.models):
            yield f"image.models[{i}].train", model.train
        for where in ("caption.train", "caption.head_train", "fusion.train", "ablation.train"):
            section, name = where.split(".")
            yield where, getattr(getattr(self, section), name)

    def data_path(self, root: str | os.PathLike | None = None) -> Path:
        """``data_dir`` resolved against ``root`` (the project folder) when relative."""
        path = Path(self.data_dir).expanduser()
        return path if path.is_absolute() or root is None else Path(root) / path

    def section(self, stage: str) -> Any:
        return getattr(self, stage)


def parse_override(text: str) -> tuple[str, Any]:
    """``image.train.epochs=3`` -> (``"image.train.epochs"``, 3); the value is read as YAML."""
    if "=" not in text:
        raise ParamError(f"--set {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ParamError(f"--set {text!r}: empty KEY")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ParamError(f"--set {key}: value {raw!r} is not valid YAML ({err})") from None
    return key, value


def apply_overrides(data: dict, overrides: Mapping[str, Any] | Sequence[str], cls: type | None = None) -> dict:
    """Set dotted keys in a nested mapping (a copy). Unknown keys are caught later by validation; a key
    may start with the old name of a section of ``cls`` (it is set under the new one, with a warning)."""
    data = yaml.safe_load(yaml.safe_dump(data)) or {}
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    sections = old_keys(cls) if cls is not None else {}
    for key, value in items:
        node = data
        parts = key.split(".")
        if parts[0] in sections:
            parts[0] = renamed(parts[0], sections[parts[0]], f"--set {key}")
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ParamError(f"--set {key}: '{part}' is not a section")
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def read_params_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"params file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ParamError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamError(f"{path}: expected a mapping of parameters at the top level")
    return data


def load_params(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | Sequence[str] = ()) -> StudyParams:
    """Read, override and validate. Errors name the file and the parameter."""
    data = read_params_file(path) if path else {}
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # the file's old section names first, so an old --set key lands in the section the file gives
            data = apply_overrides(current_keys(StudyParams, data), overrides, StudyParams)
            params = from_dict(StudyParams, data)
    except ParamError as err:
        raise ParamError(f"{path or 'params'}: {err}") from None
    finally:
        _warn_naming_file(caught, path)
    params.source = str(path or "")
    return params


def _warn_naming_file(caught: list, path) -> None:
    """Warn again what reading ``path`` warned, a renamed key of the file with the file's name in front
    (an old name given with ``--set`` says so itself)."""
    for w in caught:
        message = str(w.message)
        if issubclass(w.category, RenamedWarning):
            prefix = f"{path}: " if path and not message.startswith("--set") else ""
            warnings.warn(prefix + message, w.category, stacklevel=3)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def params_as_dict(params: StudyParams) -> dict:
    data = to_dict(params)
    data.pop("source", None)
    return data


def stage_fingerprint(params: StudyParams, stage: str) -> dict:
    """What a stage's result depends on among the parameters: the common keys and its own section."""
    data = params_as_dict(params)
    common = {k: v for k, v in data.items() if k not in STAGE_NAMES and k != "stages"}
    return {"common": common, stage: data.get(stage, {})}  # a stage without a section (explore)


def replace(params: StudyParams, **changes) -> StudyParams:
    return dataclasses.replace(params, **changes)
