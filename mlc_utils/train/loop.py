"""One training loop for every model of the study (image, caption, fusion, feature heads).

Design. :func:`fit` takes any ``nn.Module`` that maps a batch of inputs (a tensor or a dict of
tensors) to ``(B, C)`` logits, and datasets of ``(inputs, multi-hot target)``. It does only the
multi-label specifics by hand (binary label smoothing, distillation, metric gathering, exact
resumption) and leaves everything else to torch and timm: ``torch.optim`` or timm's optimizer
factory (``timm_adamw``: decay-free norms, biases and position tables, layer decay), a ``LambdaLR``
per-epoch schedule (step/cosine/none, warmup, and the learning-rate change after the frozen-backbone
epochs as one factor; the default) or timm's schedulers stepped at every update (``schedule_unit:
step``; both registries in :mod:`mlc_utils.train.optim`), ``torch.autocast`` + ``GradScaler``, timm ``Mixup``
(multi-label mode) and ``ModelEmaV3``, ``DistributedDataParallel`` + ``DistributedSampler``.
The same code runs on one CPU and on N GPUs under torchrun: when a process group is initialised
the model is wrapped in DDP and every rank sees its shard; validation probabilities are gathered
over all ranks (padding duplicates dropped) so every rank computes the same metrics, and only
rank 0 writes. Data order and augmentation randomness are re-seeded from ``seed + epoch`` at the
start of every epoch, so a run resumed from ``last.pt`` (model, optimizer, scheduler, scaler, EMA,
history) ends bit-identical to one that was never interrupted. ``batch_size`` is per process:
the global batch is ``batch_size * world_size * grad_accum``, so 2 processes x 4 equal 1 x 8.
Outputs in ``out_dir``: ``last.pt``, ``best.pt`` (by validation sample-F1), ``log.csv``,
``val_probs.npy`` (best epoch), ``metrics.json``; every file is written atomically.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from mlc_utils.core.allocator import tune_glibc
from mlc_utils.core.device import (
    native_autocast_dtype,
    place_model,
    rank_and_world,
    resolve_device,
    seed_everything,
    to_device,
)
from mlc_utils.core.inference import Inference, make_loader, run_model
from mlc_utils.core.io import atomic_save, atomic_write_text, save_npy
from mlc_utils.core.progress import EpochEnded, FitStarted, emit, progress
from mlc_utils.evaluation.metrics import evaluate
from mlc_utils.models.checkpoint import (
    check_identity,
    inference_state,
    make_checkpoint,
    model_identity,
    read_checkpoint,
)
from mlc_utils.train.config import BEST_CHECKPOINT, LAST_CHECKPOINT, RESUMABLE_CHANGES, TrainConfig
from mlc_utils.train.losses import (
    NEEDS_POS_WEIGHT,
    build_loss,
    distillation_loss,
    pos_weight_from_targets,
    smooth_targets,
)
from mlc_utils.train.optim import OPTIMIZERS, SCHEDULE_UNITS, updates_per_epoch

# ---------------------------------------------------------------------------------------------
# precision and the result

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
INFERENCE_PRECISION = {"bfloat16": "bf16", "float16": "fp16"}


@dataclass
class FitResult:
    out_dir: Path
    best_epoch: int                      # 0-based; -1 when no epoch ran
    best_metrics: dict
    history: list[dict] = field(default_factory=list)
    val_probs: np.ndarray | None = None  # best epoch, validation order
    val_targets: np.ndarray | None = None
    seconds: float = 0.0

    @property
    def best_path(self) -> Path:
        return self.out_dir / BEST_CHECKPOINT

    @property
    def last_path(self) -> Path:
        return self.out_dir / LAST_CHECKPOINT


# ---------------------------------------------------------------------------------------------
# small helpers


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """The ``(n, C)`` targets of a dataset without decoding its inputs when it can say them."""
    from torch.utils.data import ConcatDataset, Subset, TensorDataset
    if getattr(dataset, "targets", None) is not None:
        return np.asarray(dataset.targets, dtype=np.float32)
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy().astype(np.float32)
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([dataset_targets(d) for d in dataset.datasets])
    return np.stack([np.asarray(dataset[i][1], dtype=np.float32) for i in range(len(dataset))])


def _set_frozen(model: nn.Module, frozen: bool) -> bool:
    """Freeze or unfreeze ``backbone_parameters()``; False when the model has none."""
    params = getattr(model, "backbone_parameters", None)
    if params is None:
        return False
    for p in params():
        p.requires_grad_(not frozen)
    return True


def _loader(dataset, cfg: TrainConfig, batch_size: int, train: bool, epoch: int, collate_fn, device) -> tuple:
    rank, world = rank_and_world()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=train, seed=cfg.seed,
                                 drop_last=False)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(cfg.seed + 7919 * epoch + rank)
    loader = make_loader(dataset, batch_size, sampler, num_workers=cfg.num_workers, collate_fn=collate_fn,
                         pin_memory=device.type == "cuda", generator=generator)
    return loader, sampler


def native_precision(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """bf16 asked on a card that lacks it natively (T4, V100, RTX 20xx): recent torch emulates it,
    slowly, so such a card trains in fp16 with a GradScaler instead, and says so once."""
    if not (cfg.amp and device.type == "cuda" and cfg.amp_dtype == "bfloat16") or \
            native_autocast_dtype(device) != torch.float16:
        return cfg
    if rank_and_world()[0] == 0:
        print(f"amp_dtype: bfloat16 is not native on {torch.cuda.get_device_name(device)}; "
              "training in float16 with a GradScaler", flush=True)
    return replace(cfg, amp_dtype="float16")


def _autocast(cfg: TrainConfig, device: torch.device):
    enabled = cfg.amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[cfg.amp_dtype], enabled=enabled)


def _progress(iterable, cfg: TrainConfig, desc: str, total: int | None = None):
    return progress(iterable, f"{desc} (batches)", total, leave=False, dynamic_ncols=True,
                    disable=not cfg.progress or rank_and_world()[0] != 0)


# ---------------------------------------------------------------------------------------------
# prediction


def _gather_validation(probs: np.ndarray, targets: np.ndarray, indices: list[int], n: int):
    """All ranks' shards -> the whole validation set in dataset order (sampler padding dropped)."""
    rank, world = rank_and_world()
    if world == 1:
        return probs, targets
    shards: list = [None] * world
    dist.all_gather_object(shards, (indices, probs, targets))
    order = np.concatenate([np.asarray(s[0]) for s in shards])
    all_probs = np.concatenate([s[1] for s in shards])
    all_targets = np.concatenate([s[2] for s in shards])
    _, first = np.unique(order, return_index=True)  # sorted by index, first occurrence of each
    if len(first) != n:
        raise RuntimeError(f"gathered {len(first)} validation rows, expected {n}")
    return all_probs[first], all_targets[first]


