"""The study's text, written from its numbers: the paper's tables beside this run's, the findings,
the conclusion and a short account of the settings a stage ran with.

Everything here reads what the stages recorded (``summary.json``: headlines and tables, as
:func:`mlc_utils.study.context.load_summary` returns them) or the parameters, never a notebook, so
the index page, the PDF and the notebooks' closing paragraphs say the same thing, and a changed
number changes the sentence. The paper: Lin, Huang and Yang, *Multi-Label Classification*
(COMP5329, University of Sydney), its Tables 1-3.
"""
from __future__ import annotations

import math

import pandas as pd

from mlc_utils.study.artifacts import F1_AT_05, F1_TUNED, TABLES, THRESHOLD_TABLES, Table, f1_at

CITATION = ("J. Lin, Z. Huang and L. Yang. Multi-Label Classification. Course report, COMP5329 Deep Learning, "
            "The University of Sydney.")
PAPER = "paper (Lin et al.)"
THIS_RUN = "this run"

# --- the paper's numbers (validation sample-F1), as its Tables 1-3 print them ---------------------
#: Table 1: input, model, F1 at thresholds 0.4 / 0.5 / 0.6 (None: the paper did not evaluate it)
PAPER_TABLE1: list[tuple[str, str, float | None, float | None, float | None]] = [
    ("image", "CNN-EfficientNet", None, 0.8362, None),
    ("image", "DeiT-S", 0.8602, 0.8606, 0.8453),
    ("image", "Swin-L", 0.8973, 0.9007, 0.8960),
    ("image", "Swin-V2-L", 0.9071, 0.9079, 0.9058),
    ("caption", "BERT", 0.8708, 0.8679, 0.8637),
    ("image+caption", "Swin-L + BERT (Bilinear)", 0.9003, 0.8997, 0.8975),
    ("image+caption", "Swin-L + BERT (Concatenate)", 0.8991, 0.8999, 0.8965),
    ("image+caption", "Swin-V2-L + BERT (Bilinear)", 0.9017, 0.9017, 0.8994),
    ("image+caption", "Swin-V2-L + BERT (Concatenate)", 0.9006, 0.9027, 0.9009),
]
#: Table 2: the best model per input, at the best of the three thresholds (chosen on validation)
PAPER_TABLE2: dict[str, tuple[str, float]] = {
    "image": ("Swin-V2-L", 0.9079),
    "caption": ("BERT", 0.8708),
    "image+caption": ("Swin-V2-L + BERT (Concatenate)", 0.9027),
}
#: Table 3: the ablation of the best model
PAPER_TABLE3: list[tuple[str, str, float]] = [
    ("Swin-V2-L", "baseline (mixup on)", 0.9079),
    ("Swin-V2-L without Mixup", "mixup off", 0.8856),
]

INPUT_OF_KIND = {"image": "image", "text": "caption", "fusion": "image+caption",
                 "late_fusion": "image+caption", "ensemble": "image+caption"}



# --- formatting ----------------------------------------------------------------------------------
def fmt_score(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.4f}"


def fmt_seconds(seconds) -> str:
    """Times for reading: seconds under two minutes, else minutes (and hours)."""
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {minutes % 60:.0f} min"


