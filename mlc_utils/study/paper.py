"""The paper this study reproduces, and its Tables 1-3 beside this run's.

The paper: Lin, Huang and Yang, *Multi-Label Classification* (COMP5329, University of Sydney). Its
numbers are written here once; the report's tables and the findings' comparisons read them from here.
"""
from __future__ import annotations

import pandas as pd

from mlc_utils.evaluation.metrics import PAPER_THRESHOLDS
from mlc_utils.study.artifacts import F1_AT_05, F1_TUNED, TUNED_THRESHOLD, f1_at

# the columns of the tables beside the paper's: which of this run's scores are out-of-sample
AT_05_OUT_OF_SAMPLE = f"{F1_AT_05} (out-of-sample)"
TUNED_IN_SAMPLE = "F1 at tuned threshold (in-sample)"

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

INPUT_OF_KIND = {"image": "image", "caption": "caption", "fusion": "image+caption",
                 "late_fusion": "image+caption", "ensemble": "image+caption"}


# --- this run's tables beside the paper's --------------------------------------------------------
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
                     "model": row["model"], **{f1_at(t): row.get(f1_at(t)) for t in PAPER_THRESHOLDS},
                     TUNED_IN_SAMPLE: row.get(F1_TUNED), TUNED_THRESHOLD: row.get(TUNED_THRESHOLD),
                     **({"F1 cross-fitted (out-of-sample)": row["F1 cross-fitted"]} if "F1 cross-fitted" in row else {})})
    rows += [{"input": inp, "source": PAPER, "model": model, **dict(zip(map(f1_at, PAPER_THRESHOLDS), (a, b, c))),
              TUNED_IN_SAMPLE: None, TUNED_THRESHOLD: None}
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
                         AT_05_OUT_OF_SAMPLE: row.get(F1_AT_05),
                         TUNED_IN_SAMPLE: row.get(F1_TUNED)})
        model, score = PAPER_TABLE2[inp]
        rows.append({"input": inp, "source": PAPER, "best model": model, AT_05_OUT_OF_SAMPLE: None,
                     TUNED_IN_SAMPLE: score})
    return _numeric(pd.DataFrame(rows), 3)


def table3_with_paper(ours: pd.DataFrame | None) -> pd.DataFrame:
    """Table 3: each ablation switch against the baseline, this run's and the paper's (mixup)."""
    rows = []
    for row in ([] if ours is None else ours.to_dict("records")):
        rows.append({"source": THIS_RUN, "variant": row["variant"], "switch": row["switch"],
                     "setting": row.get("setting", ""), AT_05_OUT_OF_SAMPLE: row.get(F1_AT_05),
                     TUNED_IN_SAMPLE: row.get(F1_TUNED),
                     "change vs baseline": row.get("delta vs baseline")})
    base = PAPER_TABLE3[0][2]
    rows += [{"source": PAPER, "variant": variant, "switch": "baseline" if i == 0 else "mixup",
              "setting": setting, AT_05_OUT_OF_SAMPLE: None, TUNED_IN_SAMPLE: score,
              "change vs baseline": score - base} for i, (variant, setting, score) in enumerate(PAPER_TABLE3)]
    return _numeric(pd.DataFrame(rows), 4)
