"""``python -m mlc_utils plan --params FILE``: what a run will do before it does it, stage by stage.

For each stage: the work (models x folds x epochs over images x views, captions x epochs), the time
(from a short calibration of each architecture on this machine's device: a few timed batches forward
and backward at the run's batch size and precision, with random weights of the same architecture,
so nothing is downloaded), the disk it writes and the peak memory of one process. Where this
machine lacks the profile's device the time is "not measurable here" and the rest still shows.

Row counts come from ``--rows TRAIN/TEST``, else the data folder, else the data the profile names:
``data/demo`` is the demo generator's defaults, anything else the competition's 30,000 labelled
and 10,000 test rows. Small steps (EDA, the split, heads on saved outputs, TF-IDF, the ensemble)
have nominal times, marked ``~``.

The model of time follows what each stage does: every stage pays ``STAGE_OVERHEAD_S`` (kernel start,
imports, report rendering); a fine-tuned image model pays, per fit, its epochs of training batches
and of decoded, augmented images plus each epoch's validation pass, then the forward passes that
predict the validation and test rows in each TTA view; a frozen one pays one feature pass over
every image and view (cached, shared by its folds and by the ablation) and cheap head epochs; the
ablation's baseline is the image stage's model where the image stage has no folds, and its TTA
switch only predicts again; caption models likewise (the frozen one embeds every caption once).
On the holdout the fusion heads' inputs are one more pass of the fused image and caption models
over every row; the heads' epochs are nominal. Epochs that train a head alone (``freeze_epochs``)
cost a third of a step, and every epoch writes its checkpoints (``CHECKPOINT_BYTES_S``).

Calibration runs at the run's settings (training batch size, inference batch size of the device,
precision, torch's thread count), one untimed warm-up batch then ``steps`` timed ones, and times the
decoding + transform of a few of the data folder's images. Caption batches are cut to their longest
caption, so captions are timed at the padded length the run's batches will have, measured on the
data folder's captions (sorted for embeddings, shuffled for training). Its results are kept in
``<cache_dir>/plan/calibration.json`` keyed by architecture, settings and machine (device name,
torch version, thread count, CPU model, and on a CPU the allocator): a second plan on the same
machine calibrates nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlc_utils.core.progress import duration
from mlc_utils.study.context import PROJECT_ROOT

COMPETITION_ROWS = (30_000, 10_000)
STAGE_OVERHEAD_BYTES = 5 * 2**20      # executed notebook, its HTML, tables and figures
PROBS_BYTES = 4                       # float32 probabilities per row and class
# Fitted to the stage times of idle demo runs and the dev-pack CPU profile on a 2-core EPYC
# (2026-12-02/03, benchmarks/plan_accuracy.py): eda 8-13/7 s, split 6-8/6 s, ensemble 6-7/33 s,
# explore 5-6 s. A stage's kernel start and imports took 4-9 s (papermill's cell times), its
# figures and tables 2-4 s whatever the rows; TF-IDF 5.6 s to fit 8,000 captions on every core.
# A fusion head's epoch: 0.05 s on the demo's 900 rows (120 epochs in 6 s, its inputs cached), 0.09 s
# on 8,000 (the dev pack's 400 epochs in 35-40 s); the holdout's fusion inputs are forward passes, timed.
STAGE_OVERHEAD_S = 6.0               # every stage: kernel start, imports, rendering the report
NOMINAL_S = {"eda": 2.0, "split": 0.5, "fusion": 5.0, "ensemble": 0.0, "explore": 0.0}   # on top of the overhead
NOMINAL_ROW_S = {"eda": 0.001, "split": 0.0001, "tfidf": 0.0008, "head": 2e-5, "fusion": 5.6e-6,
                 "ensemble": 5e-4}   # per row (x epochs for heads, x fits for the ensemble)
FUSION_EPOCH_S = 0.045               # a fusion head's epoch besides its rows: validation, metrics, checkpoint
FROZEN_STEP_SHARE = 1 / 3            # a step with the encoder frozen is its forward pass: a third of a full step
CHECKPOINT_BYTES_S = 600e6           # torch.save to the run's disk (272 MB in 0.24-0.68 s here); last.pt and
                                     # best.pt are both counted every epoch (early epochs mostly improve)
# seconds to decode and transform one image where the data folder has none to time: one core, no
# loader workers (benchmarks/README.md, input_pipeline: decode + train / eval transform)
DECODE_S = {"train": 0.0029, "eval": 0.0026}
DECODE_SAMPLE = 8                    # images timed per transform (after one untimed)
HEAD_STEPS = 10                      # timed training batches of a head on features (milliseconds each)
HEAD_EPOCH_S = 0.08                  # a head's epoch besides its batches: metrics, checkpoints, progress; its
HEAD_VALIDATION = 1 / 12             # validation pass: a quarter of the rows, forward only (a third of a step)
                                     # (profiled: 30 epochs of the class-attention head on 8,000 + 2,000 rows)
CAPTION_SAMPLE = 2000                # captions tokenized for their lengths (batches are cut to their longest)
TRAINED = ("image", "caption")       # kinds whose whole model trains (the rest: heads on features, predictions)
IMAGE_KINDS = ("image", "image-features", "image-predict")   # rows are decoded images
OPTIMIZER_STATES = {"adamw": 2, "timm_adamw": 2, "sgd": 1}  # tensors of the parameters' size it keeps


@dataclass
class Training:
    """One model trained ``runs`` times (folds, or once), and its forward passes."""
    label: str
    kind: str                  # image | caption | image-features | caption-features | tfidf | head
    runs: int
    epochs: int
    train_rows: int            # rows one epoch trains on (x views where they are extra samples)
    eval_rows: int             # rows each run predicts once training is over (x TTA views) + each epoch's validation
    once_rows: int = 0         # rows computed once (cached features, caption embeddings)
    params: int = 0            # parameters of the trained model (checkpoints, memory)
    backbone_params: int = 0   # of the frozen backbone / encoder that computes features
    checkpoint_bytes: int = 0  # one of last.pt / best.pt
    extra_bytes: int = 0       # probabilities
    feature_bytes: int = 0     # the cached features / embeddings of ``once_rows``
    batch_size: int = 32
    processes: int = 1
    build: object = None       # () -> (model with random weights, batch size -> example batch): calibration
    arch: dict = field(default_factory=dict)   # what the time depends on besides the settings (calibration cache)
    data_config: dict | None = None            # the image transform's settings + auto_augment (decode timing)
    frozen_epochs: int = 0     # first epochs that train the head alone (``freeze_epochs``): forward passes
    head_dim: int = 0          # a head on saved features: its input width (its training batches are timed)
    seconds: float | None = None
    peak_bytes: int | None = None
    peak_measured: bool = False    # else a floor: weights, gradients, optimizer (no activations)
    hub_bytes: int = 0         # weights to download into the hub cache

    @property
    def disk_bytes(self) -> int:
        return self.runs * 2 * self.checkpoint_bytes + self.extra_bytes + self.feature_bytes  # last.pt, best.pt


@dataclass
class StagePlan:
    stage: str
    trainings: list[Training] = field(default_factory=list)
    work: str = ""
    nominal_s: float = 0.0
    disk_bytes: int = STAGE_OVERHEAD_BYTES
    time_note: str = ""        # why there is no time ("not measurable here ...")

    @property
    def seconds(self) -> float | None:
        if self.time_note:
            return None
        return self.nominal_s + sum(t.seconds or 0.0 for t in self.trainings)

    @property
    def peak_bytes(self) -> int | None:
        peaks = [t.peak_bytes for t in self.trainings if t.peak_bytes]
        return max(peaks) if peaks else None


@dataclass
class Plan:
    params: object
    stages: list[StagePlan]
    rows: tuple[int, int]
    rows_from: str
    device: str                # where the profile runs, as this machine would run it
    measurable: bool
    note: str = ""

    @property
    def seconds(self) -> float | None:
        times = [s.seconds for s in self.stages]
        return None if any(t is None for t in times) else sum(times)

    @property
    def disk_bytes(self) -> int:
        return sum(s.disk_bytes for s in self.stages)

    @property
    def hub_bytes(self) -> int:
        return sum(t.hub_bytes for s in self.stages for t in s.trainings)

    def stage_seconds(self, stage: str) -> float | None:
        return next((s.seconds for s in self.stages if s.stage == stage), None)

    def render(self) -> str:
        gpus = self.params.image.gpus
        lines = [f"plan of run '{self.params.run}' ({self.params.source or 'defaults'}): {self.rows[0]:,} labelled "
                 f"and {self.rows[1]:,} test rows ({self.rows_from}); device {self.device}"
                 + (f", {gpus} GPU processes for fine-tuning" if gpus > 1 else "")]
        if self.note:
            lines.append(f"  {self.note}")
        for s in self.stages:
            peak = "peak memory small" if not s.peak_bytes else f"peak memory {human_size(s.peak_bytes)} a process" \
                if all(t.peak_measured for t in s.trainings if t.peak_bytes) else \
                f"peak memory >= {human_size(s.peak_bytes)} a process (weights, gradients, optimizer; activations not measured)"
            lines.append(f"  {s.stage:<9} time {_time_of(s)}, disk {human_size(s.disk_bytes)}, {peak}")
            lines.append(f"            {s.work}")
        total = duration(self.seconds) if self.seconds is not None else "not measurable here"
        hub = f"; hub downloads {human_size(self.hub_bytes)}" if self.hub_bytes else ""
        lines.append(f"  total     time {total}, disk {human_size(self.disk_bytes)}{hub}")
        return "\n".join(lines)


def _time_of(stage: StagePlan) -> str:
    if stage.seconds is None:
        return stage.time_note
    measured = any(t.seconds is not None and t.build is not None for t in stage.trainings)
    return ("" if measured else "~") + duration(stage.seconds)


def human_size(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# ---------------------------------------------------------------------------------------------
# the work of each stage

def row_counts(params, root: Path, rows: tuple[int, int] | None = None) -> tuple[tuple[int, int], str]:
    """(labelled, test) rows and where they came from (see the module docstring)."""
    if rows:
        return rows, "--rows"
    from mlc_utils.data.folder import table_rows
    found = table_rows(params.data_path(root))
    if "train" in found:
        return (found["train"], found.get("test", 0)), str(params.data_path(root))
    if Path(params.data_dir).name == "demo":
        from mlc_utils.data.demo import DEFAULT_N, DEFAULT_TEST_FRACTION
        test = round(DEFAULT_N * DEFAULT_TEST_FRACTION)
        return (DEFAULT_N - test, test), f"{params.data_dir} not found: the demo generator's defaults"
    return COMPETITION_ROWS, f"{params.data_dir} not found: the competition's counts; --rows TRAIN/TEST to change"


def _fits(params, n_train: int) -> tuple[int, int, int]:
    """(runs, train rows, validation rows) of one member: K folds or the holdout."""
    k = params.split.folds
    if k:
        return k, n_train - n_train // k, n_train // k
    val = round(n_train * params.split.val_fraction)
    return 1, n_train - val, val


def _checkpoint_bytes(n_params: int, cfg) -> int:
    """What ``train.loop`` saves as last.pt (and, on a better epoch, best.pt, the same checkpoint):
    the weights, the optimizer's state and the EMA copy, all float32."""
    copies = 1 + OPTIMIZER_STATES.get(cfg.optimizer, 2) + (1 if cfg.ema else 0)
    return n_params * 4 * copies