def fmt_value(key: str, value) -> str:
    """One headline value for reading: times as times, scores to 4 places, the rest as is."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)) and ("seconds" in key or key.endswith("_s")):
        return fmt_seconds(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_headline(headline: dict) -> str:
    return "; ".join(f"{key.replace('_', ' ')}: {fmt_value(key, value)}" for key, value in headline.items())


def _signed(delta: float) -> str:
    return f"{delta:+.4f}"


# --- the recorded tables -------------------------------------------------------------------------
def recorded_table(summaries: dict, table: Table) -> pd.DataFrame | None:
    """A table a stage recorded (``StageContext.table``), or None."""
    table = summaries.get(table.stage, {}).get("tables", {}).get(table.name)
    if not table:
        return None
    return pd.DataFrame(table.get("data", []), columns=table.get("columns", []))


def _numeric(frame: pd.DataFrame, start: int) -> pd.DataFrame:
    """Score columns (from ``start`` on) as floats: a number the paper does not give is NaN (a blank cell)."""
    for column in frame.columns[start:]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def table1_with_paper(ours: pd.DataFrame | None) -> pd.DataFrame:
    """Table 1 in the paper's shape: per input, this run's models and the paper's, by threshold."""
    rows = []
    for row in ([] if ours is None else ours.to_dict("records")):
        rows.append({"input": INPUT_OF_KIND.get(row.get("input"), row.get("input")), "source": THIS_RUN,
                     "model": row["model"], "F1@0.4": row.get(f1_at(0.4)), "F1@0.5": row.get(F1_AT_05),
                     "F1@0.6": row.get(f1_at(0.6)), "F1 at tuned threshold (in-sample)": row.get(F1_TUNED),
                     "tuned threshold": row.get("tuned threshold"),
                     **({"F1 cross-fitted (out-of-sample)": row["F1 cross-fitted"]} if "F1 cross-fitted" in row else {})})
    rows += [{"input": inp, "source": PAPER, "model": model, "F1@0.4": a, "F1@0.5": b, "F1@0.6": c,
              "F1 at tuned threshold (in-sample)": None, "tuned threshold": None}
             for inp, model, a, b, c in PAPER_TABLE1]
    order = {"image": 0, "caption": 1, "image+caption": 2}
    frame = pd.DataFrame(rows)
    frame["_order"] = frame["input"].map(order).fillna(3)
    frame["_source"] = (frame["source"] == PAPER).astype(int)
    frame = frame.sort_values(["_order", "_source"], kind="stable").drop(columns=["_order", "_source"])
    return _numeric(frame.reset_index(drop=True), 3)


def table2_with_paper(ours: pd.DataFrame | None) -> pd.DataFrame:
    """Table 2: the best model per input, this run's (at 0.5: out-of-sample; tuned: in-sample) and the paper's."""
    rows = []
    ours_by_input = {} if ours is None else {r["input"]: r for r in ours.to_dict("records")}
    for inp in ("image", "caption", "image+caption"):
        row = ours_by_input.get(inp)
        if row is not None:
            rows.append({"input": inp, "source": THIS_RUN, "best model": row["best model"],
                         "F1@0.5 (out-of-sample)": row.get(F1_AT_05),
                         "F1 at tuned threshold (in-sample)": row.get(F1_TUNED)})
        model, score = PAPER_TABLE2[inp]
        rows.append({"input": inp, "source": PAPER, "best model": model, "F1@0.5 (out-of-sample)": None,
                     "F1 at tuned threshold (in-sample)": score})
    return _numeric(pd.DataFrame(rows), 3)


def table3_with_paper(ours: pd.DataFrame | None) -> pd.DataFrame:
    """Table 3: each ablation switch against the baseline, this run's and the paper's (mixup)."""
    rows = []
    for row in ([] if ours is None else ours.to_dict("records")):
        rows.append({"source": THIS_RUN, "variant": row["variant"], "switch": row["switch"],
                     "setting": row.get("setting", ""), "F1@0.5 (out-of-sample)": row.get(F1_AT_05),
                     "F1 at tuned threshold (in-sample)": row.get(F1_TUNED),
                     "change vs baseline": row.get("delta vs baseline")})
    base = PAPER_TABLE3[0][2]
    rows += [{"source": PAPER, "variant": variant, "switch": "baseline" if i == 0 else "mixup",
              "setting": setting, "F1@0.5 (out-of-sample)": None, "F1 at tuned threshold (in-sample)": score,
              "change vs baseline": score - base} for i, (variant, setting, score) in enumerate(PAPER_TABLE3)]
    return _numeric(pd.DataFrame(rows), 4)


# --- findings ------------------------------------------------------------------------------------
def _best_single(table2: pd.DataFrame) -> tuple[str, float] | None:
    singles = table2[table2["input"].isin(["image", "caption"])]
    if singles.empty:
        return None
    row = singles.loc[singles[F1_AT_05].idxmax()]
    return str(row["best model"]), float(row[F1_AT_05])


