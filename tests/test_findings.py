"""The report's text is written from the numbers: change a number in the recorded tables and the
sentence changes; the paper's Tables 1-3 sit beside this run's with the paper's own figures."""
from __future__ import annotations

import copy
import re

import numpy as np
import pandas as pd
import pytest

from mlc_utils.data.labels import LabelSpace
from mlc_utils.study import errors, paper, settings
from mlc_utils.study import findings as fd
from mlc_utils.study.artifacts import F1_AT_05, F1_TUNED, TABLES, recorded_table


def _table(frame: pd.DataFrame) -> dict:
    return {"columns": list(frame.columns), "data": frame.values.tolist(), "in_index": True}


@pytest.fixture
def summaries() -> dict:
    """What the seven stages record (summary.json), with round numbers to find in the text."""
    table1 = pd.DataFrame([
        {"model": "vit", "input": "image", "F1@0.40": 0.71, "F1@0.50": 0.72, "F1@0.60": 0.70,
         "F1 tuned global": 0.74, "tuned threshold": 0.45, "F1 tuned per class": 0.76},
        {"model": "caption", "input": "caption", "F1@0.40": 0.61, "F1@0.50": 0.62, "F1@0.60": 0.60,
         "F1 tuned global": 0.63, "tuned threshold": 0.4, "F1 tuned per class": 0.65},
        {"model": "concat", "input": "fusion", "F1@0.40": 0.69, "F1@0.50": 0.70, "F1@0.60": 0.68,
         "F1 tuned global": 0.71, "tuned threshold": 0.5, "F1 tuned per class": 0.73},
    ])
    table2 = pd.DataFrame([
        {"input": "image", "best model": "vit", F1_AT_05: 0.72, F1_TUNED: 0.74},
        {"input": "caption", "best model": "caption", F1_AT_05: 0.62, F1_TUNED: 0.63},
        {"input": "image+caption", "best model": "concat", F1_AT_05: 0.70, F1_TUNED: 0.71},
    ])
    table3 = pd.DataFrame([
        {"variant": "vit-baseline", "switch": "baseline", "setting": "mixup on; tta on", F1_AT_05: 0.72,
         F1_TUNED: 0.74, "seconds": 10.0, "delta vs baseline": 0.0},
        {"variant": "vit-mixup", "switch": "mixup", "setting": "off", F1_AT_05: 0.69,
         F1_TUNED: 0.70, "seconds": 10.0, "delta vs baseline": -0.03},
        {"variant": "vit-tta", "switch": "tta", "setting": "off", F1_AT_05: 0.725,
         F1_TUNED: 0.74, "seconds": 1.0, "delta vs baseline": 0.005},
    ])
    return {
        "eda": {"headline": {"train_rows": 40, "test_rows": 10, "most_common": "label 1 on 50.0% of images",
                             "absent_labels": "12"}},
        "split": {"headline": {"train": 28, "val": 12, "method": "iterative"}},
        "ablation": {"headline": {}, "tables": {TABLES.table3.name: _table(table3)}},
        "ensemble": {"headline": {"ensemble_val_f1": 0.7311, "threshold": 0.35, "test_rows": 10},
                     "tables": {TABLES.table1.name: _table(table1), TABLES.table2.name: _table(table2)}},
    }


def _text(lines) -> str:
    return " ".join(lines)


def test_findings_name_the_best_model_per_input_and_fusions_loss(summaries):
    text = _text(fd.findings(summaries))
    assert "40 labelled and 10 test images" in text and "The iterative split keeps 12 images" in text
    assert "image: vit (0.7200 at 0.5, 0.7400 at its tuned threshold)" in text
    assert "caption: caption (0.6200 at 0.5" in text and "image+caption: concat (0.7000 at 0.5" in text
    assert "(concat, 0.7000) lost 0.0200 against the best single-input model (vit, 0.7200)" in text
    assert "mixup set to off: 0.6900 (-0.0300)" in text and "tta set to off: 0.7250 (+0.0050)" in text
    assert "a threshold of 0.35" in text and "scores 0.7311 (in-sample)" in text


def test_a_changed_number_changes_the_sentence(summaries):
    changed = copy.deepcopy(summaries)
    rows = changed["ensemble"]["tables"][TABLES.table2.name]["data"]
    rows[2][2] = 0.75  # the fusion now beats the image model at 0.5
    changed["ensemble"]["headline"]["threshold"] = 0.55
    before, after = _text(fd.findings(summaries)), _text(fd.findings(changed))
    assert "lost 0.0200" in before and "lost" not in after.split("Combining")[1].split(";")[0]
    assert "(concat, 0.7500) gained 0.0300 against the best single-input model (vit, 0.7200)" in after
    assert "a threshold of 0.55" in after and "a threshold of 0.35" not in after
    assert "does not beat" in _text(fd.conclusion(summaries))
    assert "beats the best single-input model here (+0.0300), which disagrees" in _text(fd.conclusion(changed))


