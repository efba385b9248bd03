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

from .labels import LabelSpace
from .params import StudyParams, load_params

MANIFEST = "stage.json"  # written by the pipeline when a stage's notebook has run to the end


@dataclass
class StageContext:
    stage: str
    params: StudyParams
    root: Path
    summary: dict = field(default_factory=lambda: {"headline": {}, "tables": {}, "figures": []})

    @property
    def run_dir(self) -> Path:
        return self.root / "runs" / self.params.run

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.stage

    def dir_of(self, stage: str) -> Path:
        return self.run_dir / stage

    @property
    def cfg(self):
        """This stage's parameter section."""
        return getattr(self.params, self.stage)

    def describe(self) -> str:
        """The run, its data and this stage's parameters as YAML (the notebook prints it first)."""
        import yaml

        from .config import to_dict
        section = yaml.safe_dump({self.stage: to_dict(self.cfg)}, sort_keys=False, width=100)
        return f"run '{self.params.run}' on {self.params.data_path(self.root).resolve()} " \
               f"(params: {self.params.source or 'defaults'})\n{section}"

    @property
    def labels(self) -> LabelSpace:
        return LabelSpace(self.params.num_classes, tuple(self.params.class_names))

    @cached_property
    def data(self):
        from .dataset import load_study_data
        return load_study_data(self.params.data_path(self.root), self.labels)

    @cached_property
    def split(self):
        from .split import load_split
        return load_split(self.dir_of("split") / "split.csv", self.data.train.ImageID)

    def folds(self):
        """(train_frame, val_frame) of the labelled rows under the saved split."""
        from .split import fold_indices
        train_idx, val_idx = fold_indices(self.split, self.data.train.ImageID)
        train = self.data.train
        return train.iloc[train_idx].reset_index(drop=True), train.iloc[val_idx].reset_index(drop=True)

    # --- what the run's index page shows -------------------------------------------------------
    def headline(self, **values) -> None:
        self.summary["headline"].update(values)
        self._save()

    def table(self, name: str, frame, index: bool = False) -> None:
        """Record a table; ``index=True`` also shows it on the run's index page (the study's tables)."""
        self.summary["tables"][name] = json.loads(frame.to_json(orient="split", index=False))
        self.summary["tables"][name]["in_index"] = bool(index)
        self._save()

    def figure(self, fig, name: str) -> Path:
        """Save a matplotlib figure as PNG in the stage folder (the index embeds it)."""
        from .io import atomic_save
        path = self.stage_dir / f"{name}.png"
        atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
        if path.name not in self.summary["figures"]:
            self.summary["figures"].append(path.name)
        self._save()
        return path

    def _save(self) -> None:
        from .io import atomic_write_text
        atomic_write_text(self.stage_dir / "summary.json", json.dumps(self.summary, indent=1, default=float))


def open_stage(stage: str, params_file: str = "", overrides: dict | None = None,
               project_root: str | os.PathLike = "") -> StageContext:
    root = Path(project_root).resolve() if project_root else Path(__file__).resolve().parent.parent
    if params_file and not Path(params_file).is_absolute():
        params_file = str((Path.cwd() / params_file).resolve())
    params = load_params(params_file or None, overrides or {})
    from .engine import seed_everything
    ctx = StageContext(stage, params, root)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    # From here on the stage's artifacts may change (a notebook run by hand, perhaps with other
    # parameters), so its manifest no longer vouches for them: the next `run` re-runs this stage,
    # and every stage downstream of it, since their keys hold the manifest's run id.
    (ctx.stage_dir / MANIFEST).unlink(missing_ok=True)
    (ctx.stage_dir / "summary.json").unlink(missing_ok=True)
    seed_everything(params.seed)
    return ctx


def load_summary(stage_dir: Path) -> dict:
    try:
        return json.loads((stage_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {"headline": {}, "tables": {}, "figures": []}
