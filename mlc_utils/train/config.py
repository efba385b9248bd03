"""The training configuration: every switch of :func:`mlc_utils.train.loop.fit`, typed and checked.

This module imports no torch, so parameters are checked (and ``run --help`` answers) without it.
The choices of ``optimizer``, ``scheduler``, ``loss`` and ``amp_dtype`` are the ``Literal`` types
below; the training loop's registries implement exactly those names (a test holds them equal).
:class:`TrainSettings` is the same set of fields, each optional: what a params file's ``train:``
section gives, merged over the stage's defaults into one :class:`TrainConfig`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from mlc_utils.core.config import check_device_name, from_dict

# the fields whose values name an entry of one of the training loop's registries
CHOICES = ("optimizer", "scheduler", "schedule_unit", "loss", "amp_dtype")


@dataclass
class TrainConfig:
    """Everything :func:`fit` needs; defaults follow the paper where it states them.

    Paper: StepLR, mixup alpha 0.4, seed 3407, freeze epochs, label smoothing, KD, TTA. The
    defaults of lr, epochs, batch size and step schedule are this project's (CPU-sized); the
    paper's run (20 epochs, lr 1e-5, step 8, gamma 0.5) is ``params/comp5329-gpu.yaml``.
    ``batch_size`` is per process.
    """
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int | None = None          # default: 2 x batch_size
    lr: float = 1e-4
    weight_decay: float = 1e-2
    # adamw / sgd: one group, every parameter decayed (the paper's). timm_adamw: timm's optimizer
    # factory, no decay on norms, biases and the model's no_weight_decay() tables (position / relative
    # position), and layer_decay when set: how large transformers are fine-tuned (BEiT, Swin, timm).
    optimizer: Literal["adamw", "sgd", "timm_adamw"] = "adamw"
    momentum: float = 0.9                       # sgd only
    layer_decay: float | None = None            # timm_adamw: lr x layer_decay^(layers above); None = off
    scheduler: Literal["step", "cosine", "none"] = "step"
    # epoch: a LambdaLR stepped once per epoch (the paper's StepLR). step: timm's scheduler stepped
    # at every optimizer update (warmup_steps from warmup_lr, then cosine to min_lr, or step decays).
    schedule_unit: Literal["epoch", "step"] = "epoch"
    step_size: int = 3                          # epochs between StepLR decays
    gamma: float = 0.1                          # StepLR decay factor
    warmup_epochs: int = 0                      # schedule_unit epoch only
    warmup_steps: int = 0                       # schedule_unit step only: linear warmup updates
    warmup_lr: float = 0.0                      # schedule_unit step: the lr warmup starts from
    min_lr: float = 0.0                         # schedule_unit step, cosine: the lr it ends at
    seed: int = 3407
    freeze_epochs: int = 0                      # epochs with backbone_parameters() frozen
    after_freeze_lr: float | None = None        # learning rate once unfrozen (default: lr)
    mixup: bool = False                         # timm Mixup on image tensors (multi-label mode)
    mixup_alpha: float = 0.4
    label_smoothing: float = 0.0                # binary: targets move towards 0.5
    loss: Literal["bce", "weighted_bce", "focal", "asl"] = "bce"
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    kd_alpha: float = 0.5                       # weight of the distillation term (teacher given)
    kd_temp: float = 2.0
    amp: bool = True                            # autocast on CUDA (ignored on CPU)
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"  # float16 adds a GradScaler
    ema: bool = False                           # evaluate and keep EMA weights (timm ModelEmaV3)
    ema_decay: float = 0.999
    grad_accum: int = 1
    max_grad_norm: float = 0.0                  # 0 = no clipping
    threshold: float = 0.5                      # decision threshold of the validation scores
    num_workers: int = 0
    device: str = "auto"                        # auto | cpu | cuda | cuda:N
    resume: bool = False                        # continue from out_dir/last.pt when present
    max_steps_per_epoch: int | None = None      # cap optimizer steps per epoch (quick runs)
    restore_best: bool = True                   # model holds the best epoch's weights on return
    progress: bool = True                       # tqdm bars

    def check(self) -> None:
        def need(ok: bool, message: str):
            if not ok:
                raise ValueError(message)
        for name in ("epochs", "freeze_epochs", "warmup_epochs", "warmup_steps", "num_workers"):
            need(getattr(self, name) >= 0, f"{name}: must be >= 0 (got {getattr(self, name)})")
        for name in ("batch_size", "grad_accum", "step_size"):
            need(getattr(self, name) >= 1, f"{name}: must be >= 1 (got {getattr(self, name)})")
        need(self.eval_batch_size is None or self.eval_batch_size >= 1,
             f"eval_batch_size: must be >= 1 (got {self.eval_batch_size})")
        need(self.lr > 0, f"lr: must be > 0 (got {self.lr})")
        need(self.after_freeze_lr is None or self.after_freeze_lr > 0,
             f"after_freeze_lr: must be > 0 (got {self.after_freeze_lr})")
        need(self.weight_decay >= 0, f"weight_decay: must be >= 0 (got {self.weight_decay})")
        need(0.0 < self.threshold < 1.0, f"threshold: must be in (0, 1) (got {self.threshold})")
        need(0.0 <= self.label_smoothing < 1.0, f"label_smoothing: must be in [0, 1) (got {self.label_smoothing})")
        need(self.mixup_alpha > 0, f"mixup_alpha: must be > 0 (got {self.mixup_alpha})")
        need(0.0 <= self.kd_alpha <= 1.0, f"kd_alpha: must be in [0, 1] (got {self.kd_alpha})")
        need(self.kd_temp > 0, f"kd_temp: must be > 0 (got {self.kd_temp})")
        need(0.0 < self.ema_decay < 1.0, f"ema_decay: must be in (0, 1) (got {self.ema_decay})")
        need(0.0 < self.gamma <= 1.0, f"gamma: must be in (0, 1] (got {self.gamma})")
        for name in ("warmup_lr", "min_lr"):
            need(getattr(self, name) >= 0, f"{name}: must be >= 0 (got {getattr(self, name)})")
        need(self.layer_decay is None or 0.0 < self.layer_decay <= 1.0,
             f"layer_decay: must be in (0, 1] or null (got {self.layer_decay})")
        need(self.layer_decay is None or self.optimizer in TIMM_OPTIMIZERS,
             f"layer_decay: needs optimizer: {' or '.join(TIMM_OPTIMIZERS)} (timm's parameter groups; "
             f"got optimizer: {self.optimizer!r})")
        need(self.schedule_unit == "step" or not self.warmup_steps,
             f"warmup_steps: counts optimizer updates, so it needs schedule_unit: step "
             f"(got schedule_unit: {self.schedule_unit!r}; use warmup_epochs)")
        need(self.schedule_unit == "epoch" or not self.warmup_epochs,
             "warmup_epochs: counts epochs, so it needs schedule_unit: epoch (with schedule_unit: step "
             f"give warmup_steps; got warmup_epochs: {self.warmup_epochs})")
        need(self.max_grad_norm >= 0, f"max_grad_norm: must be >= 0 (got {self.max_grad_norm})")
        need(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
             f"max_steps_per_epoch: must be >= 1 or null (got {self.max_steps_per_epoch})")
        for name in CHOICES:
            allowed = choices(name)
            need(getattr(self, name) in allowed,
                 f"{name}: must be one of {sorted(allowed)} (got {getattr(self, name)!r})")
        check_device_name(self.device, "device")

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None, where: str = "train") -> "TrainConfig":
        """Typed and checked, rejecting unknown keys with a did-you-mean (``mlc_utils.core.config``)."""
        return from_dict(cls, mapping or {}, where)



# optimizers built by timm's factory (parameter groups: decay-free 1-d and no_weight_decay(), layer_decay)
TIMM_OPTIMIZERS = ("timm_adamw",)

# the files a model's out_dir holds after training (THE names: the loop, the heads on features and the
# study's members read them here)
LAST_CHECKPOINT = "last.pt"   # every epoch: the resumable state
BEST_CHECKPOINT = "best.pt"   # the best epoch by validation sample-F1, in the same format
WHOLE_MODEL = "model.pt"      # a head trained on saved features, saved with its frozen backbone or encoder

# fields that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = frozenset({"epochs", "resume", "num_workers", "device", "progress", "eval_batch_size",
                               "restore_best"})



def choices(name: str) -> tuple:
    """The allowed values of a ``Literal`` field of :class:`TrainConfig` (e.g. ``choices("loss")``)."""
    return typing.get_args(typing.get_type_hints(TrainConfig)[name])


def _optional(tp):
    return tp if type(None) in typing.get_args(tp) else tp | None


#: A params file's ``train:`` section: any :class:`TrainConfig` field, each left unset (None) by default.
TrainSettings = dataclasses.make_dataclass(
    "TrainSettings",
    [(f.name, _optional(typing.get_type_hints(TrainConfig)[f.name]), dataclasses.field(default=None))
     for f in dataclasses.fields(TrainConfig)],
    namespace={
        "__doc__": "The training fields a params section sets (unset fields are None and take the defaults).",
        "given": lambda self: {k: v for k, v in dataclasses.asdict(self).items() if v is not None},
        "check": lambda self: TrainConfig(**self.given()).check(),
    })
TrainSettings.__module__ = __name__


def merge_settings(where: str, *layers: Mapping[str, Any] | "TrainSettings") -> TrainConfig:
    """One :class:`TrainConfig` from defaults and ``train:`` sections, later layers winning."""
    values: dict = {}
    for layer in layers:
        values.update(layer.given() if hasattr(layer, "given") else dict(layer))
    return TrainConfig.from_dict(values, where)