def _image_model(params, spec, device: str = "meta"):
    import torch

    from mlc_utils.models import create_image_model
    with torch.device(device):
        return create_image_model(replace(spec.model_config(), pretrained=False), params.num_classes)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _image_facts(params, spec, cache: dict | None) -> tuple[int, int, int, dict]:
    """(parameters, head parameters, head input width, data config) of an image model, built on
    the meta device once per architecture (``cache``)."""
    key = json.dumps({**spec.as_dict(), "pretrained": False}, sort_keys=True)
    cache = {} if cache is None else cache
    if key not in cache:
        model = _image_model(params, spec)
        cache[key] = (_count(model), _count(model.head), int(getattr(model.head, "in_features", 0)),
                      dict(model.spec["data"]))
    return cache[key]


def _image_training(params, spec, cfg, n_train: int, n_test: int, label: str | None = None,
                    cross_validate: bool = True, cache: dict | None = None, predict_only: bool = False) -> Training:
    """One image model of ``image.models`` (or of the ablation: ``cross_validate`` False trains on the
    holdout; ``predict_only``: a trained model's checkpoint predicting in other views, no training)."""
    import torch
    runs, train_rows, val_rows = _fits(params, n_train)
    if not cross_validate:   # the ablation trains on the holdout
        val_rows = round(n_train * params.split.val_fraction)
        runs, train_rows = 1, n_train - val_rows
    views = len(params.image.tta) if spec.tta else 1
    total, head, dim, data_config = _image_facts(params, spec, cache)
    hub = total * 4 if spec.pretrained is True and _needs_download(spec.name) and not predict_only else 0
    size = spec.img_size
    arch = {"image": spec.name, "head": spec.head, "img_size": size, "pool": spec.global_pool,
            "grid": spec.attention_grid}

    def build():
        return _image_model(params, spec, "cpu"), lambda batch, train=False: torch.randn(batch, 3, size, size)
    common = dict(build=build, arch=arch, batch_size=cfg.batch_size,
                  data_config={**data_config, "auto_augment": spec.auto_augment or None})
    if predict_only:
        return Training(label or spec.label, "image-predict", 1, 0, 0, (val_rows + n_test) * views, **common)
    probs = _probs(params, n_train, n_test, runs)
    if spec.mode == "frozen_backbone":   # one feature pass per image and view (cached), then head epochs on its rows
        return Training(label or spec.label, "image-features", runs, cfg.epochs, train_rows * views, 0,
                        once_rows=(n_train + n_test) * views, params=head, backbone_params=total,
                        checkpoint_bytes=_checkpoint_bytes(head, cfg), feature_bytes=(n_train + n_test) * views * dim * 4,
                        extra_bytes=probs, hub_bytes=hub, head_dim=dim, **common)
    processes = max(params.image.torchrun_processes(), 1)
    return Training(label or spec.label, "image", runs, cfg.epochs, train_rows,
                    cfg.epochs * val_rows + (val_rows + n_test) * views, params=total,
                    checkpoint_bytes=_checkpoint_bytes(total, cfg), extra_bytes=probs,
                    processes=processes, hub_bytes=hub, frozen_epochs=min(cfg.freeze_epochs, cfg.epochs), **common)