def findings(summaries: dict) -> list[str]:
    """The summary of findings, one sentence each, from what the stages recorded."""
    out = []
    eda, split = summaries.get("eda", {}).get("headline", {}), summaries.get("split", {}).get("headline", {})
    if eda:
        out.append(f"The data holds {eda.get('train_rows', '?')} labelled and {eda.get('test_rows', '?')} test "
                   f"images; the most common label is {eda.get('most_common', '?')} (labels absent: "
                   f"{eda.get('absent_labels', 'none')}).")
    if split.get("folds"):
        labelled = int(split.get("train", 0)) + int(split.get("val", 0))
        out.append(f"The labelled images are cut into {split['folds']} {split.get('method', '?')}-stratified folds; "
                   f"every model is trained once per fold and scored on the fold it did not see, so every score "
                   f"below covers all {labelled or '?'} labelled images, out-of-fold.")
    elif split:
        out.append(f"The {split.get('method', '?')} split keeps {split.get('val', '?')} images for validation "
                   f"and trains on {split.get('train', '?')}.")
    table2 = recorded_table(summaries, TABLES.table2)
    if table2 is not None and not table2.empty:
        parts = [f"{row['input']}: {row['best model']} ({fmt_score(row[F1_AT_05])} at 0.5, "
                 f"{fmt_score(row[F1_TUNED])} at its tuned threshold)" for row in table2.to_dict("records")]
        out.append("Best model per input, by validation sample-F1 \u2014 " + "; ".join(parts) + ".")
        fused = table2[table2["input"] == "image+caption"]
        single = _best_single(table2)
        if not fused.empty and single is not None:
            score = float(fused[F1_AT_05].iloc[0])
            delta = score - single[1]
            verb = "gained" if delta > 0 else ("lost" if delta < 0 else "neither gained nor lost")
            amount = f" {abs(delta):.4f}" if delta else ""
            out.append(f"Combining image and caption ({fused['best model'].iloc[0]}, {fmt_score(score)}) {verb}"
                       f"{amount} against the best single-input model ({single[0]}, {fmt_score(single[1])}); "
                       f"the paper's best fusion lost {PAPER_TABLE2['image'][1] - PAPER_TABLE2['image+caption'][1]:.4f}"
                       f" against Swin-V2-L alone.")
    table3 = recorded_table(summaries, TABLES.table3)
    if table3 is not None and len(table3) > 1:
        base = table3.iloc[0]
        parts = []
        for row in table3.iloc[1:].to_dict("records"):
            delta = float(row["delta vs baseline"])
            effect = "no change" if abs(delta) < 5e-5 else f"{_signed(delta)}"
            parts.append(f"{row['switch']} set to {row['setting']}: {fmt_score(row[F1_AT_05])} ({effect})")
        out.append(f"Ablation of {base['variant']} (baseline {fmt_score(base[F1_AT_05])} at 0.5): "
                   + "; ".join(parts) + f". The paper lost {PAPER_TABLE3[0][2] - PAPER_TABLE3[1][2]:.4f} "
                   "without mixup.")
    ens = summaries.get("ensemble", {}).get("headline", {})
    if ens:
        threshold = ens.get("threshold")
        rule = f"a threshold of {float(threshold):.2f}" if isinstance(threshold, (int, float)) \
            else "per-class thresholds"
        text = (f"The submission ({ens.get('test_rows', '?')} test rows) uses the ensemble with {rule}, "
                f"chosen on the validation rows, where it scores {fmt_score(ens.get('ensemble_val_f1'))} (in-sample)")
        if ens.get("ensemble_cross_fitted_f1") is not None:
            text += (f"; with its weights and threshold fitted on the other folds only it scores "
                     f"{fmt_score(ens['ensemble_cross_fitted_f1'])} (out-of-sample), the number to quote")
        out.append(text + ".")
    return out


