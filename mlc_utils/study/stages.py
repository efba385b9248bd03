"""The one registry of the study's stages: their order, notebooks and what each reads.

Everything that walks the stages (parameter validation, the pipeline, its keys and manifests,
the reports) reads this table, so adding a stage is one line here and one notebook.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str                 # in notebooks/, executed into runs/<run>/
    reads: tuple[str, ...] = ()   # stages whose artifacts it reads (they must have run first)
    title: str = ""
    optional: bool = False        # run only when a params file lists it in ``stages``


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("eda", "01_eda.ipynb", (), "Exploratory analysis"),
    Stage("split", "02_split.ipynb", (), "Train/validation split"),
    Stage("image", "03_image.ipynb", ("split",), "Image models"),
    Stage("caption", "04_caption.ipynb", ("split",), "Caption model"),
    Stage("fusion", "05_fusion.ipynb", ("split", "image", "caption"), "Image and caption fusion"),
    Stage("ablation", "06_ablation.ipynb", ("split", "image"), "Ablation"),
    Stage("ensemble", "07_ensemble.ipynb", ("split", "image", "caption", "fusion"), "Ensemble and submission"),
    # browsing the mistakes adds nothing to the results: opt-in (``stages: [..., explore]``)
    Stage("explore", "08_explore.ipynb", ("split", "image", "caption", "fusion", "ensemble"), "Explore the mistakes",
          optional=True),
)}
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)
DEFAULT_STAGES: tuple[str, ...] = tuple(name for name, stage in STAGES.items() if not stage.optional)
RENAMED_STAGES = {"text": "caption"}   # old stage name -> name now (params' ``stages``, ``run --only``)