def _probs(params, n_train: int, n_test: int, runs: int) -> int:
    return (n_train + runs * n_test) * params.num_classes * PROBS_BYTES


def _needs_download(name: str) -> bool:
    from mlc_utils.models.weights import PACKAGED_WEIGHTS, _hub_cached_file
    arch = name.split(".")[0]
    return arch not in PACKAGED_WEIGHTS and _hub_cached_file(name) is None


def _caption_model(params, device: str = "cpu"):
    """The caption model with random weights, or None where its config is not available here."""
    import torch

    from mlc_utils.models.caption import create_caption_model
    try:
        with torch.device(device):
            model = create_caption_model(params.caption.model_config(), params.num_classes, load_weights=False)
    except Exception:  # noqa: BLE001 - offline and not cached: no architecture to count or time
        return None
    return model


def caption_lengths(params, data_dir: Path | None, n: int = CAPTION_SAMPLE):
    """Token counts (cut at ``max_length``) of the data folder's first ``n`` labelled captions, tokenized
    as the run tokenizes them (its ``CaptionDataset``); None where there are none or no tokenizer is
    available here."""
    if data_dir is None or not Path(data_dir, "train.csv").is_file():
        return None
    try:
        from mlc_utils.data.caption_tokens import CaptionDataset
        from mlc_utils.data.csvio import read_train_csv
        from mlc_utils.models.caption import load_tokenizer
        captions = read_train_csv(Path(data_dir, "train.csv"))["Caption"].astype(str).head(n).tolist()
        tokenizer = load_tokenizer(params.caption.model_name, params.caption.pretrained)
    except Exception:  # noqa: BLE001 - unreadable file, tokenizer offline: calibrate at max_length
        return None
    if not captions:
        return None
    tokens = CaptionDataset(captions, tokenizer, None, params.caption.max_length, params.caption.cleaning,
                            num_classes=params.num_classes)
    return tokens.attention_mask.sum(dim=1).numpy()


