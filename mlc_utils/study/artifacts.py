"""The study's named results: every table and figure a stage records, and the score columns the
report reads, named once here.

A notebook records them with these objects (``ctx.table(TABLES.table3, frame)``,
``ctx.figure(fig, FIGURES.image_curves)``) and the findings and the report read them with the same
objects, so nothing is tied together by retyping a string: a renamed table cannot leave the report
looking for a name nothing writes (tests/test_architecture.py checks that every one has its producer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlc_utils.evaluation import metrics

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Table:
    """A table stage ``stage`` records in its ``summary.json`` under ``name``."""
    stage: str
    name: str


@dataclass(frozen=True)
class Figure:
    """A figure stage ``stage`` saves as ``<stage dir>/<stem>.png``."""
    stage: str
    stem: str

    @property
    def file_name(self) -> str:
        return f"{self.stem}.png"


class TABLES:
    label_frequency = Table("eda", "label_frequency")
    split_frequencies = Table("split", "split_frequencies")
    image_thresholds = Table("image", "image models by threshold")
    image_per_class = Table("image", "per-class F1 (image)")
    caption_thresholds = Table("caption", "caption model by threshold")
    fusion_thresholds = Table("fusion", "fusion against single models")
    table3 = Table("ablation", "Table 3 (ablation)")
    ensemble_members = Table("ensemble", "ensemble members")
    table1 = Table("ensemble", "Table 1 (sample-F1 by model and threshold)")
    table2 = Table("ensemble", "Table 2 (best per input)")
    best_per_class = Table("ensemble", "per-class F1 (best model)")
    missed_labels = Table("ensemble", "missed labels")
    error_examples = Table("ensemble", "error examples")


class FIGURES:
    label_frequency = Figure("eda", "label_frequency")
    cooccurrence = Figure("eda", "cooccurrence")
    labels_per_image = Figure("eda", "labels_per_image")
    caption_lengths = Figure("eda", "caption_lengths")
    image_sizes = Figure("eda", "image_sizes")
    eda_examples = Figure("eda", "examples")
    split_frequencies = Figure("split", "split_frequencies")
    image_curves = Figure("image", "epoch_curves")
    image_per_class = Figure("image", "per_class_f1")
    image_examples = Figure("image", "examples")
    caption_curves = Figure("caption", "epoch_curves")
    caption_per_class = Figure("caption", "per_class_f1")
    late_fusion_weight = Figure("fusion", "late_fusion_weight")
    fusion_curves = Figure("fusion", "epoch_curves")
    fusion_per_class = Figure("fusion", "per_class_f1")
    ablation = Figure("ablation", "ablation")
    error_examples = Figure("ensemble", "error_examples")


def registered(namespace) -> dict[str, Table | Figure]:
    """``{attribute: object}`` of :class:`TABLES` or :class:`FIGURES`."""
    return {k: v for k, v in vars(namespace).items() if isinstance(v, (Table, Figure))}


#: each stage's table of its models by threshold (the paper's Table 1 shape), which its closing paragraph reads
THRESHOLD_TABLES = {"image": TABLES.image_thresholds, "caption": TABLES.caption_thresholds,
                    "fusion": TABLES.fusion_thresholds}


# the score columns: spelled once, in evaluation.metrics (where the ensemble's tables are built too)
F1_AT_05, F1_TUNED, TUNED_THRESHOLD, f1_at = metrics.F1_AT_05, metrics.F1_TUNED, metrics.TUNED_THRESHOLD, metrics.f1_at


def recorded_table(summaries: dict, table: Table) -> pd.DataFrame | None:
    """A table a stage recorded (``StageContext.table``), or None; ``summaries``: stage -> its summary."""
    import pandas as pd
    table = summaries.get(table.stage, {}).get("tables", {}).get(table.name)
    if not table:
        return None
    return pd.DataFrame(table.get("data", []), columns=table.get("columns", []))
