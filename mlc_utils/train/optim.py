"""Optimizers and learning-rate schedules: registries whose names are :class:`TrainConfig`'s choices.

``OPTIMIZERS`` builds one from ``(model, cfg)``; ``SCHEDULE_UNITS`` says when the rate moves (once per
epoch: ``SCHEDULES`` x warmup x the after-freeze factor in a ``LambdaLR``; or at every update: timm's
``STEP_SCHEDULES``). :func:`mlc_utils.train.loop.fit` uses them; each schedule's state is resumable.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from mlc_utils.train.config import TrainConfig


def _timm_optimizer(model: nn.Module, cfg, opt: str) -> torch.optim.Optimizer:
    """timm's factory: no decay on 1-d parameters and ``no_weight_decay()``; ``layer_decay`` groups."""
    from timm.optim import create_optimizer_v2
    if cfg.layer_decay is not None and not hasattr(model, "group_matcher"):
        raise ValueError(f"layer_decay: {type(model).__name__} has no group_matcher() to rank its layers; "
                         "set layer_decay: null for this model")
    try:
        return create_optimizer_v2(model, opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   layer_decay=cfg.layer_decay)
    except AttributeError as err:  # a wrapper whose backbone has no group_matcher
        if cfg.layer_decay is None:
            raise
        raise ValueError(f"layer_decay: {err}; set layer_decay: null for this model") from err


# optimizer from (model, cfg); adamw and sgd put every parameter in one decayed group
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": lambda model, cfg: torch.optim.AdamW(list(model.parameters()), lr=cfg.lr,
                                                  weight_decay=cfg.weight_decay),
    "sgd": lambda model, cfg: torch.optim.SGD(list(model.parameters()), lr=cfg.lr, momentum=cfg.momentum,
                                              weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0),
    "timm_adamw": lambda model, cfg: _timm_optimizer(model, cfg, "adamw"),
}

# learning-rate multiplier of the schedule at a 0-based epoch
SCHEDULES: dict[str, Callable[[Any, int], float]] = {
    "step": lambda cfg, epoch: cfg.gamma ** (epoch // cfg.step_size),
    "cosine": lambda cfg, epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, cfg.epochs))),
    "none": lambda cfg, epoch: 1.0,
}

# timm's per-update scheduler for each SCHEDULES name, from (optimizer, cfg, total updates)
STEP_SCHEDULES: dict[str, Callable[..., Any]] = {
    "cosine": lambda opt, cfg, total: _timm_scheduler("CosineLRScheduler", opt, cfg, warmup_prefix=True,
                                                      t_initial=max(1, total - cfg.warmup_steps),
                                                      lr_min=cfg.min_lr, cycle_limit=1),
    "step": lambda opt, cfg, total: _timm_scheduler("StepLRScheduler", opt, cfg, decay_rate=cfg.gamma,
                                                    decay_t=cfg.step_size * max(1, total // max(1, cfg.epochs))),
    "none": lambda opt, cfg, total: _timm_scheduler("StepLRScheduler", opt, cfg, decay_rate=1.0,
                                                    decay_t=total + 1),
}


def _timm_scheduler(name: str, optimizer, cfg, **kwargs):
    import timm.scheduler
    return getattr(timm.scheduler, name)(optimizer, warmup_t=cfg.warmup_steps, warmup_lr_init=cfg.warmup_lr,
                                         t_in_epochs=False, **kwargs)


class _EpochSchedule(torch.optim.lr_scheduler.LambdaLR):
    """``SCHEDULES`` x warmup x the after-freeze factor, stepped once per epoch; timm's ``lr_scale``
    (layer decay) per parameter group."""

    def __init__(self, optimizer, cfg: TrainConfig, updates_per_epoch: int):
        scales = [g.get("lr_scale", 1.0) for g in optimizer.param_groups]
        super().__init__(optimizer, [lambda e, s=s: s * _lr_factor(cfg, e) for s in scales])

    def step_update(self, num_updates: int, epoch: int) -> None:
        """Per-update hook: nothing changes within an epoch."""


class _StepSchedule:
    """timm's scheduler (``STEP_SCHEDULES``) set before every optimizer update, as timm's train.py does;
    the rate depends on the update count alone, so resuming at ``global_step`` continues it exactly."""

    def __init__(self, optimizer, cfg: TrainConfig, updates_per_epoch: int):
        self.optimizer, self.cfg = optimizer, cfg
        self.timm = STEP_SCHEDULES[cfg.scheduler](optimizer, cfg, updates_per_epoch * cfg.epochs)

    def step_update(self, num_updates: int, epoch: int) -> None:
        self.timm.step_update(num_updates)
        factor = _freeze_factor(self.cfg, epoch)
        if factor != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] *= factor

    def step(self) -> None:
        """End of an epoch: nothing (the rate moves per update)."""

    def state_dict(self) -> dict:
        return self.timm.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.timm.load_state_dict(state)


# when the learning rate moves: once per epoch or at every optimizer update
SCHEDULE_UNITS: dict[str, Callable[..., Any]] = {"epoch": _EpochSchedule, "step": _StepSchedule}


def updates_per_epoch(cfg: TrainConfig, n_train: int, world: int = 1) -> int:
    """Optimizer updates one epoch makes on each rank (DistributedSampler pads to equal shards)."""
    batches = math.ceil(math.ceil(n_train / world) / cfg.batch_size)
    if cfg.max_steps_per_epoch is not None:
        batches = min(batches, cfg.max_steps_per_epoch * cfg.grad_accum)
    return math.ceil(batches / cfg.grad_accum)


def _lr_factor(cfg: TrainConfig, epoch: int) -> float:
    factor = SCHEDULES[cfg.scheduler](cfg, epoch)
    if epoch < cfg.warmup_epochs:
        factor *= (epoch + 1) / (cfg.warmup_epochs + 1)
    return factor * _freeze_factor(cfg, epoch)


def _freeze_factor(cfg: TrainConfig, epoch: int) -> float:
    """``after_freeze_lr / lr`` once the frozen-backbone epochs are over (1 before, or when unset)."""
    if cfg.freeze_epochs and epoch >= cfg.freeze_epochs and cfg.after_freeze_lr:
        return cfg.after_freeze_lr / cfg.lr
    return 1.0
