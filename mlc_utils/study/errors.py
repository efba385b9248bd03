"""Error analysis: which labels the submitted model misses or adds, a few of those images, and a figure.

Predictions go by the submission's rule (:func:`mlc_utils.data.labels.decide`), so the counts here
are the submitted labels' errors.
"""
from __future__ import annotations

import math

import pandas as pd


def missed_labels(y_val, probs, threshold: float = 0.5, names=None) -> pd.DataFrame:
    """Per label: validation images carrying it, how many the model missed (false negatives) and
    how many it added wrongly (false positives), most missed first; predictions by the submission's
    rule (:func:`~mlc_utils.data.labels.decide`), so these counts are the submitted labels' errors."""
    import numpy as np

    from mlc_utils.data.labels import decide
    y = np.asarray(y_val) > 0.5
    pred = decide(probs, threshold)
    frame = pd.DataFrame({"class": np.arange(y.shape[1]), "support": y.sum(0),
                          "missed": (y & ~pred).sum(0), "false positives": (~y & pred).sum(0)})
    if names:
        frame.insert(1, "name", list(names))
    frame["miss rate"] = np.where(frame["support"] > 0, frame["missed"] / frame["support"].clip(lower=1), 0.0)
    frame = frame[(frame["support"] > 0) | (frame["false positives"] > 0)]
    return frame.sort_values(["missed", "false positives"], ascending=False, kind="stable").reset_index(drop=True)


def error_examples(val_df: pd.DataFrame, y_val, probs, labels=None, threshold: float = 0.5,
                   classes=(), per_class: int = 2, kind: str = "missed") -> pd.DataFrame:
    """A few validation rows where each of ``classes`` was missed (``kind="missed"``: a false
    negative) or added wrongly (``kind="added"``: a false positive): id, caption, truth, prediction;
    labels by the names of ``labels`` (a LabelSpace; numbers without one), as the tables beside them."""
    import numpy as np
    if kind not in ("missed", "added"):
        raise ValueError(f"kind: 'missed' or 'added' (got {kind!r})")
    from mlc_utils.data.labels import LabelSpace, decide
    y = np.asarray(y_val) > 0.5
    pred = decide(probs, threshold)
    labels = labels or LabelSpace(y.shape[1])
    rows = []
    for c in classes:
        wrong = y[:, c] & ~pred[:, c] if kind == "missed" else ~y[:, c] & pred[:, c]
        for i in np.flatnonzero(wrong)[:per_class]:
            rows.append({"label": labels.names[int(c)], "error": kind, "ImageID": val_df.ImageID.iloc[i],
                         "caption": " ".join(str(val_df.Caption.iloc[i]).split()),
                         "truth": labels.describe(np.flatnonzero(y[i])),
                         "predicted": labels.describe(np.flatnonzero(pred[i])) or "(none)",
                         "score of the label": float(np.asarray(probs)[i, c])})
    return pd.DataFrame(rows)


def error_summary(missed: pd.DataFrame) -> str:
    """One or two sentences from :func:`missed_labels`: how many labels are missed and added, and which."""
    if missed is None or missed.empty:
        return "No validation image carries a label, so there are no errors to count."
    total, fn, fp = int(missed["support"].sum()), int(missed["missed"].sum()), int(missed["false positives"].sum())

    def name(row) -> str:
        return f"{row['class']} ({row['name']})" if "name" in row and row.get("name") else str(row["class"])
    text = f"The submitted model misses {fn} of the {total} true labels of the validation images"
    worst = missed[missed["missed"] > 0].head(3)
    text += (": most often " + ", ".join(f"label {name(r)} ({r['missed']} of {r['support']})"
                                         for r in worst.to_dict("records")) + ".") if len(worst) else "."
    added = missed[missed["false positives"] > 0].sort_values("false positives", ascending=False, kind="stable")
    text += f" It adds {fp} labels that are not there" + (
        ", most often " + ", ".join(f"label {name(r)} ({r['false positives']}x)" for r in added.head(3).to_dict("records"))
        + "." if len(added) else ".")
    return text


def plot_error_examples(image_dir, examples: pd.DataFrame, cols: int = 4):
    """The rows of :func:`error_examples` as images titled with truth, prediction and caption."""
    import textwrap

    import matplotlib.pyplot as plt
    from PIL import Image
    if examples.empty:
        return None
    rows = int(math.ceil(len(examples) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, record in zip(axes.ravel(), examples.to_dict("records")):
        with Image.open(f"{image_dir}/{record['ImageID']}") as image:
            ax.imshow(image.convert("RGB"))
        ax.set_title(f"{record['ImageID']}: {record['error']} {record['label']}\ntruth: {record['truth']}  "
                     f"pred: {record['predicted']}\n{textwrap.fill(record['caption'], 38)}", fontsize=7)
    fig.tight_layout()
    return fig
