"""The whole study, all eight stages (the opt-in explore stage too), through papermill on a tiny data folder with tiny models.

This is the chain `make run` executes, at a size that runs in about a minute: if any stage's
notebook or library step breaks, this fails with the notebook's path and the cell's error.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_tiny_study

from mlc_utils.data.csvio import read_test_csv, read_train_csv
from mlc_utils.data.labels import LabelSpace
from mlc_utils.run.pipeline import run_study
from mlc_utils.study.artifacts import F1_AT_05, F1_TUNED, TABLES

PROJECT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

def _empty_records(run: Path) -> dict:
    """Per stage, the tables and figures it recorded with nothing in them, and figures it lists
    but did not write."""
    found = {}
    for summary_file in sorted(run.glob("*/summary.json")):
        summary = json.loads(summary_file.read_text())
        missing = [f for f in summary["figures"] if not (summary_file.parent / f).is_file()]
        if summary.get("empty") or missing:
            found[summary_file.parent.name] = summary.get("empty", []) + missing
    return found


def test_all_stages_end_to_end(finished_study):
    root, params, logs, results = (finished_study[k] for k in ("root", "params", "logs", "results"))
    tiny_data = finished_study["data"]
    assert [r.status for r in results] == ["ran"] * 8, "\n".join(logs + [r.error for r in results])
    assert _empty_records(root / "runs" / "tiny") == {}
    # the kernel's epoch lines reach the terminal with the time left from the loop's own events
    assert any(line.startswith("[image] epoch 1/") and "epochs, about" in line for line in logs), "\n".join(logs)

    run = root / "runs" / "tiny"
    submission = pd.read_csv(run / "submission.csv", dtype=str, keep_default_na=False)
    test = read_test_csv(tiny_data / "test.csv")
    assert list(submission.columns) == ["ImageID", "Labels"]
    assert list(submission.ImageID) == list(test.ImageID) and (submission.Labels.str.len() > 0).all()

    for member in ("image/vit-finetune", "image/eff-frozen", "caption/caption", "fusion/concat", "fusion/bilinear",
                   "fusion/late_fusion", "ablation/vit-finetune-baseline", "ablation/vit-finetune-mixup"):
        assert (run / member / "member.json").is_file(), member
    # the ablation baseline is the image stage's own model, shared rather than retrained
    baseline = json.loads((run / "ablation" / "vit-finetune-baseline" / "member.json").read_text())
    image = json.loads((run / "image" / "vit-finetune" / "member.json").read_text())
    assert baseline["key"] == image["key"]

    index = (root / "reports" / "tiny" / "index.html").read_text()
    for table in ('id="table-1"', 'id="table-2"', 'id="table-3"', "Per-class F1 of", "6. Error analysis"):
        assert table in index, table
    # the summary of findings quotes Table 2's numbers: this run's best model per input at 0.5 and tuned
    summary = json.loads((run / "ensemble" / "summary.json").read_text())
    table2 = pd.DataFrame(**{k: summary["tables"][TABLES.table2.name][k] for k in ("columns", "data")})
    text = " ".join(html.unescape(index).split())
    for row in table2.to_dict("records"):
        sentence = f"{row['input']}: {row['best model']} ({row[F1_AT_05]:.4f} at 0.5, " \
                   f"{row[F1_TUNED]:.4f} at its tuned threshold)"
        assert sentence in text, sentence
    threshold = summary["headline"]["threshold"]
    assert f"a threshold of {threshold:.2f}" in text
    assert (root / "reports" / "tiny" / "index.pdf").is_file() or not shutil.which("chromium")
    assert 'href="tiny/index.html"' in (root / "reports" / "index.html").read_text()
    for stem in ("01_eda", "02_split", "03_image", "04_caption", "05_fusion", "06_ablation", "07_ensemble", "08_explore"):
        assert f'href="{stem}.html"' in index and (root / "reports" / "tiny" / f"{stem}.html").is_file()
    assert "def " not in (root / "reports" / "tiny" / "07_ensemble.html").read_text().split("<body", 1)[1][:2000]

    again = run_study(str(params), root=root, log=logs.append)
    assert [r.status for r in again] == ["skipped"] * 8


def test_offline_hub_weights_fail_before_any_stage(tmp_path, tiny_data, monkeypatch, empty_hub_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and an empty cache, whatever this machine's holds
    root = tmp_path / "project"
    shutil.copytree(PROJECT / "notebooks", root / "notebooks")
    params = root / "p.yaml"
    params.write_text(f"run: offline\ndata_dir: {tiny_data}\nstages: [eda, split, image]\n"
                      "image: {models: [{name: swinv2_large_window12to16_192to256, pretrained: true}]}\n")
    from mlc_utils.study.params import ParamError
    with pytest.raises(ParamError) as info:
        run_study(str(params), root=root, log=lambda *_: None)
    message = str(info.value)
    assert "swinv2_large_window12to16_192to256" in message and "efficientnet_lite0" in message
    assert not (root / "runs" / "offline" / "eda").exists()  # nothing ran
    assert empty_hub_cache == [], "no network call may be attempted when the hub is off"


TINY_FOLDS = """
run: tiny-folds
data_dir: {data}
seed: 3407
stages: [split, image, caption, fusion, ensemble]
split: {{val_fraction: 0.3, folds: 3}}
image:
  cache_dir: {cache}
  models:
    - {{label: eff-frozen, name: test_efficientnet, pretrained: false, mode: frozen_backbone, img_size: 32,
        head: class_attention, attention_grid: 2, train: {{epochs: 3, batch_size: 8, progress: false}}}}