def padded_length(lengths, batch: int, shuffled: bool) -> int:
    """The mean padded length of a batch when each batch is cut to its longest caption
    (``trim_padding_collate``): batches of sorted captions for embeddings, of shuffled ones for training."""
    import numpy as np
    order = np.random.default_rng(0).permutation(len(lengths)) if shuffled else np.argsort(lengths, kind="stable")
    ordered = np.asarray(lengths)[order]
    return math.ceil(np.mean([ordered[i:i + batch].max() for i in range(0, len(ordered), batch)]))


def _caption_trainings(params, n_train: int, n_test: int, lengths=None, eval_batch: int | None = None) -> list[Training]:
    """``lengths``: the data's caption token counts (:func:`caption_lengths`); calibration then runs at
    the padded lengths the run's batches have, else at ``max_length``."""
    import torch
    runs, train_rows, val_rows = _fits(params, n_train)
    found = _caption_model_facts(params)
    total, dim = found if found else (0, 0)
    length = params.caption.max_length
    if eval_batch is None:
        from mlc_utils.core.inference import Inference
        eval_batch = Inference("cpu").batch_for("tokens")

    def arch_for(train_batch: int) -> dict:
        if lengths is None:
            return {"caption": params.caption.model_name, "pooling": params.caption.pooling, "max_length": length}
        return {"caption": params.caption.model_name, "pooling": params.caption.pooling,
                "length": padded_length(lengths, eval_batch, False), "train_length": padded_length(lengths, train_batch, True)}

    def build_for(arch: dict):
        def batch_of(batch: int, train: bool = False):
            size = arch.get("train_length" if train else "length", length)
            ids = torch.randint(1000, 2000, (batch, size))
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        def build():
            return _caption_model(params), batch_of
        return build
    out = []
    for kind in params.caption.members:
        probs = _probs(params, n_train, n_test, runs)
        if kind == "finetune":
            cfg = params.caption.training(**params.training_defaults())
            arch = arch_for(cfg.batch_size)
            out.append(Training(f"caption {kind}", "caption", runs, cfg.epochs, train_rows,
                                cfg.epochs * val_rows + val_rows + n_test, params=total,
                                checkpoint_bytes=_checkpoint_bytes(total, cfg), extra_bytes=probs,
                                batch_size=cfg.batch_size, build=build_for(arch) if found else None, arch=arch,
                                frozen_epochs=min(cfg.freeze_epochs, cfg.epochs)))
        elif kind == "frozen_encoder":
            cfg = params.caption.head_training(**params.training_defaults())
            arch = arch_for(cfg.batch_size)
            head = dim * params.num_classes
            out.append(Training(f"caption {kind}", "caption-features", runs, cfg.epochs, train_rows, 0,
                                once_rows=n_train + n_test, params=head, backbone_params=total,
                                checkpoint_bytes=_checkpoint_bytes(head, cfg),
                                feature_bytes=(n_train + n_test) * dim * 4, extra_bytes=probs, head_dim=dim,
                                batch_size=cfg.batch_size, build=build_for(arch) if found else None, arch=arch))
        else:
            out.append(Training("caption tfidf", "tfidf", runs, 1, train_rows, 0, extra_bytes=probs,
                                seconds=runs * train_rows * NOMINAL_ROW_S["tfidf"]))
    return out