def conclusion(summaries: dict) -> list[str]:
    """The closing paragraph: where this run stands against the paper and what its numbers support."""
    out = []
    table2 = recorded_table(summaries, TABLES.table2)
    if table2 is None or table2.empty:
        return ["The run did not reach the ensemble stage, so there is no Table 2 to conclude from."]
    best = table2.loc[table2[F1_AT_05].idxmax()]
    paper_best = max(PAPER_TABLE2.values(), key=lambda item: item[1])
    out.append(f"This run's best validation score at the fixed threshold 0.5 is {fmt_score(best[F1_AT_05])} "
               f"({best['best model']}, {best['input']} input); the paper's best is {paper_best[1]:.4f} "
               f"({paper_best[0]}), a gap of {paper_best[1] - float(best[F1_AT_05]):+.4f}.")
    fused = table2[table2["input"] == "image+caption"]
    single = _best_single(table2)
    if not fused.empty and single is not None:
        delta = float(fused[F1_AT_05].iloc[0]) - single[1]
        agrees = delta <= 0
        out.append(f"Fusion {'does not beat' if agrees else 'beats'} the best single-input model here "
                   f"({_signed(delta)}), which {'agrees' if agrees else 'disagrees'} with the paper, "
                   "where captions added nothing to Swin-V2-L.")
    table3 = recorded_table(summaries, TABLES.table3)
    if table3 is not None and len(table3) > 1:
        mix = table3[table3["switch"].astype(str).str.contains("mixup")]
        if not mix.empty:
            delta = float(mix["delta vs baseline"].iloc[0])
            out.append(f"Switching mixup changes the score by {_signed(delta)} "
                       f"({'the same direction as' if delta < 0 else 'unlike'} the paper's "
                       f"{PAPER_TABLE3[1][2] - PAPER_TABLE3[0][2]:+.4f}).")
    out.append("Scores at tuned thresholds, the ensemble weights and late fusion's weight are chosen on the same "
               "validation rows they are measured on, so they flatter; compare the 0.5 columns across models"
               + (", or the cross-fitted column, which fits those choices on the other folds only."
                  if summaries.get("split", {}).get("headline", {}).get("folds") else "."))
    return out


# --- the settings a stage ran with, for a notebook's opening --------------------------------------
def settings_markdown(ctx) -> str:
    """A few lines of Markdown: the run, its data, the params file and this stage's settings."""
    from mlc_utils.core.config import to_dict
    section = to_dict(ctx.settings) if hasattr(ctx.params, ctx.stage) else {}
    lines = [f"**Run** `{ctx.params.run}` on `{ctx.params.data_path(ctx.root).resolve()}`, "
             f"params `{ctx.params.source or 'defaults'}`, seed {ctx.params.seed}."]
    for key, value in section.items():
        if key == "models" and isinstance(value, list):
            for model in value:
                lines.append(f"- model **{model.get('label') or model.get('name')}**: `{model.get('name')}`, "
                             f"{model.get('mode', '')}, {model.get('img_size', '')} px, pretrained "
                             f"{model.get('pretrained')}" + (f", own training {_given(model.get('train'))}"
                                                              if _given(model.get('train')) else ""))
        elif key == "train" and isinstance(value, dict):
            if _given(value):
                lines.append(f"- training: {_given(value)}")
        elif value not in (None, "", [], {}):
            lines.append(f"- {key.replace('_', ' ')}: {value if not isinstance(value, list) else ', '.join(map(str, value))}")
    return "\n".join(lines)


def _given(train) -> str:
    if not isinstance(train, dict):
        return ""
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in train.items() if v is not None)


IMAGE_HEADS = {"extra_linear": "Linear on the ImageNet logits", "replace": "Linear on {pool} pooling",
               "class_attention": "class attention over regions"}


def _image_head(spec) -> str:
    """The head in words, as the method table names it."""
    return IMAGE_HEADS[spec.head].format(pool=spec.global_pool or "the model's own")


def method_frame(params) -> pd.DataFrame:
    """The models the run trained: kind, architecture, weights, resolution and training settings."""
    from mlc_utils.core.config import to_dict
    image_train = _given(to_dict(params.image.train)) if hasattr(params, "image") else ""
    rows = []
    for spec in getattr(params.image, "models", []):
        rows.append({"input": "image", "model": spec.label, "architecture": f"{spec.name}, {_image_head(spec)}",
                     "mode": spec.mode,
                     "weights": "ImageNet (pretrained)" if spec.pretrained is True else
                     ("random init" if spec.pretrained is False else str(spec.pretrained)),
                     "resolution": f"{spec.img_size} px", "training": "; ".join(
                         s for s in (image_train, _given(to_dict(spec.train))) if s)})
    text = params.text
    for kind in getattr(text, "members", ["finetune"]):
        tfidf = kind == "tfidf"
        training = {"finetune": _given(to_dict(text.train)), "frozen": _given(to_dict(text.head_train)),
                    "tfidf": f"logistic regression per label, C {text.tfidf_c}"}[kind]
        rows.append({"input": "caption", "model": f"caption ({kind})",
                     "architecture": "TF-IDF word 1-2 + character 2-5 grams" if tfidf else text.model_name,
                     "mode": kind, "weights": "" if tfidf else ("pretrained" if text.pretrained else "random init"),
                     "resolution": "" if tfidf else f"{getattr(text, 'max_length', '')} tokens", "training": training})
    fusion = params.fusion
    rows.append({"input": "image+caption", "model": ", ".join(fusion.heads) + ", late fusion",
                 "architecture": f"heads on {fusion.fusion_input}", "mode": fusion.mode, "weights": "",
                 "resolution": "", "training": _given(to_dict(fusion.train))})
    return pd.DataFrame(rows)


