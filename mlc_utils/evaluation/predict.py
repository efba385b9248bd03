"""Predict a CSV's images with a checkpoint and write a Kaggle submission plus the probabilities.

    python -m mlc_utils predict --checkpoint runs/x/image/best.pt --data DIR --out sub.csv --tta

The checkpoint carries the model's ``spec`` (architecture, head, preprocessing, TTA views), so no
params file is needed. ``--tta`` averages the probabilities of the views the spec names (flips,
full-frame crops). The submission is ``ImageID,Labels`` (space-separated, input order, one row per
input row); every row gets at least its top class unless ``--no-fallback``, because an empty
Kaggle row scores zero. Probabilities are written beside it (``OUT.probs.npy`` and ``OUT.probs.csv``
with ImageID and one column per class) for fusion and ensembles.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from torch import nn
from torch.utils.data import Dataset

from mlc_utils.core.inference import Inference, probabilities, run_model
from mlc_utils.core.io import atomic_write_text, save_npy
from mlc_utils.data.labels import LabelSpace
from mlc_utils.evaluation.submission import write_submission
from mlc_utils.models.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    read_checkpoint,
)

__all__ = ["predict_probs", "predict_images", "write_probs", "load_thresholds", "probs_paths", "cli"]


def predict_images(model, root: str | os.PathLike, image_ids: Sequence[str], views: Sequence[str],
                   inference: Inference, progress: bool = True) -> np.ndarray:
    """Probabilities of an image model over ``root/data/<id>``, averaged over ``views`` (TTA)."""
    from mlc_utils.data.images import image_dataset
    spec = model.spec
    runs = []
    for view in views:
        dataset = image_dataset(root, image_ids, None, spec["data"], train=False, view=view,
                                num_classes=spec["num_classes"])
        runs.append(predict_probs(model, dataset, inference, name=f"{spec['arch']} predictions, {view} view",
                                  progress=progress))
    return np.mean(runs, axis=0)


def probs_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """``sub.csv`` -> (``sub.probs.npy``, ``sub.probs.csv``)."""
    stem = Path(out).with_suffix("")
    return stem.with_name(stem.name + ".probs.npy"), stem.with_name(stem.name + ".probs.csv")


def write_probs(image_ids: Sequence[str], probs: np.ndarray, out: str | os.PathLike) -> tuple[Path, Path]:
    npy, csv = probs_paths(out)
    save_npy(npy, np.asarray(probs, dtype=np.float32))
    frame = pd.DataFrame(np.asarray(probs), columns=[str(c) for c in range(np.asarray(probs).shape[1])])
    frame.insert(0, "ImageID", list(image_ids))
    atomic_write_text(csv, frame.to_csv(index=False, float_format="%.6f", lineterminator="\n"))
    return npy, csv


def load_thresholds(path: str | os.PathLike, num_classes: int) -> float | np.ndarray:
    """One threshold or one per class from ``.json`` (number, list, or {"threshold(s)": ...}),
    ``.npy``, or a text file of numbers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--thresholds: {path} does not exist")
    if path.suffix == ".npy":
        values = np.load(path)
    elif path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            data = data.get("thresholds", data.get("threshold"))
        values = np.asarray(data, dtype=np.float64)
    else:
        values = np.asarray(path.read_text().replace(",", " ").split(), dtype=np.float64)
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size not in (1, num_classes):
        raise ValueError(f"--thresholds: {path} holds {values.size} values; expected 1 or {num_classes}")
    if not np.all((values > 0) & (values < 1)):
        raise ValueError(f"--thresholds: {path} has values outside (0, 1)")
    return float(values[0]) if values.size == 1 else values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlc_utils predict", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a best.pt/last.pt/model.pt written by training")
    parser.add_argument("--data", required=True, help="data folder with data/<ImageID> images")
    parser.add_argument("--csv", help="rows to predict (default: DATA/test.csv)")
    parser.add_argument("--out", required=True, help="submission CSV to write")
    parser.add_argument("--tta", action="store_true", help="average over the checkpoint's TTA views")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="decision threshold (default: the checkpoint's)")
    group.add_argument("--thresholds", help="file with one threshold or one per class")
    parser.add_argument("--no-fallback", action="store_true", help="allow rows without any label")
    parser.add_argument("--batch-size", type=int, default=0, help="images per batch (0: chosen for the device)")
    parser.add_argument("--num-workers", type=int, default=-1, help="DataLoader workers (-1: chosen for the device)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible, else the CPU), cpu, cuda or cuda:N")
    return parser


def run(args: argparse.Namespace) -> dict:
    from mlc_utils.data.csvio import read_competition_csv
    checkpoint = read_checkpoint(args.checkpoint)
    spec = checkpoint["spec"]
    if spec.get("kind") != "image":
        raise ValueError(f"--checkpoint: {args.checkpoint} holds a '{spec.get('kind')}' model, not an image model"
                         + (" (a head trained on cached features: use the model.pt beside it)"
                            if spec.get("kind") == "image_head" else ""))
    model, _ = load_checkpoint(args.checkpoint, checkpoint=checkpoint)
    csv = Path(args.csv) if args.csv else Path(args.data) / "test.csv"
    frame = read_competition_csv(csv, label_space=LabelSpace(spec["num_classes"]))
    num_classes = spec["num_classes"]
    if args.thresholds:
        threshold = load_thresholds(args.thresholds, num_classes)
    else:
        threshold = args.threshold if args.threshold is not None else \
            float(checkpoint.get("params", {}).get("threshold", 0.5))
        if not 0 < threshold < 1:
            raise ValueError(f"--threshold: must be in (0, 1) (got {threshold})")
    views = list(spec.get("tta_views", ["center"])) if args.tta else ["center"]
    ids = frame.ImageID.tolist()
    inference = Inference(args.device, args.batch_size, args.num_workers)
    probs = predict_images(model, args.data, ids, views, inference)
    out = write_submission(ids, probs, threshold, args.out, at_least_one=not args.no_fallback)
    npy, probs_csv = write_probs(ids, probs, args.out)
    return {"rows": len(ids), "views": views, "threshold": threshold, "submission": out, "probs": npy,
            "probs_csv": probs_csv}


def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from mlc_utils.data.image_files import ImageReadError
    try:
        result = run(args)
    except (FileNotFoundError, ValueError, ImageReadError, CheckpointMismatchError) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {result['submission']} ({result['rows']} rows, views {', '.join(result['views'])}, "
          f"threshold {np.round(result['threshold'], 3).tolist()}) and {result['probs']}")
    return 0


def predict_probs(model: nn.Module, dataset: Dataset, inference: Inference, *, name: str = "predict",
                  collate_fn=None, progress: bool = False) -> np.ndarray:
    """Sigmoid probabilities ``(n, C)`` in dataset order, through the one inference path."""
    return run_model(model, dataset, inference, name=name, output=probabilities, collate_fn=collate_fn,
                     progress=progress)