def _caption_model_facts(params) -> tuple[int, int] | None:
    import torch
    with torch.device("meta"):
        model = _caption_model(params, "meta")
    return (_count(model), int(model.head.in_features)) if model is not None else None


def stage_plans(params, n_train: int, n_test: int, stages, data_dir: Path | None = None,
                eval_batch: int | None = None) -> list[StagePlan]:
    """Work and disk of every stage in ``stages`` (times come from :func:`calibrate`); ``data_dir``
    gives the captions' lengths, ``eval_batch`` the inference batch of captions on the plan's device."""
    from functools import cache as once
    from types import SimpleNamespace

    from mlc_utils.study.image import image_train_config
    ctx = SimpleNamespace(params=params)  # what image_train_config and ablation_specs read
    cache: dict = {}

    @once   # the image and caption stages' trainings, also read by the fusion stage's passes
    def image_trainings() -> tuple[Training, ...]:
        return tuple(_image_training(params, spec, image_train_config(ctx, spec), n_train, n_test, cache=cache)
                     for spec in params.image.models)

    @once
    def caption_trainings() -> tuple[Training, ...]:
        return tuple(_caption_trainings(params, n_train, n_test, caption_lengths(params, data_dir), eval_batch))
    out = []
    for stage in stages:
        plan = StagePlan(stage, nominal_s=STAGE_OVERHEAD_S)
        if stage == "eda":
            sample = params.eda.image_size_sample or n_train + n_test
            plan.work = f"reads {n_train + n_test:,} rows and the size of {min(sample, n_train + n_test):,} images"
            plan.nominal_s += NOMINAL_S[stage] + min(sample, n_train + n_test) * NOMINAL_ROW_S[stage]
        elif stage == "split":
            folds = params.split.folds
            plan.work = (f"{folds} folds" if folds else f"a {params.split.val_fraction:.0%} holdout") + \
                f" of {n_train:,} rows ({params.split.method})"
            plan.nominal_s += NOMINAL_S[stage] + n_train * NOMINAL_ROW_S[stage]
        elif stage == "image":
            plan.trainings = list(image_trainings())
        elif stage == "ablation":
            # the holdout baseline is the image stage's model; features are shared; the TTA switch of
            # a fine-tuned model only predicts again
            from mlc_utils.study.ablation import ablation_specs
            plan.trainings = [_image_training(params, spec, image_train_config(ctx, spec), n_train, n_test,
                                              f"{name}: {spec.label}", cross_validate=False, cache=cache,
                                              predict_only=name == "tta" and spec.mode == "finetune")
                              for name, spec in ablation_specs(ctx) if name != "baseline" or params.split.folds]
            for t in plan.trainings:
                t.once_rows = t.feature_bytes = 0
        elif stage == "caption":
            plan.trainings = list(caption_trainings())
        else:   # heads on saved outputs, the ensemble, the views of the mistakes
            runs, train_rows, _ = _fits(params, n_train)
            heads = len(params.fusion.heads) if stage == "fusion" else 0
            epochs = params.fusion.training(**params.training_defaults()).epochs
            plan.work = f"{heads} head(s) x {runs} fit(s) x {epochs} epochs on {train_rows:,} rows of saved outputs" \
                if heads else f"combines the saved probabilities of {n_train + n_test:,} rows"
            plan.nominal_s += NOMINAL_S[stage] + heads * runs * epochs * (FUSION_EPOCH_S + train_rows * NOMINAL_ROW_S["fusion"])
            if stage == "ensemble":  # weights and threshold searched once, and again per fold when cross-fitted
                plan.nominal_s += n_train * (1 + params.split.folds) * NOMINAL_ROW_S["ensemble"]
            plan.disk_bytes += (heads + 1) * _probs(params, n_train, n_test, runs)
            if heads:
                plan.trainings = _fusion_inputs(params, n_train + n_test, image_trainings(), caption_trainings(), cache)
        if plan.trainings:
            plan.work = "; ".join(([plan.work] if plan.work else []) + [_work(t) for t in plan.trainings])
            plan.disk_bytes += sum(t.disk_bytes for t in plan.trainings)
        out.append(plan)
    return out


def _forward_only(t: Training, label: str, rows: int, width: int) -> Training:
    """``t``'s model, once trained, run over ``rows`` once (its ``width`` outputs a row saved)."""
    return Training(label, "image-predict" if t.kind in IMAGE_KINDS else "caption-predict", 1, 0, 0, rows,
                    extra_bytes=rows * width * PROBS_BYTES, batch_size=t.batch_size, build=t.build, arch=t.arch,
                    data_config=t.data_config)