caption:
  pretrained: false
  max_length: 16
  members: [finetune, frozen_encoder, tfidf]
  train: {{batch_size: 8, epochs: 2, progress: false}}
  head_train: {{epochs: 3, batch_size: 8, progress: false}}
fusion: {{heads: [concat], train: {{epochs: 3, progress: false}}}}
ensemble: {{weights: optimized}}
"""


def test_cross_validated_study_stacks_on_out_of_fold_outputs(tmp_path, tiny_data):
    root, params, logs, results = run_tiny_study(tmp_path, tiny_data, TINY_FOLDS)
    assert [r.status for r in results] == ["ran"] * 5, "\n".join(logs + [r.error for r in results])

    run = root / "runs" / "tiny-folds"
    assert _empty_records(run) == {}   # the folds' curves too (fold members keep their histories apart)
    split = pd.read_csv(run / "split" / "split.csv")
    assert list(split.columns) == ["ImageID", "fold", "cv_fold"] and sorted(split.cv_fold.unique()) == [0, 1, 2]
    labelled = list(read_train_csv(tiny_data / "train.csv", LabelSpace(20)).ImageID)
    for name in ("image/eff-frozen", "caption/caption", "caption/caption-frozen_encoder", "caption/caption-tfidf", "fusion/concat"):
        folds = [json.loads((run / name / f"fold{k}" / "member.json").read_text()) for k in range(3)]
        assert len({f["key"] for f in folds}) == 3, name
        meta = json.loads((run / name / "member.json").read_text())
        assert meta["info"]["oof"] and meta["info"]["folds"] == 3, name
        with np.load(run / name / "val_probs.npz") as saved:  # every labelled row, scored out-of-fold
            assert sorted(saved["ids"].astype(str)) == sorted(labelled), name
    ensemble = json.loads((run / "ensemble" / "member.json").read_text())
    assert 0.0 <= ensemble["info"]["cross_fitted_f1"] <= 1.0 and ensemble["info"]["tuned_in_sample"]
    table1 = json.loads((run / "ensemble" / "summary.json").read_text())["tables"][
        TABLES.table1.name]
    assert {"scores", "F1 cross-fitted"} <= set(table1["columns"])
    scores = dict(zip([r[0] for r in table1["data"]], [r[table1["columns"].index("scores")] for r in table1["data"]]))
    assert scores["eff-frozen"] == "out-of-fold" and scores["ensemble"] == "out-of-fold, weights tuned on them"
    assert scores["caption:tfidf"] == scores["caption:all-MiniLM-L6-v2-frozen_encoder"] == "out-of-fold"  # every caption member
    submission = pd.read_csv(run / "submission.csv", dtype=str, keep_default_na=False)
    assert list(submission.ImageID) == list(read_test_csv(tiny_data / "test.csv").ImageID)
    report = html.unescape((root / "reports" / "tiny-folds" / "index.html").read_text(encoding="utf-8"))
    assert "all labelled images are cut into 3 stratified folds" in report  # the split section says so
    assert "cut into 3 iterative-stratified folds" in report and "F1 cross-fitted (out-of-sample)" in report
    cross_fitted = f"{ensemble['info']['cross_fitted_f1']:.4f} (out-of-sample), the number to quote"
    assert cross_fitted in " ".join(report.split())
    assert "test_efficientnet, class attention over regions" in report  # the method table names the head

    # a changed fusion head retrains only the head's folds; the sub-models' folds are untouched
    def fold_key(name):
        return json.loads((run / name / "fold0" / "member.json").read_text())["key"]
    before = fold_key("fusion/concat"), fold_key("caption/caption")
    again = run_study(str(params), root=root, log=logs.append, overrides=["fusion.train.epochs=2"])
    assert [r.status for r in again] == ["skipped"] * 3 + ["ran"] * 2, "\n".join(logs)
    assert fold_key("fusion/concat") != before[0] and fold_key("caption/caption") == before[1]


TORCHRUN_FOLDS = """
run: torchrun-folds
data_dir: {data}
seed: 3407
stages: [split, image]
split: {{val_fraction: 0.3, folds: 2}}
image:
  launcher: torchrun
  cache_dir: {cache}
  models:
    - {{label: vit, name: test_vit, pretrained: false, img_size: 32,
        train: {{epochs: 1, batch_size: 8, progress: false}}}}
