"""A data folder as users download it, and the ``validate`` command that checks one.

    DIR/train.csv   ImageID,Labels,Caption
    DIR/test.csv    ImageID,Caption
    DIR/data/       the images named by ImageID
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlc_utils.core.fingerprint import IMAGE_FOLDER
from mlc_utils.data.csvio import (
    CsvFormatError,
    read_test_csv,
    read_train_csv,
    read_with_problems,
)
from mlc_utils.data.labels import LabelSpace


@dataclass
class StudyData:
    """Both tables of a data folder, read and checked, plus where the images are."""
    root: Path
    train: pd.DataFrame
    test: pd.DataFrame
    labels: LabelSpace

    @property
    def image_dir(self) -> Path:
        return self.root / IMAGE_FOLDER

    def targets(self, frame: pd.DataFrame | None = None) -> np.ndarray:
        return self.labels.encode(list((self.train if frame is None else frame)["Labels"]))

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / image_id


def _require_layout(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist (expected train.csv, test.csv and {IMAGE_FOLDER}/)")
    missing = [name for name in ("train.csv", "test.csv") if not (root / name).is_file()]
    if not (root / IMAGE_FOLDER).is_dir():
        missing.append(f"{IMAGE_FOLDER}/")
    if missing:
        raise FileNotFoundError(f"data folder {root} lacks {', '.join(missing)} "
                                f"(expected train.csv, test.csv and {IMAGE_FOLDER}/ as downloaded)")


def load_study_data(root: str | Path, labels: LabelSpace | None = None) -> StudyData:
    """Read both CSVs of a data folder; raises on any CSV problem (see :mod:`mlc_utils.data.csvio`)."""
    root = Path(root)
    _require_layout(root)
    labels = labels or LabelSpace()
    train = read_train_csv(root / "train.csv", labels)
    test = read_test_csv(root / "test.csv")
    clash = sorted(set(train.ImageID) & set(test.ImageID))
    if clash:
        raise CsvFormatError([_problem(root / "test.csv", test, i, "ImageID also in train.csv") for i in clash[:50]])
    return StudyData(root, train, test, labels)


def _problem(path, frame, image_id, message):
    from mlc_utils.data.csvio import CsvProblem
    line = int(frame.loc[frame.ImageID == image_id, "line"].iloc[0])
    return CsvProblem(str(path), line, f"{image_id}: {message}", image_id)


def check_image(path: Path) -> str | None:
    """None if the file decodes as training reads it, else why not (:func:`load_image` decides)."""
    from mlc_utils.data.image_files import ImageReadError, load_image
    try:
        load_image(path)
    except ImageReadError as err:
        return err.reason
    return None


def table_rows(root: str | Path, labels: LabelSpace | None = None) -> dict[str, int]:
    """Readable data rows of ``train.csv`` and ``test.csv`` (those present and with a valid header):
    what a study would train on and predict."""
    root, rows = Path(root), {}
    for kind in ("train", "test"):
        path = root / f"{kind}.csv"
        if path.is_file():
            try:
                rows[kind] = len(read_with_problems(path, kind, labels)[0])
            except CsvFormatError:
                continue
    return rows


def empty_tables(root: str | Path, rows: dict[str, int], need_test: bool = True) -> list[str]:
    """A table with a header and no rows reads as valid; the study would start on it and fail
    (or predict nothing) hours later, so it is a problem of its own."""
    wanted = {"train": "no labelled rows (only a header): add ImageID,Labels,Caption rows, or point data_dir "
                       "at the folder that has them",
              "test": "no rows to predict (only a header): add ImageID,Caption rows, or point data_dir "
                      "at the folder that has them"}
    return [f"{Path(root) / f'{kind}.csv'}: {why}" for kind, why in wanted.items()
            if rows.get(kind) == 0 and (kind == "train" or need_test)]


@dataclass
class ValidationReport:
    root: Path
    counts: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [f"data folder: {self.root}"] + [f"  {k}: {v}" for k, v in self.counts.items()]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def validate_folder(root: str | Path, labels: LabelSpace | None = None, check_images: bool = True,
                    progress: bool = True, need_test: bool = True) -> ValidationReport:
    """Check everything and collect every problem instead of stopping at the first.

    ``need_test``: an empty ``test.csv`` is a problem (the study predicts it unless it runs only
    its data stages)."""
    root = Path(root)
    labels = labels or LabelSpace()
    report = ValidationReport(root)
    try:
        _require_layout(root)
    except FileNotFoundError as err:
        report.problems.append(str(err))
        if not root.is_dir():
            return report
    frames = {}
    for kind in ("train", "test"):
        path = root / f"{kind}.csv"
        if not path.is_file():
            continue
        try:
            frames[kind], problems = read_with_problems(path, kind, labels)
            report.problems += [str(p) for p in problems]
        except CsvFormatError as err:
            report.problems += [str(p) for p in err.problems]
    train, test = frames.get("train"), frames.get("test")
    report.problems += empty_tables(root, {k: len(f) for k, f in frames.items()}, need_test)
    if train is not None:
        y = labels.encode(list(train.Labels))
        per_image = Counter(int(n) for n in y.sum(axis=1))
        report.counts["train rows"] = len(train)
        report.counts["labels per image"] = ", ".join(f"{k}: {per_image[k]}" for k in sorted(per_image))
        report.counts["label frequency"] = " ".join(f"{c}:{int(n)}" for c, n in enumerate(y.sum(axis=0)))
        report.counts["absent classes"] = ", ".join(str(c) for c in np.flatnonzero(y.sum(axis=0) == 0)) or "none"
        report.counts["csv dialect (train)"] = train.attrs.get("dialect")
    if test is not None:
        report.counts["test rows"] = len(test)
    if train is not None and test is not None:
        for image_id in sorted(set(train.ImageID) & set(test.ImageID)):
            report.problems.append(f"{image_id} is in both train.csv and test.csv")
    image_dir = root / IMAGE_FOLDER
    if check_images and image_dir.is_dir():
        bad = 0
        referenced = [(kind, frame) for kind, frame in (("train", train), ("test", test)) if frame is not None]
        total = sum(len(f) for _, f in referenced)
        from tqdm.auto import tqdm
        with tqdm(total=total, desc="checking images", disable=not progress, file=sys.stderr) as bar:
            for kind, frame in referenced:
                for image_id, line in zip(frame.ImageID, frame.line):
                    why = check_image(image_dir / image_id)
                    if why:
                        bad += 1
                        report.problems.append(f"{root / f'{kind}.csv'}:{line}: image {image_dir / image_id}: {why}")
                    bar.update()
        report.counts["images checked"] = total
        report.counts["bad image files"] = bad
    return report


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlc_utils validate",
                                     description="Check a data folder: both CSVs and every referenced image.")
    parser.add_argument("--data", required=True, help="folder holding train.csv, test.csv and data/")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--no-images", action="store_true", help="skip decoding the images (CSV checks only)")
    args = parser.parse_args(argv)
    report = validate_folder(args.data, LabelSpace(args.num_classes), check_images=not args.no_images)
    print(report.render())
    return 0 if report.ok else 1