def _fusion_inputs(params, rows: int, images, captions, cache: dict) -> list[Training]:
    """The forward passes that give the holdout's fusion heads their inputs (``study.fusion.sub_model_outputs``):
    a fine-tuned image model and a caption encoder of ``images`` / ``captions`` (the stages' trainings), each
    run once over every row. The image model is ``fusion.image_model``, else the best on validation, known
    only at run time: planned at the largest fine-tuned one. Heads on cached image features and
    cross-validated (out-of-fold) inputs run no pass."""
    if params.split.folds or params.fusion.mode != "frozen_submodels":
        return []
    logits = params.fusion.fusion_input == "logits"
    wanted = params.fusion.image_model
    fine_tuned = [(spec, t) for spec, t in zip(params.image.models, images)
                  if t.kind == "image" and (not wanted or spec.label == wanted)]
    out = []
    if fine_tuned:
        spec, t = max(fine_tuned, key=lambda pair: pair[1].params)
        chosen = "" if wanted or len(fine_tuned) == 1 else " (the largest; the best on validation is fused)"
        out.append(_forward_only(t, f"fusion input: {spec.label}{chosen}", rows,
                                 params.num_classes if logits else _image_facts(params, spec, cache)[2]))
    encoders = [t for t in captions if t.kind in ("caption", "caption-features")]
    if encoders:
        out.append(_forward_only(encoders[0], f"fusion input: {params.caption.model_name}", rows,
                                 params.num_classes if logits else encoders[0].head_dim or params.num_classes))
    return out


def _work(t: Training) -> str:
    runs = f"{t.runs} fits x " if t.runs > 1 else ""
    if t.kind == "tfidf":
        return f"{t.label}: {runs}{t.train_rows:,} captions"
    if t.kind.endswith("predict"):
        return f"{t.label}: predicts {t.eval_rows:,} {'images' if t.kind in IMAGE_KINDS else 'captions'} (no training)"
    if t.kind.endswith("features"):
        return f"{t.label}: features of {t.once_rows:,} rows once, then a head {runs}{t.epochs} epochs x {t.train_rows:,}"
    what = "images" if t.kind == "image" else "captions"
    return f"{t.label}: {runs}{t.epochs} epochs x {t.train_rows:,} {what} (+ {t.eval_rows:,} predicted per fit)"


# ---------------------------------------------------------------------------------------------
# time and memory: a few timed batches of each architecture on this machine's device

def plan_device(params) -> tuple[str | None, str]:
    """The device the profile runs on as this machine would run it, or None with why not here."""
    from mlc_utils.core.device import visible_cuda_devices
    count, why = visible_cuda_devices()
    wants_cuda = params.device.startswith("cuda") or (params.device == "auto" and params.image.gpus > 0)
    if params.device == "cpu" or (params.device == "auto" and not wants_cuda and not count):
        return "cpu", ""
    if not count:
        return None, f"not measurable here (the profile runs on CUDA: {why})"
    index = int(params.device.partition(":")[2] or 0) if params.device.startswith("cuda") else 0
    return f"cuda:{index}", ""


def _time_batches(model, batch, train: bool, device, amp_dtype, steps: int) -> float:
    """Seconds per batch: one untimed warm-up, then ``steps`` timed ones."""
    import torch

    from mlc_utils.core.device import place_model, to_device
    model = place_model(model, device).train(train)
    batch = to_device(batch, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6) if train else None
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def step():
        with torch.set_grad_enabled(train), autocast:
            out = model(batch)
        if train:
            out.float().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / steps


def _time_head(head, dim: int, batch: int, device, amp_dtype, steps: int) -> float:
    """Seconds per training batch of a head on saved features: its rows gathered from a table of
    features (as the loader fetches them from memory), forward, backward and the optimizer's step."""
    import torch
    table = torch.randn(4 * batch, dim, device=device)

    class Gathered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, rows):
            return self.head(table[rows])
    return _time_batches(Gathered(), torch.randperm(len(table))[:batch], True, device, amp_dtype, steps)


def _time_decode(data_config: dict, data_dir: Path, image_ids: list[str], train: bool) -> float:
    """Seconds to decode and transform one image (as the training or evaluation pass does, in this
    process: the CPU's loaders have no workers): one untimed image, then the rest."""
    from mlc_utils.data.images import image_dataset
    settings = dict(data_config)
    augment = settings.pop("auto_augment", None)
    dataset = image_dataset(data_dir, image_ids, None, settings, train=train, auto_augment=augment)
    dataset[0]
    started = time.perf_counter()
    for i in range(1, len(dataset)):
        dataset[i]
    return (time.perf_counter() - started) / max(len(dataset) - 1, 1)


def _sample_images(data_dir: Path, n: int = DECODE_SAMPLE + 1) -> list[str]:
    folder = Path(data_dir) / "data"
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.name.lower().endswith((".jpg", ".jpeg", ".png")) and e.is_file()]
        return sorted(names)[:n]