"""


def test_folds_train_through_torchrun_each_on_its_own_rows(tmp_path, tiny_data):
    """The GPU profile's launcher with split.folds: every fold is one torchrun job whose split.csv
    holds that fold's rows, and the out-of-fold member covers every labelled row."""
    root, params, logs, results = run_tiny_study(tmp_path, tiny_data, TORCHRUN_FOLDS)
    assert [r.status for r in results] == ["ran", "ran"], "\n".join(logs + [r.error for r in results])
    assert any("epochs, about" in line for line in logs), "\n".join(logs)  # events from torchrun's rank 0
    run = root / "runs" / "torchrun-folds"
    cv = pd.read_csv(run / "split" / "split.csv").set_index("ImageID")["cv_fold"]
    for k in range(2):
        fold = run / "image" / "vit" / f"fold{k}"
        assert (fold / "config.json").is_file() and (fold / "ranks.json").is_file()  # went through torchrun
        assert json.loads((fold / "config.json").read_text())["data"]["split"] == str(fold / "split.csv")
        rows = pd.read_csv(fold / "split.csv").set_index("ImageID")["fold"]
        assert sorted(rows.index[rows == "val"]) == sorted(cv.index[cv == k])
        assert sorted(rows.index[rows == "train"]) == sorted(cv.index[cv != k])
    with np.load(run / "image" / "vit" / "val_probs.npz") as saved:
        assert sorted(saved["ids"].astype(str)) == sorted(cv.index)


def test_a_figure_with_nothing_drawn_is_found_empty():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlc_utils.study.context import empty_axes
    fig, (drawn, blank, hidden) = plt.subplots(1, 3)
    drawn.plot([0, 1], [1, 0])
    hidden.axis("off")
    assert empty_axes(fig) == [blank]
    blank.bar([0], [1])
    assert empty_axes(fig) == []
    plt.close(fig)