# --- error analysis --------------------------------------------------------------------------------
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


# --- a stage's closing paragraph (its notebook's last cell) --------------------------------------
def stage_findings(stage: str, summary: dict) -> str:
    """What one stage found, in Markdown, from what it recorded (``ctx.summary``)."""
    head = summary.get("headline", {})
    tables = {stage: summary}
    lines: list[str] = []
    if stage == "eda" and head:
        lines.append(f"{head.get('train_rows')} labelled and {head.get('test_rows')} test images; the most common "
                     f"label is {head.get('most_common')}; labels never seen: {head.get('absent_labels')}.")
    elif stage == "split" and head:
        lines.append(f"The {head.get('method')} split trains on {head.get('train')} images and validates on "
                     f"{head.get('val')}.")
        if "freq_gap_stratified" in head and "freq_gap_random" in head:
            lines.append(f"Its folds' label shares differ by {fmt_score(head['freq_gap_stratified'])} on average, "
                         f"against {fmt_score(head['freq_gap_random'])} for a random split.")
    elif stage in ("image", "text", "fusion"):
        table = recorded_table(tables, THRESHOLD_TABLES[stage])
        if table is not None and not table.empty:
            ranked = table.sort_values(F1_AT_05, ascending=False, kind="stable")
            best = ranked.iloc[0]
            lines.append(f"Best at threshold 0.5: **{best['model']}** with {fmt_score(best[F1_AT_05])} "
                         f"({fmt_score(best[F1_TUNED])} at its tuned threshold "
                         f"{float(best['tuned threshold']):.2f}, in-sample).")
            if len(ranked) > 1:
                lines.append("Then " + ", ".join(f"{r['model']} {fmt_score(r[F1_AT_05])}"
                                                 for r in ranked.iloc[1:].to_dict("records")) + ".")
        times = {k[: -len(" seconds")]: v for k, v in head.items() if k.endswith(" seconds")}
        if "seconds" in head:
            times["training"] = head["seconds"]
        if times:
            lines.append("Time: " + ", ".join(f"{k} {fmt_seconds(v)}" for k, v in times.items()) + ".")
        if stage == "fusion" and "gain_over_best_single" in head:
            gain = float(head["gain_over_best_single"])
            lines.append(f"The best fused model, {head.get('best_fusion')}, "
                         f"{'gains' if gain > 0 else 'loses' if gain < 0 else 'neither gains nor loses'}"
                         f"{f' {abs(gain):.4f}' if gain else ''} against the better single model "
                         f"({fmt_score(head.get('best_single_f1'))}).")
    elif stage == "ablation":
        lines += [line for line in findings({"ablation": summary}) if line.startswith("Ablation")]
    elif stage == "ensemble":
        lines += [line for line in findings({"ensemble": summary})]
    return "\n".join(f"- {line}" for line in lines) if lines else "_Nothing recorded._"


def method_note(params) -> str:
    """The settings the method table leaves out: evaluation views, the ensemble, the seed."""
    ensemble = params.ensemble
    members = ", ".join(ensemble.members) if ensemble.members else "every saved model"
    return (f"Image models are evaluated on the views {', '.join(params.image.tta) or 'center'} (averaged); "
            f"the ensemble weighs {members} by {ensemble.weights} weights and applies "
            f"{'one threshold per class' if ensemble.per_class_thresholds else 'one threshold'} tuned on validation. "
            f"Seed {params.seed}." + (f" The split keeps {params.split.val_fraction:.0%} of the labelled images for "
                                      f"validation ({getattr(params.split, 'method', '')})."
                                      if isinstance(getattr(params.split, "val_fraction", None), float) else ""))