def machine_facts(device) -> dict:
    """What a calibration's seconds depend on besides the model and its settings (on a CPU the
    allocator too: glibc's malloc halves an image pass here, ``core.allocator``)."""
    import torch

    from mlc_utils.core.allocator import loaded_allocator
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    facts = {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": _cpu_model()}
    return facts if device.type == "cuda" else {**facts, "allocator": loaded_allocator()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


class CalibrationCache:
    """Calibrated seconds by key (JSON of the architecture, settings and machine) in one JSON file;
    a missing or unreadable file is an empty cache, a file that cannot be written is no error."""

    def __init__(self, path: Path | None):
        self.path, self.changed = path, False
        try:
            self.entries = json.loads(path.read_text()) if path is not None and path.is_file() else {}
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def key(**facts) -> str:
        return json.dumps(facts, sort_keys=True, default=str)

    def get(self, key: str):
        return self.entries.get(key)

    def put(self, key: str, value) -> None:
        self.entries[key], self.changed = value, True

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        from mlc_utils.core.io import atomic_write_text
        try:
            atomic_write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True))
        except OSError:
            pass


def calibration_path(params, root: Path) -> Path:
    return Path(root, params.image.cache_dir, "plan", "calibration.json")


def calibrate(plan: Plan, steps: int = 2, budget_s: float | None = None, log=None,
              cache: CalibrationCache | None = None, data_dir: Path | None = None) -> None:
    """Time each architecture (training steps at its batch size, forward passes at the inference
    batch size of its input, at the run's precision and torch's thread count) and the decoding of
    the data's images on the plan's device, unless ``cache`` has them; fill in every training's
    seconds and peak memory. Past ``budget_s`` seconds of calibration the rest are left without a
    time ("not calibrated")."""
    import torch

    from mlc_utils.core.inference import Inference
    if not plan.measurable:
        return
    settings = plan.params.inference
    inference = Inference(plan.device, settings.batch_size, settings.num_workers, settings.precision)
    device, amp = inference.torch_device, inference.autocast_dtype()
    cache = cache or CalibrationCache(None)
    machine = {**machine_facts(device), "precision": str(amp or torch.float32)}
    images = _sample_images(data_dir) if data_dir is not None else []
    started = time.perf_counter()
    for stage in plan.stages:
        for t in stage.trainings:
            if t.build is None or t.seconds is not None:
                continue
            eval_batch = inference.batch_for("images" if t.kind in IMAGE_KINDS else "tokens")
            keys = {"forward": cache.key(**t.arch, **machine, forward_batch=eval_batch)}
            if t.kind in TRAINED:
                keys["train"] = cache.key(**t.arch, **machine, train_batch=t.batch_size)
            if t.head_dim:
                keys["head"] = cache.key(**t.arch, **machine, head_batch=t.batch_size)
            if t.kind in IMAGE_KINDS and images:
                keys["decode"] = cache.key(decode=t.data_config, data=str(data_dir), images=images, **machine)
            missing = [what for what, key in keys.items() if cache.get(key) is None]
            if missing:
                if budget_s is not None and time.perf_counter() - started > budget_s:
                    stage.time_note = f"not calibrated (calibration stopped after {budget_s:.0f} s)"
                    continue
                _calibrate(t, missing, keys, cache, device, amp, steps, eval_batch, data_dir, images)
                if log:
                    log(f"calibrated {t.label} on {device}: " + ", ".join(
                        f"{what} {cache.get(keys[what])['s']:.3f} s" for what in missing))
            found = {what: cache.get(key) for what, key in keys.items()}
            decode = found.get("decode") or ({"s": DECODE_S["train"], "eval_s": DECODE_S["eval"]}
                                            if t.kind in IMAGE_KINDS else {"s": 0.0, "eval_s": 0.0})
            t.seconds = _seconds(t, (found.get("train") or found.get("head") or {"s": 0.0})["s"],
                                 found["forward"]["s"] / eval_batch, decode["s"], decode["eval_s"])
            peak = (found.get("train") or {}).get("peak")
            t.peak_bytes, t.peak_measured = (peak, True) if peak else (_memory_floor(t), False)
    cache.save()


