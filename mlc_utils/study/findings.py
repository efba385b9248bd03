"""The study's prose, written from its numbers: the summary of findings, the conclusion and each
stage's closing paragraph, and the formatting of the numbers they quote.

Everything here reads what the stages recorded (``summary.json``: headlines and tables, as
:func:`mlc_utils.study.context.load_summary` returns them), never a notebook, so the index page, the
PDF and the notebooks' closing paragraphs say the same thing, and a changed number changes the
sentence. The paper's numbers they compare with are in :mod:`mlc_utils.study.paper`.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import pandas as pd

from mlc_utils.study.artifacts import F1_AT_05, F1_TUNED, TABLES, THRESHOLD_TABLES, recorded_table
from mlc_utils.study.paper import PAPER_TABLE2, PAPER_TABLE3


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


# --- a stage's closing paragraph (its notebook's last cell) --------------------------------------
def _eda_found(summary: dict) -> list[str]:
    head = summary.get("headline", {})
    if not head:
        return []
    return [f"{head.get('train_rows')} labelled and {head.get('test_rows')} test images; the most common "
            f"label is {head.get('most_common')}; labels never seen: {head.get('absent_labels')}."]


def _split_found(summary: dict) -> list[str]:
    head = summary.get("headline", {})
    if not head:
        return []
    lines = [f"The {head.get('method')} split trains on {head.get('train')} images and validates on "
             f"{head.get('val')}."]
    if "freq_gap_stratified" in head and "freq_gap_random" in head:
        lines.append(f"Its folds' label shares differ by {fmt_score(head['freq_gap_stratified'])} on average, "
                     f"against {fmt_score(head['freq_gap_random'])} for a random split.")
    return lines


def _models_found(stage: str, summary: dict) -> list[str]:
    """A model stage (image, caption, fusion): its best model at 0.5, the others, and its times."""
    head = summary.get("headline", {})
    lines = []
    table = recorded_table({stage: summary}, THRESHOLD_TABLES[stage])
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
    return lines


def _fusion_found(summary: dict) -> list[str]:
    head = summary.get("headline", {})
    lines = _models_found("fusion", summary)
    if "gain_over_best_single" in head:
        gain = float(head["gain_over_best_single"])
        lines.append(f"The best fused model, {head.get('best_fusion')}, "
                     f"{'gains' if gain > 0 else 'loses' if gain < 0 else 'neither gains nor loses'}"
                     f"{f' {abs(gain):.4f}' if gain else ''} against the better single model "
                     f"({fmt_score(head.get('best_single_f1'))}).")
    return lines


#: stage -> its closing paragraph's lines, from what it recorded (a stage not named here has none)
STAGE_FINDINGS: dict[str, Callable[[dict], list[str]]] = {
    "eda": _eda_found,
    "split": _split_found,
    "image": partial(_models_found, "image"),
    "caption": partial(_models_found, "caption"),
    "fusion": _fusion_found,
    "ablation": lambda summary: [line for line in findings({"ablation": summary}) if line.startswith("Ablation")],
    "ensemble": lambda summary: findings({"ensemble": summary}),
}


def stage_findings(stage: str, summary: dict) -> str:
    """What one stage found, in Markdown, from what it recorded (``ctx.summary``)."""
    lines = STAGE_FINDINGS[stage](summary) if stage in STAGE_FINDINGS else []
    return "\n".join(f"- {line}" for line in lines) if lines else "_Nothing recorded._"
