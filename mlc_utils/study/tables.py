"""Tables and figures the stages share: the paper's Table 1 shape, training curves, per-class F1."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mlc_utils.evaluation import metrics
from mlc_utils.evaluation.ensemble import Member


def threshold_rows(members: list[Member], y_val: np.ndarray) -> pd.DataFrame:
    """The paper's Table 1: sample-F1 per model at 0.4 / 0.5 / 0.6 and at thresholds tuned on validation."""
    rows = []
    for member in members:
        table = metrics.threshold_table(y_val, member.val_probs).set_index("threshold")["sample_f1"]
        t_global, _ = metrics.tune_global_threshold(y_val, member.val_probs)
        rows.append({"model": member.name, "input": member.kind, **{f"F1@{t}": table[t] for t in ("0.40", "0.50", "0.60")},
                     "F1 tuned global": table[f"tuned global ({t_global:.2f})"], "tuned threshold": t_global,
                     "F1 tuned per class": table["tuned per class"]})
    return pd.DataFrame(rows)



def epoch_curves(members: list[Member]):
    """Per-epoch training loss and validation sample-F1 of every member with a log."""
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(11, 3.6))
    for member in members:
        log = member.history()
        if log.empty:
            continue
        x = log["epoch"] + 1 if "epoch" in log else np.arange(1, len(log) + 1)
        if "train_loss" in log:
            ax_loss.plot(x, log["train_loss"], marker="o", label=member.name)
        if "sample_f1" in log:
            ax_f1.plot(x, log["sample_f1"], marker="o", label=member.name)
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
