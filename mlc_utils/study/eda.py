"""Exploratory figures and tables of the labelled data (the study's first notebook).

Each function takes the tables (and a LabelSpace) and returns a matplotlib Figure or a DataFrame,
so the notebook only arranges them and tests can check them without a kernel.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from mlc_utils.data.labels import LabelSpace


def label_frequency(y: np.ndarray, labels: LabelSpace) -> pd.DataFrame:
    """Images per class and share of images (the paper's Figure 6)."""
    counts = y.sum(axis=0).astype(int)
    return pd.DataFrame({"class": list(labels.names), "images": counts, "share": counts / max(len(y), 1)})


def plot_label_frequency(freq: pd.DataFrame, title: str = "Images per label"):
    fig, ax = plt.subplots(figsize=(9, 3.6))
    sns.barplot(data=freq, x="class", y="images", color="#4C72B0", ax=ax)
    for patch, share in zip(ax.patches, freq["share"]):
        ax.annotate(f"{share:.0%}" if share >= 0.01 else ("0" if share == 0 else "<1%"),
                    (patch.get_x() + patch.get_width() / 2, patch.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set(title=title, xlabel="label", ylabel="images")
    if max(len(str(c)) for c in freq["class"]) > 3:
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    return fig


def cooccurrence(y: np.ndarray) -> np.ndarray:
    """``C[i, j]`` = images holding both i and j (diagonal: images holding i)."""
    y = (np.asarray(y) > 0.5).astype(np.int64)
    return y.T @ y


def plot_cooccurrence(y: np.ndarray, labels: LabelSpace, normalise: bool = True):
    """Heatmap of P(column label | row label), which shows dependence better than raw counts."""
    counts = cooccurrence(y).astype(float)
    matrix = counts / np.maximum(np.diag(counts)[:, None], 1) if normalise else counts
    fig, ax = plt.subplots(figsize=(7.5, 6.2))
    sns.heatmap(matrix, ax=ax, cmap="viridis", xticklabels=labels.names, yticklabels=labels.names,
                vmin=0, vmax=1 if normalise else None, cbar_kws={"label": "P(col | row)" if normalise else "images"})
    ax.set(title="Label co-occurrence", xlabel="label", ylabel="given label")
    fig.tight_layout()
    return fig


def plot_labels_per_image(y: np.ndarray):
    per_image = (np.asarray(y) > 0.5).sum(axis=1)
    values, counts = np.unique(per_image, return_counts=True)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(values, counts, color="#55A868")
    ax.set(title="Labels per image", xlabel="labels", ylabel="images", xticks=values)
    fig.tight_layout()
    return fig


def caption_lengths(captions) -> pd.Series:
    return pd.Series([len(str(c).split()) for c in captions], name="words")


def plot_caption_lengths(train_captions, test_captions=None):
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.arange(0, max(caption_lengths(train_captions).max(), 1) + 2)
    ax.hist(caption_lengths(train_captions), bins=bins, alpha=0.7, label="train", density=True)
    if test_captions is not None and len(test_captions):
        ax.hist(caption_lengths(test_captions), bins=bins, alpha=0.5, label="test", density=True)
    ax.set(title="Caption length", xlabel="words", ylabel="share of captions")
    ax.legend()
    fig.tight_layout()
    return fig


def image_sizes(image_dir: Path, image_ids, limit: int = 500, seed: int = 0) -> pd.DataFrame:
    """Width and height of (a seeded sample of) the images; reads headers only, fast."""
    from PIL import Image
    ids = list(image_ids)
    if limit and len(ids) > limit:
        ids = list(np.random.default_rng(seed).choice(ids, size=limit, replace=False))
    rows = []
    for image_id in ids:
        with Image.open(Path(image_dir) / image_id) as image:
            rows.append((image_id, image.width, image.height))
    return pd.DataFrame(rows, columns=["ImageID", "width", "height"])


def plot_image_sizes(sizes: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(sizes.width, sizes.height, s=6, alpha=0.4)
    ax.set(title=f"Image sizes ({len(sizes)} images)", xlabel="width (px)", ylabel="height (px)")
    fig.tight_layout()
    return fig


def plot_examples(image_dir: Path, frame: pd.DataFrame, n: int = 8, seed: int = 0, cols: int = 4,
                  scores: np.ndarray | None = None, labels: LabelSpace | None = None):
    """Sample images with their captions and labels (and predicted labels when ``scores`` given)."""
    import textwrap

    from PIL import Image
    if n <= 0 or not len(frame):
        return None
    pick = np.random.default_rng(seed).choice(len(frame), size=min(n, len(frame)), replace=False)
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), pick):
        record = frame.iloc[int(i)]
        with Image.open(Path(image_dir) / record.ImageID) as image:
            ax.imshow(image.convert("RGB"))
        title = f"{record.ImageID}  labels: {LabelSpace.format(record.Labels)}" if "Labels" in frame else record.ImageID
        if scores is not None and labels is not None:
            title += f"\npred: {LabelSpace.format(labels.decode(scores[int(i):int(i) + 1], 0.5)[0])}"
        caption = textwrap.fill(" ".join(str(record.Caption).split()), 38)
        ax.set_title(f"{title}\n{caption}", fontsize=7)
    fig.tight_layout()
    return fig