# ---------------------------------------------------------------------------------------------
# training

class _Trainer:
    """State of one :func:`fit` call; methods are the steps of an epoch."""

    def __init__(self, model, train_set, val_set, cfg: TrainConfig, out_dir, teacher, collate_fn):
        self.cfg, self.train_set, self.val_set, self.collate_fn = cfg, train_set, val_set, collate_fn
        self.out_dir = Path(out_dir)
        self.rank, self.world = rank_and_world()
        self.device = resolve_device(cfg.device)
        self.cfg = cfg = native_precision(cfg, self.device)
        tune_glibc()  # keep freed activations in the process (core.allocator): the CPU's largest cost
        self.model = place_model(model, self.device)
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        self.autocast = _autocast(cfg, self.device)
        # the validation pass: the one inference path, at training's precision and eval batch size
        self.inference = Inference(str(self.device), cfg.eval_batch_size or 2 * cfg.batch_size, cfg.num_workers,
                                   INFERENCE_PRECISION[cfg.amp_dtype] if cfg.amp and self.device.type == "cuda" else "fp32")
        pos_weight = pos_weight_from_targets(dataset_targets(train_set)) if cfg.loss in NEEDS_POS_WEIGHT else None
        self.criterion = build_loss(cfg.loss, pos_weight, focal_gamma=cfg.focal_gamma,
                                    focal_alpha=cfg.focal_alpha).to(self.device)
        self.optimizer = OPTIMIZERS[cfg.optimizer](model, cfg)
        self.scheduler = SCHEDULE_UNITS[cfg.schedule_unit](self.optimizer, cfg,
                                                           updates_per_epoch(cfg, len(train_set), self.world))
        self.epoch = 0
        fp16 = cfg.amp and self.device.type == "cuda" and cfg.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)  # warmup: useful in short runs
        self.mixer = None
        if cfg.mixup:
            from timm.data import Mixup
            self.mixer = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=0.0, label_smoothing=cfg.label_smoothing,
                               num_classes=1, multi_label=True)  # num_classes set from each batch
        self.history: list[dict] = []
        self.best_score, self.best_epoch, self.best_state = -math.inf, -1, None
        self.best_probs, self.val_targets = None, None
        self.start_epoch, self.global_step = 0, 0
        self.wrapped, self.frozen = None, None

    # -- checkpoints -------------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self, epoch: int) -> dict:
        return make_checkpoint(self.model, params=asdict(self.cfg), epoch=epoch,
                               ema=self.ema.module.state_dict() if self.ema is not None else None,
                               global_step=self.global_step, optimizer=self.optimizer.state_dict(),
                               scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                               history=self.history, best={"epoch": self.best_epoch, "score": self.best_score})

    def resume(self) -> None:
        path = self.out_dir / LAST_CHECKPOINT
        if not path.is_file():
            return
        ckpt = read_checkpoint(path)
        check_identity(ckpt["spec"], self.model, path)
        changed = [f.name for f in fields(self.cfg) if f.name not in RESUMABLE_CHANGES
                   and ckpt["params"].get(f.name, f.default) != getattr(self.cfg, f.name)]
        if changed:
            detail = "; ".join(f"{k}: {ckpt['params'].get(k)!r} -> {getattr(self.cfg, k)!r}" for k in changed)
            raise ValueError(f"resume: {path} was trained with other parameters ({detail}); "
                             "use a new out_dir or resume: false")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt["ema"] is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.history = list(ckpt["history"])
        self.start_epoch, self.global_step = ckpt["epoch"] + 1, ckpt["global_step"]
        self.best_epoch, self.best_score = ckpt["best"]["epoch"], ckpt["best"]["score"]
        best_path = self.out_dir / BEST_CHECKPOINT
        if best_path.is_file() and self.best_epoch >= 0:
            self.best_state = inference_state(read_checkpoint(best_path))
            probs_path = self.out_dir / "val_probs.npy"
            self.best_probs = np.load(probs_path) if probs_path.is_file() else None

    def save(self, epoch: int, is_best: bool, probs: np.ndarray | None) -> None:
        if self.rank != 0:
            return
        ckpt = self.checkpoint(epoch)
        atomic_save(self.out_dir / LAST_CHECKPOINT, lambda p: torch.save(ckpt, p))
        if is_best:
            atomic_save(self.out_dir / BEST_CHECKPOINT, lambda p: torch.save(ckpt, p))
            if probs is not None:
                save_npy(self.out_dir / "val_probs.npy", probs)
        import pandas as pd
        atomic_write_text(self.out_dir / "log.csv", pd.DataFrame(self.history).to_csv(index=False))
        summary = {"best_epoch": self.best_epoch,
                   "best": next((h for h in self.history if h["epoch"] == self.best_epoch), {}),
                   "last": self.history[-1] if self.history else {}, "epochs_run": len(self.history),
                   "threshold": self.cfg.threshold, "world_size": self.world, "params": asdict(self.cfg),
                   "spec": model_identity(self.model), "peak_gpu_mib": self.peak_gpu_mib()}
        atomic_write_text(self.out_dir / "metrics.json", json.dumps(summary, indent=2, default=str))

    def peak_gpu_mib(self) -> float | None:
        """This process's peak allocated GPU memory so far (what a larger model or batch must fit in)."""
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)

    # -- one epoch ---------------------------------------------------------------------------
    def phase(self, epoch: int) -> nn.Module:
        """(Re)wrap for this epoch: freezing changes which parameters DDP must reduce."""
        frozen = epoch < self.cfg.freeze_epochs
        if frozen != self.frozen or self.wrapped is None:
            _set_frozen(self.model, frozen)
            self.frozen = frozen
            self.wrapped = self.model
            if dist.is_available() and dist.is_initialized():  # torchrun, also with one process
                ids = [self.device.index] if self.device.type == "cuda" else None
                self.wrapped = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        return self.wrapped

    def loss(self, model, inputs, target) -> torch.Tensor:
        if self.mixer is not None and isinstance(inputs, torch.Tensor) and len(inputs) % 2 == 0:
            self.mixer.num_classes = target.shape[1]  # an odd last batch is only smoothed, not mixed
            inputs, target = self.mixer(inputs, target)
        else:
            target = smooth_targets(target, self.cfg.label_smoothing)
        with self.autocast:
            logits = model(inputs)
            loss = self.criterion(logits.float(), target)
            if self.teacher is not None and self.cfg.kd_alpha > 0:
                with torch.no_grad():
                    teacher_logits = self.teacher(inputs)
                kd = distillation_loss(logits, teacher_logits, self.cfg.kd_temp)
                loss = (1.0 - self.cfg.kd_alpha) * loss + self.cfg.kd_alpha * kd
        return loss

    def optimizer_step(self) -> None:
        if self.cfg.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                           self.cfg.max_grad_norm)
        self.scheduler.step_update(self.global_step, self.epoch)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def finite_loss(self, loss: torch.Tensor, epoch: int, index: int) -> float:
        """This rank's loss as a float; every rank raises the same FloatingPointError when any rank's is
        not finite: a rank raising alone would leave its peers blocked in DDP's gradient all-reduce.
        Costs one all-reduce of a number per rank each batch, where reading the loss syncs anyway."""
        values = torch.zeros(self.world, dtype=loss.dtype, device=loss.device)
        values[self.rank] = loss.detach()
        if self.world > 1:
            dist.all_reduce(values)  # a sum: every other rank adds 0 to this rank's slot
        values = values.tolist()
        bad = [(rank, value) for rank, value in enumerate(values) if not math.isfinite(value)]
        if bad:
            where = ", ".join(f"{value} on rank {rank}" for rank, value in bad) if self.world > 1 else bad[0][1]
            raise FloatingPointError(f"epoch {epoch + 1}, batch {index}: loss is {where} "
                                     "(lower lr, or set amp_dtype: bfloat16)")
        return values[self.rank]

    def train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        model = self.phase(epoch)
        model.train()
        loader, _ = _loader(self.train_set, cfg, cfg.batch_size, True, epoch, self.collate_fn, self.device)
        total = len(loader) if cfg.max_steps_per_epoch is None else \
            min(len(loader), cfg.max_steps_per_epoch * cfg.grad_accum)
        losses, steps = [], 0
        self.optimizer.zero_grad(set_to_none=True)
        bar = _progress(loader, cfg, f"epoch {epoch + 1}/{cfg.epochs}", total)
        for index, (inputs, target) in enumerate(bar):
            if self.mixer is not None and not isinstance(inputs, torch.Tensor):
                raise ValueError("mixup: needs image tensor inputs; set mixup: false for caption or dict inputs")
            last = index + 1 == total
            step_now = (index + 1) % cfg.grad_accum == 0 or last
            sync = model.no_sync() if (self.world > 1 and not step_now) else contextlib.nullcontext()
            with sync:
                loss = self.loss(model, to_device(inputs, self.device), to_device(target, self.device).float())
                losses.append(self.finite_loss(loss, epoch, index))
                self.scaler.scale(loss / cfg.grad_accum).backward()
            if step_now:
                self.optimizer_step()
                steps += 1
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if last:
                break
        bar.close()
        totals = torch.tensor([float(np.sum(losses)), float(len(losses))], dtype=torch.float64)
        if self.world > 1:  # the logged loss is the mean over every rank's batches
            totals = totals.to(self.device)
            dist.all_reduce(totals)
        return float(totals[0] / totals[1]) if totals[1] else float("nan")

    def validate(self, epoch: int) -> tuple[dict, np.ndarray | None]:
        if self.val_set is None:
            return {}, None
        cfg = self.cfg
        rank, world = rank_and_world()
        sampler = DistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False, drop_last=False)
        probs, targets = run_model(self.eval_model(), self.val_set, self.inference, name="validate",
                                   collate_fn=self.collate_fn, sampler=sampler, with_targets=True,
                                   progress=cfg.progress and rank == 0)
        probs, targets = _gather_validation(probs, targets, list(iter(sampler)), len(self.val_set))
        self.val_targets = targets
        clipped = np.clip(probs, 1e-7, 1 - 1e-7)
        val_loss = float(-np.mean(targets * np.log(clipped) + (1 - targets) * np.log(1 - clipped)))
        return {"val_bce": val_loss, **evaluate(targets, probs, cfg.threshold)}, probs

    def run(self) -> FitResult:
        cfg, start = self.cfg, time.time()
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            self.resume()
        if self.rank == 0:
            emit(FitStarted(cfg.epochs, self.start_epoch))
        for epoch in range(self.start_epoch, cfg.epochs):
            seed_everything(cfg.seed + 1000 * epoch + self.rank)
            tic, self.epoch = time.time(), epoch
            lr = max(g["lr"] for g in self.optimizer.param_groups)
            train_loss = self.train_epoch(epoch)
            self.scheduler.step()
            metrics, probs = self.validate(epoch)
            score = metrics.get("sample_f1", float(epoch))  # without validation the last epoch is "best"
            is_best = score > self.best_score
            if is_best:
                self.best_score, self.best_epoch, self.best_probs = score, epoch, probs
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.eval_model().state_dict().items()}
            self.history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss, **metrics,
                                 "seconds": round(time.time() - tic, 3), "best": is_best,
                                 "frozen": bool(self.frozen)})
            self.save(epoch, is_best, probs)
            if self.rank == 0:
                shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                seconds = self.history[-1]["seconds"]
                line = (f"epoch {epoch + 1}/{cfg.epochs} train_loss={train_loss:.4f} {shown}"
                        f"{' *' if is_best else ''} ({seconds:.0f} s)")
                emit(EpochEnded(epoch + 1, cfg.epochs, seconds, line))
                print(line, flush=True)
            if self.world > 1:
                dist.barrier()
        _set_frozen(self.model, False)  # hand the model back trainable, whatever the last phase was
        if cfg.restore_best and self.best_state is not None:
            self.eval_model().load_state_dict(self.best_state)
            if self.ema is not None:
                self.model.load_state_dict(self.best_state)
        best = next((h for h in self.history if h["epoch"] == self.best_epoch), {})
        return FitResult(self.out_dir, self.best_epoch, best, list(self.history), self.best_probs,
                         self.val_targets, time.time() - start)


def fit(model: nn.Module, train_set: Dataset, val_set: Dataset | None, cfg: TrainConfig,
        out_dir: str | os.PathLike, *, teacher: nn.Module | None = None, collate_fn=None) -> FitResult:
    """Train ``model`` on ``train_set``, validate each epoch on ``val_set``, keep the best by sample-F1.

    Works unchanged under torchrun (DDP when a process group is initialised; see the module
    docstring). ``teacher`` adds knowledge distillation (weight ``kd_alpha``, temperature
    ``kd_temp``). On return ``model`` holds the best epoch's evaluation weights (``restore_best``).
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg: expected a TrainConfig, got {type(cfg).__name__} (use TrainConfig.from_dict)")
    cfg.check()
    if len(train_set) == 0:
        raise ValueError("train_set is empty")
    if val_set is not None and len(val_set) == 0:
        raise ValueError("val_set is empty (pass None to train without validation)")
    return _Trainer(model, train_set, val_set, cfg, out_dir, teacher, collate_fn).run()
