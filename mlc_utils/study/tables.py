"""Tables and figures the stages share: the paper's Table 1 shape, training curves, per-class F1."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mlc_utils.evaluation import metrics
from mlc_utils.evaluation.ensemble import Member
from mlc_utils.study.artifacts import F1_TUNED, TUNED_THRESHOLD, f1_at


def threshold_rows(members: list[Member], y_val: np.ndarray, folds: np.ndarray | None = None) -> pd.DataFrame:
    """The paper's Table 1: sample-F1 per model at 0.4 / 0.5 / 0.6 and at thresholds tuned on validation.

    With cross-validation ``folds`` (one per row) two columns say how far each score can be trusted:
    ``scores`` (out-of-fold rows; weights tuned on them or not) and ``F1 cross-fitted``, whose
    threshold (and, for late fusion and the ensemble, weights) were fitted on the other folds only.
    The ``tuned`` columns choose their thresholds on the rows they score, in-sample.
    """
    rows = []
    for member in members:
        table = metrics.threshold_table(y_val, member.val_probs).set_index("threshold")["sample_f1"]
        t_global, _ = metrics.tune_global_threshold(y_val, member.val_probs)
        row = {"model": member.name, "input": member.kind,
               **{f1_at(t): table[f"{t:.2f}"] for t in metrics.PAPER_THRESHOLDS},
               F1_TUNED: table[f"tuned global ({t_global:.2f})"], TUNED_THRESHOLD: t_global,
               "F1 tuned per class": table["tuned per class"]}
        if folds is not None:
            row.update(_fold_scores(member, y_val, folds))
        rows.append(row)
    return pd.DataFrame(rows)


def _fold_scores(member: Member, y_val: np.ndarray, folds: np.ndarray) -> dict:
    from mlc_utils.evaluation.ensemble import cross_fitted_threshold_f1
    if not member.info.get("oof"):
        return {"scores": "in-sample (not cross-validated)", "F1 cross-fitted": float("nan")}
    if member.info.get("tuned_in_sample"):
        return {"scores": "out-of-fold, weights tuned on them", "F1 cross-fitted": member.info["cross_fitted_f1"]}
    return {"scores": "out-of-fold", "F1 cross-fitted": cross_fitted_threshold_f1(y_val, member.val_probs, folds)}



def epoch_curves(members: list[Member]):
    """Per-epoch training loss and validation sample-F1 of every member with a log; a cross-validated
    member's curve is the mean of its folds' (each fold validates on its own out-of-fold rows)."""
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(11, 3.6))
    for member in members:
        log, name = member.history(), member.name
        if log.empty:
            continue
        if "fold" in log and "epoch" in log:
            name = f"{name} (mean of {log['fold'].nunique()} folds)"
            log = log.drop(columns="fold").groupby("epoch", as_index=False).mean(numeric_only=True)
        x = log["epoch"] + 1 if "epoch" in log else np.arange(1, len(log) + 1)
        if "train_loss" in log:
            ax_loss.plot(x, log["train_loss"], marker="o", label=name)
        if "sample_f1" in log:
            ax_f1.plot(x, log["sample_f1"], marker="o", label=name)
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_f1.set(title="validation sample-F1 (threshold 0.5)", xlabel="epoch")
    for ax in (ax_loss, ax_f1):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig



def per_class_table(members: list[Member], y_val: np.ndarray, names=None) -> pd.DataFrame:
    table = None
    for member in members:
        scores = metrics.per_class_f1(y_val, member.val_probs)
        if table is None:
            table = scores[["class", "support"]].copy()
            if names:
                table.insert(1, "name", list(names))
        table[member.name] = scores["f1"].to_numpy()
    return table



def plot_per_class(table: pd.DataFrame, members: list[str]):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 3.6))
    present = table[table.support > 0]
    width = 0.8 / max(len(members), 1)
    for i, name in enumerate(members):
        ax.bar(np.arange(len(present)) + i * width, present[name], width=width, label=name)
    labels = present["name"] if "name" in present else present["class"]
    ax.set_xticks(np.arange(len(present)) + 0.4 - width / 2, [str(v) for v in labels], rotation=45, ha="right")
    ax.set(title="validation F1 per class (threshold 0.5)", ylabel="F1", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
