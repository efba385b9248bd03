"""The work of each stage of a run: which models train, how often, on how many rows, and what
they write (:class:`Training` per model, :class:`StagePlan` per stage, :class:`Plan` for the run).
Times are filled in by :mod:`.calibration`; the model of time is :mod:`.costs`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlc_utils.study.plan.costs import (
    FUSION_EPOCH_S,
    IMAGE_KINDS,
    NOMINAL_ROW_S,
    NOMINAL_S,
    PROBS_BYTES,
    STAGE_OVERHEAD_BYTES,
    STAGE_OVERHEAD_S,
    checkpoint_bytes,
)
from mlc_utils.study.plan.render import render_plan, work_line

COMPETITION_ROWS = (30_000, 10_000)
CAPTION_SAMPLE = 2000                # captions tokenized for their lengths (batches are cut to their longest)


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
    runtime: str = "torch"     # what its largest forward pass runs on (calibration: openvino where run_model will)
    allocator_saving_s: float = 0.0   # seconds tcmalloc would save (glibc's malloc: its measured kernel share)
    scaled: bool = False       # a nominal time already scaled to this machine (calibration)
    seconds_range: tuple[float, float] | None = None   # (fast, slow) of a time planned from published figures

    @property
    def disk_bytes(self) -> int:
        return self.runs * 2 * self.checkpoint_bytes + self.extra_bytes + self.feature_bytes  # last.pt, best.pt


@dataclass
class StagePlan:
    stage: str
    trainings: list[Training] = field(default_factory=list)
    summary: str = ""          # the stage's own work, besides its trainings'
    nominal_s: float = 0.0
    scale: float = 1.0         # this machine's speed on the small steps against the fitting machine's (calibration)
    disk_bytes: int = STAGE_OVERHEAD_BYTES
    time_note: str = ""        # why there is no time ("not measurable here ...")

    @property
    def work(self) -> str:
        """What the stage does: its own work and each training's (read after calibration: the runtime)."""
        return "; ".join(([self.summary] if self.summary else []) + [work_line(t) for t in self.trainings])

    @property
    def seconds(self) -> float | None:
        if self.time_note:
            return None
        return self.nominal_s * self.scale + sum(t.seconds or 0.0 for t in self.trainings)

    @property
    def peak_bytes(self) -> int | None:
        peaks = [t.peak_bytes for t in self.trainings if t.peak_bytes]
        return max(peaks) if peaks else None

    @property
    def seconds_range(self) -> tuple[float, float] | None:
        """(fast, slow) where a training's time is planned from published figures (:mod:`.published`)."""
        if self.seconds is None or not any(t.seconds_range for t in self.trainings):
            return None
        return tuple(self.nominal_s * self.scale
                     + sum((t.seconds_range or (t.seconds or 0.0,) * 2)[end] for t in self.trainings) for end in (0, 1))


@dataclass
class Plan:
    params: object
    stages: list[StagePlan]
    rows: tuple[int, int]
    rows_from: str
    device: str                # where the profile runs, as this machine would run it
    measurable: bool
    note: str = ""
    allocator: str = ""        # the CPU's allocator in this process (calibration): tcmalloc, glibc, glibc tuned
    sources: list[str] = field(default_factory=list)   # lines printed after the total (published figures)

    @property
    def allocator_saving_s(self) -> float:
        """What tcmalloc would save of this plan here (nothing where the plan already runs on it)."""
        return sum(t.allocator_saving_s for s in self.stages for t in s.trainings)

    @property
    def seconds(self) -> float | None:
        times = [s.seconds for s in self.stages]
        return None if any(t is None for t in times) else sum(times)

    @property
    def seconds_range(self) -> tuple[float, float] | None:
        if self.seconds is None or not any(s.seconds_range for s in self.stages):
            return None
        return tuple(sum((s.seconds_range or (s.seconds,) * 2)[end] for s in self.stages) for end in (0, 1))

    @property
    def disk_bytes(self) -> int:
        return sum(s.disk_bytes for s in self.stages)

    @property
    def hub_bytes(self) -> int:
        return sum(t.hub_bytes for s in self.stages for t in s.trainings)

    def stage_seconds(self, stage: str) -> float | None:
        return next((s.seconds for s in self.stages if s.stage == stage), None)

    def render(self) -> str:
        return render_plan(self)


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
                        checkpoint_bytes=checkpoint_bytes(head, cfg), feature_bytes=(n_train + n_test) * views * dim * 4,
                        extra_bytes=probs, hub_bytes=hub, head_dim=dim, **common)
    processes = max(params.image.torchrun_processes(), 1)
    return Training(label or spec.label, "image", runs, cfg.epochs, train_rows,
                    cfg.epochs * val_rows + (val_rows + n_test) * views, params=total,
                    checkpoint_bytes=checkpoint_bytes(total, cfg), extra_bytes=probs,
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
                                checkpoint_bytes=checkpoint_bytes(total, cfg), extra_bytes=probs,
                                batch_size=cfg.batch_size, build=build_for(arch) if found else None, arch=arch,
                                frozen_epochs=min(cfg.freeze_epochs, cfg.epochs)))
        elif kind == "frozen_encoder":
            cfg = params.caption.head_training(**params.training_defaults())
            arch = arch_for(cfg.batch_size)
            head = dim * params.num_classes
            out.append(Training(f"caption {kind}", "caption-features", runs, cfg.epochs, train_rows, 0,
                                once_rows=n_train + n_test, params=head, backbone_params=total,
                                checkpoint_bytes=checkpoint_bytes(head, cfg),
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
            plan.summary = f"reads {n_train + n_test:,} rows and the size of {min(sample, n_train + n_test):,} images"
            plan.nominal_s += NOMINAL_S[stage] + min(sample, n_train + n_test) * NOMINAL_ROW_S[stage]
        elif stage == "split":
            folds = params.split.folds
            plan.summary = (f"{folds} folds" if folds else f"a {params.split.val_fraction:.0%} holdout") + \
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
            plan.summary = f"{heads} head(s) x {runs} fit(s) x {epochs} epochs on {train_rows:,} rows of saved outputs" \
                if heads else f"combines the saved probabilities of {n_train + n_test:,} rows"
            plan.nominal_s += NOMINAL_S[stage] + heads * runs * epochs * (FUSION_EPOCH_S + train_rows * NOMINAL_ROW_S["fusion"])
            if stage == "ensemble":  # weights and threshold searched once, and again per fold when cross-fitted
                plan.nominal_s += n_train * (1 + params.split.folds) * NOMINAL_ROW_S["ensemble"]
            plan.disk_bytes += (heads + 1) * _probs(params, n_train, n_test, runs)
            if heads:
                plan.trainings = _fusion_inputs(params, n_train + n_test, image_trainings(), caption_trainings(), cache)
        if plan.trainings:
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
