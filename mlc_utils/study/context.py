"""What a stage notebook needs in its first cell: params, data, and where to put artifacts.

Notebooks stay thin: ``ctx = open_stage("image", params_file, overrides, project_root)`` and the
rest of the notebook calls library functions with ``ctx``. The same call works under papermill
(parameters injected) and interactively in JupyterLab (the notebook's defaults).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mlc_utils.data.labels import LabelSpace
from mlc_utils.study.artifacts import Figure, Table
from mlc_utils.study.params import StudyParams, load_params
from mlc_utils.study.stages import STAGES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = "stage.json"  # written by the pipeline when a stage's notebook has run to the end


@dataclass(frozen=True)
class StudyPaths:
    """Where one run of the study lives: every path of a run is derived here and nowhere else.

    ``runs/<run>/<stage>/`` holds a stage's artifacts and manifest, ``runs/<run>/NN_<stage>.ipynb``
    its executed notebook, ``reports/<run>/`` the HTML.
    """
    root: Path
    run: str

    @property
    def run_dir(self) -> Path:
        return self.root / "runs" / self.run

    @property
    def report_dir(self) -> Path:
        return self.root / "reports" / self.run

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def notebook_in(self, stage: str) -> Path:
        return self.root / "notebooks" / STAGES[stage].notebook

    def notebook_out(self, stage: str) -> Path:
        return self.run_dir / STAGES[stage].notebook

    def manifest_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / MANIFEST

    def manifest(self, stage: str) -> dict | None:
        """The stage's manifest when it finished, else None."""
        try:
            return json.loads(self.manifest_path(stage).read_text())
        except (OSError, ValueError):
            return None