def _calibrate(t: Training, missing: list[str], keys: dict, cache: CalibrationCache, device, amp, steps: int,
               eval_batch: int, data_dir: Path | None, images: list[str]) -> None:
    """Time what ``missing`` names for ``t`` into ``cache``: a training batch (and its peak memory on
    a GPU) and a forward batch of its architecture with random weights; the decoding of ``images``
    (seconds a training image in ``s``, an evaluation image in ``eval_s``)."""
    import torch
    if "decode" in missing:
        cache.put(keys["decode"], {"s": _time_decode(t.data_config, data_dir, images, True),
                                   "eval_s": _time_decode(t.data_config, data_dir, images, False)})
    if not {"train", "forward", "head"} & set(missing):
        return
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, batch_of = t.build()
    if "train" in missing:
        train_s = _time_batches(model, batch_of(t.batch_size, True), True, device, amp, steps)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        cache.put(keys["train"], {"s": train_s, "peak": peak})
    if "forward" in missing:
        cache.put(keys["forward"], {"s": _time_batches(model, batch_of(eval_batch), False, device, amp, steps)})
    if "head" in missing:
        cache.put(keys["head"], {"s": _time_head(model.head, t.head_dim, t.batch_size, device, amp, max(steps, HEAD_STEPS))})
    del model


def _seconds(t: Training, train_batch_s: float, forward_row_s: float, decode_train_s: float,
             decode_eval_s: float) -> float:
    """The model of time of one training (module docstring): its fits, then its forward passes."""
    per_process = math.ceil(t.train_rows / t.processes)
    if t.kind in TRAINED:   # epochs that train the head alone cost a forward pass at the training batch's shape
        steps = t.epochs - t.frozen_epochs + t.frozen_epochs * FROZEN_STEP_SHARE
        fit_s = steps * math.ceil(per_process / t.batch_size) * train_batch_s + t.epochs * per_process * decode_train_s
    elif train_batch_s:   # a head on saved features, its training batches timed, plus each epoch's validation
        fit_s = t.epochs * (math.ceil(t.train_rows / t.batch_size) * train_batch_s * (1 + HEAD_VALIDATION) + HEAD_EPOCH_S)
    else:   # a head on saved features, untimed: nominal
        fit_s = t.epochs * t.train_rows * NOMINAL_ROW_S["head"]
    fit_s += t.epochs * 2 * t.checkpoint_bytes / CHECKPOINT_BYTES_S
    forward_rows = t.runs * math.ceil(t.eval_rows / t.processes) + t.once_rows
    return t.runs * fit_s + forward_rows * (forward_row_s + decode_eval_s)


def _memory_floor(t: Training) -> int:
    """Weights, gradients and AdamW's two moments of what trains, plus the frozen part's weights
    (activations come on top: measured only on a GPU)."""
    return t.params * 4 * 4 + t.backbone_params * 4


def make_plan(params, root: Path = PROJECT_ROOT, stages=None, rows: tuple[int, int] | None = None,
              calibration: bool = True, budget_s: float | None = None, log=None) -> Plan:
    (n_train, n_test), rows_from = row_counts(params, Path(root), rows)
    device, why = plan_device(params)
    data_dir = params.data_path(Path(root))
    eval_batch = None
    if device is not None:
        from mlc_utils.core.inference import Inference
        eval_batch = Inference(device, params.inference.batch_size).batch_for("tokens")
    plans = stage_plans(params, n_train, n_test, stages or params.stages, data_dir, eval_batch)
    plan = Plan(params, plans, (n_train, n_test), rows_from, device or params.device, device is not None)
    for stage in plans:
        for t in stage.trainings:
            if t.peak_bytes is None and t.params:
                t.peak_bytes = _memory_floor(t)
        if device is None and any(t.build is not None for t in stage.trainings):
            stage.time_note = why
    if device is not None and not calibration:
        plan.note = "time: not calibrated (--no-calibrate)"
        for stage in plans:
            if any(t.seconds is None for t in stage.trainings):
                stage.time_note = "not calibrated (--no-calibrate)"
    elif calibration:
        calibrate(plan, budget_s=budget_s, log=log, cache=CalibrationCache(calibration_path(params, Path(root))),
                  data_dir=data_dir)
    for stage in plans:  # a stage with a training nothing could time (no architecture available here)
        if not stage.time_note and any(t.seconds is None for t in stage.trainings):
            stage.time_note = "not measurable here (the model's configuration is not available offline)"
    return plan


def _rows(text: str) -> tuple[int, int]:
    try:
        train, test = (int(v.replace(",", "").replace("_", "")) for v in text.split(":" if ":" in text else "/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rows: expected TRAIN/TEST row counts such as 30000/10000 (got {text!r})")
    return train, test


def cli(argv: list[str]) -> int:
    from mlc_utils.study.params import ParamError, load_params
    parser = argparse.ArgumentParser(prog="python -m mlc_utils plan",
                                     description="Print, stage by stage, the work, time, disk and peak memory of a run.")
    parser.add_argument("--params", required=True, help="params YAML, e.g. params/comp5329-gpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, as for run")
    parser.add_argument("--rows", type=_rows, metavar="TRAIN/TEST",
                        help="row counts to plan for (default: the data folder's, see the docs)")
    parser.add_argument("--no-calibrate", action="store_true", help="skip the timed batches (no times)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
    except ParamError as err:
        print(f"mlc_utils plan: {err}", file=sys.stderr)
        return 2
    print(make_plan(params, rows=args.rows, calibration=not args.no_calibrate).render())
    return 0