def test_every_number_in_the_findings_is_in_the_tables_or_headlines(summaries):
    """No sentence invents a score: each 4-place number is a recorded one, a difference of two, or the paper's."""
    recorded = set()
    for stage in summaries.values():
        recorded |= {round(v, 4) for v in stage.get("headline", {}).values() if isinstance(v, float)}
        for table in stage.get("tables", {}).values():
            recorded |= {round(v, 4) for row in table["data"] for v in row if isinstance(v, float)}
    theirs = {round(v, 4) for _, _, *scores in paper.PAPER_TABLE1 for v in scores if v is not None}
    theirs |= {round(paper.PAPER_TABLE2["image"][1] - paper.PAPER_TABLE2["image+caption"][1], 4),
              round(paper.PAPER_TABLE3[0][2] - paper.PAPER_TABLE3[1][2], 4)}
    diffs = {round(abs(a - b), 4) for a in recorded for b in recorded}
    for number in re.findall(r"\d\.\d{4}", _text(fd.findings(summaries))):
        assert float(number) in recorded | theirs | diffs, number


def test_tables_carry_the_papers_numbers_beside_ours(summaries):
    t1 = paper.table1_with_paper(recorded_table(summaries, TABLES.table1))
    theirs = t1[t1.source == paper.PAPER].set_index("model")
    assert theirs.loc["CNN-EfficientNet", "F1@0.50"] == 0.8362 and pd.isna(theirs.loc["CNN-EfficientNet", "F1@0.40"])
    assert list(theirs.loc["DeiT-S", ["F1@0.40", "F1@0.50", "F1@0.60"]]) == [0.8602, 0.8606, 0.8453]
    assert list(theirs.loc["Swin-L", ["F1@0.40", "F1@0.50", "F1@0.60"]]) == [0.8973, 0.9007, 0.8960]
    assert list(theirs.loc["Swin-V2-L", ["F1@0.40", "F1@0.50", "F1@0.60"]]) == [0.9071, 0.9079, 0.9058]
    assert list(theirs.loc["BERT", ["F1@0.40", "F1@0.50", "F1@0.60"]]) == [0.8708, 0.8679, 0.8637]
    assert theirs.loc["Swin-V2-L + BERT (Concatenate)", "F1@0.50"] == 0.9027
    assert theirs.loc["Swin-L + BERT (Bilinear)", "F1@0.40"] == 0.9003
    # ours first within each input, in the paper's order of inputs; kinds become the paper's input names
    assert list(t1["input"].drop_duplicates()) == ["image", "caption", "image+caption"]
    assert t1[t1.source == paper.THIS_RUN].set_index("model").loc["concat", "input"] == "image+caption"
    assert "F1 at tuned threshold (in-sample)" in t1.columns

    t2 = paper.table2_with_paper(recorded_table(summaries, TABLES.table2)).set_index(["input", "source"])
    assert t2.loc[("caption", paper.PAPER), "F1 at tuned threshold (in-sample)"] == 0.8708
    assert t2.loc[("image+caption", paper.PAPER), "best model"] == "Swin-V2-L + BERT (Concatenate)"
    assert t2.loc[("image", paper.THIS_RUN), "F1@0.50 (out-of-sample)"] == 0.72
    t3 = paper.table3_with_paper(recorded_table(summaries, TABLES.table3))
    assert t3[t3.source == paper.PAPER]["F1 at tuned threshold (in-sample)"].tolist() == [0.9079, 0.8856]


def test_missing_stages_give_fewer_findings_not_errors():
    assert fd.findings({}) == []
    assert "did not reach the ensemble" in fd.conclusion({})[0]
    assert len(paper.table1_with_paper(None)) == len(paper.PAPER_TABLE1)


@pytest.mark.parametrize("key, value, shown", [("seconds", 32.7, "33 s"), ("vit seconds", 1500.0, "25 min"),
                                               ("best_val_sample_f1", 0.812345, "0.8123"), ("train_rows", 40, "40"),
                                               ("seconds", 4 * 3600 + 600, "4 h 10 min")])
def test_headlines_round_for_reading(key, value, shown):
    assert fd.fmt_value(key, value) == shown
    assert fd.format_headline({key: value}) == f"{key.replace('_', ' ')}: {shown}"