@dataclass
class StageContext:
    stage: str
    params: StudyParams
    root: Path
    summary: dict = field(default_factory=lambda: {"headline": {}, "tables": {}, "figures": []})

    @property
    def paths(self) -> StudyPaths:
        return StudyPaths(self.root, self.params.run)

    @property
    def run_dir(self) -> Path:
        return self.paths.run_dir

    @property
    def stage_dir(self) -> Path:
        return self.paths.stage_dir(self.stage)

    def dir_of(self, stage: str) -> Path:
        return self.paths.stage_dir(stage)

    @property
    def settings(self):
        """This stage's parameter section."""
        return getattr(self.params, self.stage)

    @cached_property
    def inference(self):
        """How every model pass of the study runs (``core.inference.Inference``): the study's
        ``device`` and its ``inference`` section, resolved once and passed down."""
        from mlc_utils.core.inference import Inference
        settings = self.params.inference
        return Inference(self.params.device, settings.batch_size, settings.num_workers, settings.precision, settings.runtime)

    @property
    def labels(self) -> LabelSpace:
        return LabelSpace(self.params.num_classes, tuple(self.params.class_names))

    @cached_property
    def data(self):
        from mlc_utils.data.folder import load_study_data
        return load_study_data(self.params.data_path(self.root), self.labels)

    @cached_property
    def split(self):
        from mlc_utils.data.split import load_split
        return load_split(self.dir_of("split") / "split.csv", self.data.train.ImageID)

    def folds(self):
        """(train_frame, val_frame) of the labelled rows under the saved split."""
        from mlc_utils.data.split import fold_indices
        train_idx, val_idx = fold_indices(self.split, self.data.train.ImageID)
        train = self.data.train
        return train.iloc[train_idx].reset_index(drop=True), train.iloc[val_idx].reset_index(drop=True)

    def labelled_folds(self):
        """(train_frame, val_frame, y_train, y_val): the folds and their multi-hot targets."""
        train_df, val_df = self.folds()
        return train_df, val_df, self.labels.encode(list(train_df.Labels)), self.labels.encode(list(val_df.Labels))

    # --- cross-validation (split.folds >= 2) ---------------------------------------------------
    @cached_property
    def cv_fold(self):
        """The cross-validation fold of each labelled row (data order); None when the split is a holdout only."""
        from mlc_utils.data.split import cv_fold_ids
        return cv_fold_ids(self.split, self.data.train.ImageID)

    @property
    def cross_validated(self) -> bool:
        return self.cv_fold is not None

    def cv_labelled_folds(self) -> list[tuple]:
        """Per cross-validation fold k: (train_frame, val_frame, y_train, y_val), val = the rows of fold k."""
        import numpy as np
        if self.cv_fold is None:
            raise ValueError("split.folds: the saved split has no cross-validation folds; set split.folds >= 2 "
                             "and re-run the split stage")
        train = self.data.train
        out = []
        for k in range(int(self.cv_fold.max()) + 1):
            train_df = train.iloc[np.flatnonzero(self.cv_fold != k)].reset_index(drop=True)
            val_df = train.iloc[np.flatnonzero(self.cv_fold == k)].reset_index(drop=True)
            out.append((train_df, val_df, self.labels.encode(list(train_df.Labels)),
                        self.labels.encode(list(val_df.Labels))))
        return out

    def scored_rows(self):
        """(frame, y) of the rows members are scored on: the holdout's validation rows, or, when the
        study cross-validates, every labelled row (each scored out-of-fold)."""
        if not self.cross_validated:
            _, val_df, _, y_val = self.labelled_folds()
            return val_df, y_val
        return self.data.train, self.labels.encode(list(self.data.train.Labels))

    @property
    def scored_folds(self):
        """The cross-validation fold of each of :meth:`scored_rows` (None for a holdout)."""
        return self.cv_fold

    # --- what the run's index page shows -------------------------------------------------------
    def headline(self, **values) -> None:
        self.summary["headline"].update(values)
        self._save()

    def _own(self, what: Table | Figure, kind: type, parameter: str) -> None:
        """Results are named by :mod:`mlc_utils.study.artifacts` (what the report reads), and by this stage's."""
        if not isinstance(what, kind):
            raise TypeError(f"{parameter}: a {kind.__name__} of mlc_utils.study.artifacts, not {what!r}")
        if what.stage != self.stage:
            raise ValueError(f"{parameter}: {what} belongs to stage {what.stage!r}, not {self.stage!r}")

    def table(self, table: Table, frame, index: bool = False) -> None:
        """Record a table; ``index=True`` also shows it on the run's index page (the study's tables)."""
        self._own(table, Table, "table")
        self.summary["tables"][table.name] = json.loads(frame.to_json(orient="split", index=False))
        self.summary["tables"][table.name]["in_index"] = bool(index)
        self._record_empty(table.name, not len(frame) or not len(frame.columns), "table", "no rows")
        self._save()

    def figure(self, fig, figure: Figure) -> Path:
        """Save a matplotlib figure as PNG in the stage folder (the index embeds it)."""
        from mlc_utils.core.io import atomic_save
        self._own(figure, Figure, "figure")
        path = self.stage_dir / figure.file_name
        atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
        if path.name not in self.summary["figures"]:
            self.summary["figures"].append(path.name)
        self._record_empty(path.name, bool(empty_axes(fig)), "figure", "axes with nothing drawn on them")
        self._save()
        return path

    def _record_empty(self, name: str, empty: bool, what: str, why: str) -> None:
        """``summary["empty"]`` lists the tables and figures recorded with nothing in them (a report
        section that reads as blank is a fault, so it is said, and tests/test_study.py checks it)."""
        empties = self.summary.setdefault("empty", [])
        if empty and name not in empties:
            empties.append(name)
            print(f"warning: {self.stage}: {what} {name!r} has {why}")
        elif not empty and name in empties:
            empties.remove(name)

    def _save(self) -> None:
        from mlc_utils.core.io import atomic_write_text
        atomic_write_text(self.stage_dir / "summary.json", json.dumps(self.summary, indent=1, default=float))


def empty_axes(fig) -> list:
    """The visible axes of ``fig`` with nothing drawn (no line, patch, collection or image); axes a
    grid hides (``axis("off")`` with nothing in them) do not count."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison and not ax.has_data()]


def open_stage(stage: str, params_file: str = "", overrides: dict | None = None,
               project_root: str | os.PathLike = "") -> StageContext:
    root = Path(project_root).resolve() if project_root else PROJECT_ROOT
    if params_file and not Path(params_file).is_absolute():
        params_file = str((Path.cwd() / params_file).resolve())
    params = load_params(params_file or None, overrides or {})
    from mlc_utils.core.device import (
        seed_everything,  # torch: imported when a notebook opens a stage
    )
    ctx = StageContext(stage, params, root)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    # From here on the stage's artifacts may change (a notebook run by hand, perhaps with other
    # parameters), so its manifest no longer vouches for them: the next `run` re-runs this stage,
    # and every stage downstream of it, since their keys hold the manifest's run id.
    ctx.paths.manifest_path(stage).unlink(missing_ok=True)
    (ctx.stage_dir / "summary.json").unlink(missing_ok=True)
    seed_everything(params.seed)
    return ctx


def load_summary(stage_dir: Path) -> dict:
    try:
        return json.loads((stage_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {"headline": {}, "tables": {}, "figures": []}
