"""Writing a demo dataset: the rows of every image (labels, objects, caption), the images, the CSVs
and the marker, built in a temporary sibling folder and moved into place, so a killed run never
leaves a half-written dataset behind. Every image draws from its own ``(seed, index)`` random
streams, so the same seed gives byte-identical files."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mlc_utils.core.io import atomic_write_text
from mlc_utils.data.csvio import write_competition_csv
from mlc_utils.data.demo.captions import draw_caption
from mlc_utils.data.demo.drawing import render
from mlc_utils.data.demo.labels import CLASS_NAMES, NUM_CLASSES, object_sizes, sample_labels
from mlc_utils.data.demo.quirks import QUIRKS, assign_quirks, caption_quirks, with_quirks
from mlc_utils.data.labels import LabelSpace

MARKER = "demo_dataset.json"
GENERATOR = "mlc_utils.data.demo"
FORMAT_VERSION = 1
JPEG_QUALITY = 90
MIN_N = 10
DEFAULT_N = 1500
DEFAULT_TEST_FRACTION = 0.25  # the real data: 30,000 train + 10,000 test


class DemoDirError(FileExistsError):
    """The output folder holds something that is not a previous demo dataset (use ``force``)."""


def _validate(n, seed, test_fraction) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < MIN_N:
        raise ValueError(f"n: must be an integer >= {MIN_N} (got {n!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0 (got {seed!r})")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction: must be strictly between 0 and 1 (got {test_fraction!r})")


def _read_marker(out_dir: Path) -> dict | None:
    try:
        marker = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == GENERATOR else None


def split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    """``(n_train, n_test)``: the test share rounded, at least one image on each side."""
    n_test = min(n - 1, max(1, int(round(n * test_fraction))))
    return n - n_test, n_test


def _scenes(n: int, seed: int):
    """Per image: (image_id, labels, instances, caption, caption stats); images are not drawn here.

    Labels, object sizes, pixels and caption each draw from their own ``(seed, index, k)`` stream, so
    the rows can be rebuilt without rendering, and image ``i`` does not depend on the other images.
    """
    quirk_rows = assign_quirks(seed, n)
    for index in range(n):
        labels = sample_labels(np.random.default_rng([seed, index, 0]))
        instances = object_sizes(np.random.default_rng([seed, index, 1]), labels)
        rng = np.random.default_rng([seed, index, 3])
        text, stats = draw_caption(rng, instances, labels)
        yield f"{index}.jpg", labels, instances, with_quirks(rng, text, quirk_rows[index]), stats


def demo_rows(n: int = DEFAULT_N, seed: int = 0) -> pd.DataFrame:
    """The rows :func:`make_demo_dataset` writes (``ImageID, Labels, Caption``; train rows first, then
    test rows, split by :func:`split_sizes`), computed without drawing or writing any image."""
    _validate(n, seed, 0.5)
    rows = [{"ImageID": image_id, "Labels": labels, "Caption": caption}
            for image_id, labels, _, caption, _ in _scenes(int(n), int(seed))]
    return pd.DataFrame(rows, columns=["ImageID", "Labels", "Caption"])


def make_demo_dataset(out_dir: str | os.PathLike, n: int = DEFAULT_N, seed: int = 0,
                      test_fraction: float = DEFAULT_TEST_FRACTION, *, force: bool = False) -> dict:
    """Write a synthetic dataset of ``n`` images (train + test) to ``out_dir``; return a summary dict.

    ``out_dir`` must not exist, be empty, or hold a previous demo dataset (recognised by its
    ``demo_dataset.json``; its stale images are removed, nothing else); anything else raises
    :class:`DemoDirError` unless ``force`` (then the dataset's files are written over, others kept).
    Raises ``ValueError`` naming the argument for a bad ``n`` (>= 10), ``seed`` (>= 0) or
    ``test_fraction`` (strictly between 0 and 1).

    The summary holds ``n, n_train, n_test, seed, test_fraction, class_names, label_frequency``
    (share of all images holding each class), ``labels_per_image`` (min, mean, max),
    ``mention_rate`` (share of objects named in their caption), ``negations``, ``wrong_mentions``,
    ``quirks`` (rows showing each), ``image_width``/``image_height`` (min, max), ``out_dir`` and ``seconds``.
    """
    started = time.perf_counter()
    _validate(n, seed, test_fraction)
    n, seed, test_fraction = int(n), int(seed), float(test_fraction)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoDirError(f"{out_dir} exists and is not a folder")
    previous = _read_marker(out_dir) if out_dir.is_dir() else None
    if out_dir.is_dir() and previous is None and not force:
        entries = sorted(p.name for p in out_dir.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise DemoDirError(f"{out_dir} is not empty ({shown}) and is not a previous demo dataset (no {MARKER}); "
                               "choose a new or empty folder, or pass --force to write the dataset's files into it")

    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.absolute().name}.demo-", dir=parent))
    try:
        summary = _build(tmp, n, seed, test_fraction)
        _publish(tmp, out_dir, previous, n)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    summary["out_dir"] = str(out_dir)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def _build(root: Path, n: int, seed: int, test_fraction: float) -> dict:
    """Write the whole dataset under ``root``; return the summary (also written as the marker)."""
    (root / "data").mkdir()
    n_train, n_test = split_sizes(n, test_fraction)
    rows, sizes = [], []
    mentions = objects = negations = wrong = 0
    for index, (image_id, labels, instances, caption, stats) in enumerate(_scenes(n, seed)):
        image = render(np.random.default_rng([seed, index, 2]), instances)
        sizes.append(image.size)
        image.save(root / "data" / image_id, "JPEG", quality=JPEG_QUALITY)
        rows.append({"ImageID": image_id, "Labels": labels, "Caption": caption})
        mentions += stats["mentioned"]
        objects += stats["objects"]
        negations += stats["negation"]
        wrong += stats["wrong"]
    frame = pd.DataFrame(rows, columns=["ImageID", "Labels", "Caption"])
    write_competition_csv(frame.iloc[:n_train], root / "train.csv")
    write_competition_csv(frame.iloc[n_train:][["ImageID", "Caption"]], root / "test.csv")
    _write_test_labels(frame.iloc[n_train:], root / "test_labels.csv")

    multi_hot = LabelSpace(NUM_CLASSES).encode(frame["Labels"].tolist())
    per_image = multi_hot.sum(axis=1)
    widths, heights = zip(*sizes)
    summary = {
        "generator": GENERATOR, "format_version": FORMAT_VERSION,
        "n": n, "n_train": n_train, "n_test": n_test, "seed": seed, "test_fraction": test_fraction,
        "class_names": list(CLASS_NAMES),
        "label_frequency": [round(float(v), 4) for v in multi_hot.mean(axis=0)],
        "labels_per_image": [int(per_image.min()), round(float(per_image.mean()), 3), int(per_image.max())],
        "mention_rate": round(mentions / objects, 4), "negations": negations, "wrong_mentions": wrong,
        "quirks": {q: sum(q in caption_quirks(c) for c in frame["Caption"]) for q in QUIRKS},
        "image_width": [min(widths), max(widths)], "image_height": [min(heights), max(heights)],
        "files": {"train": "train.csv", "test": "test.csv", "test_truth": "test_labels.csv", "images": "data/"},
    }
    (root / MARKER).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _write_test_labels(frame: pd.DataFrame, path: Path) -> None:
    """``ImageID,Labels`` as a Kaggle submission spells it. Not through ``write_competition_csv``,
    which writes only the train/test shapes (both with a caption); no field here needs quoting."""
    lines = ["ImageID,Labels"] + [f"{image_id},{LabelSpace.format(labels)}"
                                  for image_id, labels in zip(frame["ImageID"], frame["Labels"])]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _publish(tmp: Path, out_dir: Path, previous: dict | None, n: int) -> None:
    """Move the finished dataset into place; each file lands whole (``os.replace``)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)  # one rename publishes the whole dataset
        return
    data = out_dir / "data"
    if not data.is_dir():
        os.replace(tmp / "data", data)
    else:
        for item in sorted((tmp / "data").iterdir()):
            os.replace(item, data / item.name)
        old_n = previous.get("n") if previous else None
        if isinstance(old_n, int):  # drop the previous demo's images this one does not have
            for index in range(n, old_n):
                stale = data / f"{index}.jpg"
                if stale.is_file():
                    stale.unlink()
    for name in ("test_labels.csv", "test.csv", "train.csv", MARKER):  # the marker last
        os.replace(tmp / name, out_dir / name)