def test_error_analysis_counts_missed_labels_and_shows_examples():
    y = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=float)
    p = np.array([[0.9, 0.1, 0.2], [0.3, 0.6, 0.1], [0.2, 0.8, 0.1], [0.8, 0.7, 0.9]])
    missed = errors.missed_labels(y, p, 0.5, ["a", "b", "c"])
    assert missed[["class", "support", "missed", "false positives"]].values.tolist() == \
        [[2, 2, 2, 1], [0, 3, 1, 0], [1, 2, 0, 1]]
    frame = pd.DataFrame({"ImageID": ["0.jpg", "1.jpg", "2.jpg", "3.jpg"], "Caption": ["x  y", "z", "w", "v"]})
    examples = errors.error_examples(frame, y, p, None, 0.5, classes=[2], per_class=5)
    assert examples.ImageID.tolist() == ["0.jpg", "2.jpg"] and examples.caption.iloc[0] == "x y"
    assert examples.truth.tolist() == ["0, 2", "1, 2"] and examples.predicted.tolist() == ["0", "1"]
    added = errors.error_examples(frame, y, p, None, 0.5, classes=[1], kind="added")
    assert added.ImageID.tolist() == ["1.jpg"] and added.error.tolist() == ["added"] and added.label.tolist() == ["1"]
    # with the study's class names, as the tables beside them
    named = errors.error_examples(frame, y, p, LabelSpace(3, ("person", "car", "traffic light")), 0.5, classes=[2])
    assert named.label.tolist() == ["traffic light"] * 2
    assert named.truth.tolist() == ["person, traffic light", "car, traffic light"]
    assert named.predicted.tolist() == ["person", "car"]
    text = errors.error_summary(missed)
    assert text.startswith("The submitted model misses 3 of the 7 true labels of the validation images: most often "
                           "label 2 (c) (2 of 2), label 0 (a) (1 of 3).")
    assert "It adds 2 labels that are not there, most often label 2 (c) (1x), label 1 (b) (1x)." in text
    none_missed = missed.assign(missed=0)
    assert "misses 0 of the 7 true labels of the validation images." in errors.error_summary(none_missed)


def test_error_counts_are_the_submitted_labels_errors(tmp_path):
    """Row 1 has nothing over 0.5: the submission writes its top class (1), so the error analysis
    counts that label as predicted, not missed, and the examples show it predicted."""
    from mlc_utils.evaluation.submission import write_submission
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1]], dtype=float)
    p = np.array([[0.9, 0.1, 0.2], [0.2, 0.4, 0.1], [0.7, 0.2, 0.3]])
    ids = ["a.jpg", "b.jpg", "c.jpg"]
    submitted = pd.read_csv(write_submission(ids, p, 0.5, tmp_path / "sub.csv"), dtype=str)
    pred = np.zeros_like(y, dtype=bool)
    for row, labels in enumerate(submitted.Labels):
        pred[row, [int(c) for c in labels.split()]] = True
    truth = y > 0.5
    missed = errors.missed_labels(y, p, 0.5).set_index("class")
    for c in range(3):
        assert missed["missed"].get(c, 0) == (truth[:, c] & ~pred[:, c]).sum(), c
        assert missed["false positives"].get(c, 0) == (~truth[:, c] & pred[:, c]).sum(), c
    frame = pd.DataFrame({"ImageID": ids, "Caption": ["x", "y", "z"]})
    assert errors.error_examples(frame, y, p, None, 0.5, classes=[1]).empty  # label 1 of b.jpg is submitted


def test_each_stage_closes_with_its_own_numbers(summaries):
    image = {"headline": {"best_model": "vit", "vit seconds": 150.0, "eff seconds": 12.2},
             "tables": {TABLES.image_thresholds.name: summaries["ensemble"]["tables"][TABLES.table1.name]}}
    text = fd.stage_findings("image", image)
    assert "Best at threshold 0.5: **vit** with 0.7200 (0.7400 at its tuned threshold 0.45, in-sample)" in text
    assert "Then concat 0.7000, caption 0.6200." in text and "Time: vit 2 min, eff 12 s." in text
    split = fd.stage_findings("split", {"headline": {"method": "iterative", "train": 28, "val": 12,
                                                     "freq_gap_stratified": 0.0036, "freq_gap_random": 0.0429}})
    assert "trains on 28 images and validates on 12" in split and "0.0036 on average, against 0.0429" in split
    fusion = fd.stage_findings("fusion", {"headline": {"best_fusion": "late", "best_single_f1": 0.5,
                                                       "gain_over_best_single": -0.0125}})
    assert "late, loses 0.0125 against the better single model (0.5000)" in fusion
    assert "mixup set to off: 0.6900 (-0.0300)" in fd.stage_findings("ablation", summaries["ablation"])
    assert "a threshold of 0.35" in fd.stage_findings("ensemble", summaries["ensemble"])
    assert fd.stage_findings("caption", {}) == "_Nothing recorded._"


