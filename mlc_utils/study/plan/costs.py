"""The plan's model of time and memory: what one training costs, given the seconds its calibration
measured (a training batch, a forward row, the decoding of an image), plus the nominal costs of the
steps too small to calibrate. Numbers only: the work comes from :mod:`.work`, the measured seconds
from :mod:`.calibration`.
"""
from __future__ import annotations

import math

COMPETITION_ROWS = (30_000, 10_000)
STAGE_OVERHEAD_BYTES = 5 * 2**20      # executed notebook, its HTML, tables and figures
PROBS_BYTES = 4                       # float32 probabilities per row and class
# Fitted to the stage times of idle demo runs and of the CPU profile from an empty feature cache on the
# dev pack (10,000 + 1,000 rows) and on the full data's size (30,000 + 10,000, benchmarks/tiled_data.py),
# on a 2-core EPYC (2026-12-02/03 and 2026-12-07, benchmarks/plan_accuracy.py): eda 8 s, split 6-13 s,
# ensemble 15 s on the dev pack and 35 s on the full data (cross-fitted: its weight grid searched 6 times),
# explore 5-6 s. A stage's kernel start and imports took 4-9 s (papermill's cell times), its figures and
# tables 2-4 s whatever the rows; TF-IDF about 14 s for 5 fits of 8,000 captions and 45 s for 5 of 24,000.
# A fusion head's epoch: 0.05 s on the demo's 900 rows, 0.057 s on 8,000 and 0.167 s on 24,000 (the
# heads' cell: 400 epochs in 22.7 s and 66.7 s); the holdout's fusion inputs are forward passes, timed.
STAGE_OVERHEAD_S = 6.0               # every stage: kernel start, imports, rendering the report
NOMINAL_S = {"eda": 2.0, "split": 0.5, "fusion": 5.0, "ensemble": 0.0, "explore": 0.0}   # on top of the overhead
NOMINAL_ROW_S = {"eda": 0.001, "split": 0.0001, "tfidf": 0.0004, "head": 2e-5, "fusion": 6.0e-6,
                 "ensemble": 1.6e-4}   # per row (x epochs for heads, x fits for the ensemble)
FUSION_EPOCH_S = 0.02                # a fusion head's epoch besides its rows: validation, metrics, checkpoint
FROZEN_STEP_SHARE = 1 / 3            # a step with the encoder frozen is its forward pass: a third of a full step
CHECKPOINT_BYTES_S = 600e6           # torch.save to the run's disk (272 MB in 0.24-0.68 s here); last.pt and
                                     # best.pt are both counted every epoch (early epochs mostly improve)
# seconds to decode and transform one image where the data folder has none to time: one core, no
# loader workers (benchmarks/README.md, input_pipeline: decode + train / eval transform)
DECODE_S = {"train": 0.0029, "eval": 0.0026}
HEAD_EPOCH_S = 0.08                  # a head's epoch besides its batches: metrics, checkpoints, progress; its
HEAD_VALIDATION = 1 / 12             # validation pass: a quarter of the rows, forward only (a third of a step)
                                     # (profiled: 30 epochs of the class-attention head on 8,000 + 2,000 rows)
# The nominal costs above were fitted on one machine; another runs them at its own speed. The calibration
# times a fixed mix of the small steps' work (threshold sweeps, epoch metrics, a small head's training
# steps) and scales every nominal cost by its seconds over REFERENCE_S, what it took where they were fitted.
REFERENCE_S = 0.030                   # the fastest of 3, 2-core EPYC, tcmalloc (2026-12-07): 0.0298-0.0304 s
MACHINE_SCALE = (0.25, 8.0)          # a measured scale outside this is taken as noise and clipped
TRAINED = ("image", "caption")       # kinds whose whole model trains (the rest: heads on features, predictions)
IMAGE_KINDS = ("image", "image-features", "image-predict")   # rows are decoded images
OPTIMIZER_STATES = {"adamw": 2, "timm_adamw": 2, "sgd": 1}  # tensors of the parameters' size it keeps


def checkpoint_bytes(n_params: int, cfg) -> int:
    """What ``train.loop`` saves as last.pt (and, on a better epoch, best.pt, the same checkpoint):
    the weights, the optimizer's state and the EMA copy, all float32."""
    copies = 1 + OPTIMIZER_STATES.get(cfg.optimizer, 2) + (1 if cfg.ema else 0)
    return n_params * 4 * copies



def training_seconds(t, train_batch_s: float, forward_row_s: float, decode_train_s: float,
                     decode_eval_s: float, scale: float = 1.0) -> float:
    """The model of time of one training (module docstring): its fits, then its forward passes;
    ``scale``: this machine's speed on the small steps against the machine the nominal costs were fitted on."""
    per_process = math.ceil(t.train_rows / t.processes)
    if t.kind in TRAINED:   # epochs that train the head alone cost a forward pass at the training batch's shape
        steps = t.epochs - t.frozen_epochs + t.frozen_epochs * FROZEN_STEP_SHARE
        fit_s = steps * math.ceil(per_process / t.batch_size) * train_batch_s + t.epochs * per_process * decode_train_s
    elif train_batch_s:   # a head on saved features, its training batches timed, plus each epoch's validation
        fit_s = t.epochs * (math.ceil(t.train_rows / t.batch_size) * train_batch_s * (1 + HEAD_VALIDATION)
                            + HEAD_EPOCH_S * scale)
    else:   # a head on saved features, untimed: nominal
        fit_s = t.epochs * t.train_rows * NOMINAL_ROW_S["head"] * scale
    fit_s += t.epochs * 2 * t.checkpoint_bytes / CHECKPOINT_BYTES_S
    forward_rows = t.runs * math.ceil(t.eval_rows / t.processes) + t.once_rows
    return t.runs * fit_s + forward_rows * (forward_row_s + decode_eval_s)


def memory_floor(t) -> int:
    """Weights, gradients and AdamW's two moments of what trains, plus the frozen part's weights
    (activations come on top: measured only on a GPU)."""
    return t.params * 4 * 4 + t.backbone_params * 4