def test_method_comes_from_the_params_used():
    from mlc_utils.study.params import load_params
    params = load_params(str(settings.__file__).replace("mlc_utils/study/settings.py", "params/demo.yaml"))
    frame = settings.method_frame(params).set_index("model")
    assert frame.loc["lite1-frozen", "architecture"] == "efficientnet_lite1, Linear on the ImageNet logits"
    cpu = settings.method_frame(load_params(str(settings.__file__).replace("mlc_utils/study/settings.py",
                                                               "params/comp5329-cpu.yaml"))).set_index("model")
    assert cpu.loc["lite0-320-attention-frozen", "architecture"] == "efficientnet_lite0, class attention over regions"
    assert frame.loc["lite1-frozen", "resolution"] == "128 px" and frame.loc["lite1-frozen", "mode"] == "frozen_backbone"
    assert "epochs 40" in frame.loc["lite1-frozen", "training"] and "epochs 4" in frame.loc["lite0-finetune", "training"]
    assert frame.loc["lite0-scratch", "weights"] == "random init"
    note = settings.method_note(params)
    assert "center, hflip" in note and "by score weights" in note and "Seed 3407" in note and "20%" in note


def test_a_cross_validated_run_says_so_and_quotes_the_cross_fitted_score(summaries):
    cv = copy.deepcopy(summaries)
    cv["split"]["headline"]["folds"] = 5
    cv["ensemble"]["headline"]["ensemble_cross_fitted_f1"] = 0.7207
    table1 = cv["ensemble"]["tables"][TABLES.table1.name]
    table1["columns"].append("F1 cross-fitted")
    for row, score in zip(table1["data"], (0.7301, 0.6202, 0.7003)):
        row.append(score)
    text = _text(fd.findings(cv))
    assert "cut into 5 iterative-stratified folds" in text and "covers all 40 labelled images, out-of-fold" in text
    assert "The iterative split keeps" not in text
    assert "scores 0.7311 (in-sample); with its weights and threshold fitted on the other folds only it scores " \
           "0.7207 (out-of-sample)" in text
    assert "the cross-fitted column" in _text(fd.conclusion(cv))
    t1 = paper.table1_with_paper(recorded_table(cv, TABLES.table1))
    ours = t1[t1.source == paper.THIS_RUN].set_index("model")["F1 cross-fitted (out-of-sample)"]
    assert ours.to_dict() == {"vit": 0.7301, "caption": 0.6202, "concat": 0.7003}
    assert t1[t1.source == paper.PAPER]["F1 cross-fitted (out-of-sample)"].isna().all()  # the paper has none
    # a holdout run has no such column and keeps the split sentence
    assert "F1 cross-fitted (out-of-sample)" not in paper.table1_with_paper(
        recorded_table(summaries, TABLES.table1)).columns


def test_training_curves_of_a_cross_validated_member_are_its_folds(tmp_path):
    """Figures 7 and 8: a cross-validated member keeps its fold models' logs in ``fold<k>/log.csv``
    (none beside it); the curves are their mean, not empty axes."""
    from mlc_utils.evaluation.ensemble import Member
    from mlc_utils.study.tables import epoch_curves
    for k, losses in enumerate(([0.9, 0.5, 0.3], [0.7, 0.5, 0.1])):
        (tmp_path / f"fold{k}").mkdir()
        pd.DataFrame({"epoch": [0, 1, 2], "train_loss": losses, "sample_f1": [0.2, 0.4, 0.6]}).to_csv(
            tmp_path / f"fold{k}" / "log.csv", index=False)
    member = Member("lite0", "image", tmp_path, info={"oof": True, "folds": 2})
    assert member.history()["fold"].tolist() == [0, 0, 0, 1, 1, 1]
    loss, f1 = epoch_curves([member]).axes
    assert [line.get_label() for line in loss.lines] == ["lite0 (mean of 2 folds)"]
    assert loss.lines[0].get_ydata().tolist() == pytest.approx([0.8, 0.5, 0.2])
    assert f1.lines[0].get_xdata().tolist() == [1, 2, 3]
