"""The whole study, all eight stages (the opt-in explore stage too), through papermill on a tiny data folder with tiny models.

This is the chain `make run` executes, at a size that runs in about a minute: if any stage's
notebook or library step breaks, this fails with the notebook's path and the cell's error.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mlc_utils.data.csvio import read_test_csv
from mlc_utils.run.pipeline import run_study

PROJECT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

TINY_STUDY = """
run: tiny
data_dir: {data}
seed: 3407
stages: [eda, split, image, text, fusion, ablation, ensemble, explore]
eda: {{n_examples: 2, image_size_sample: 20}}
split: {{val_fraction: 0.3}}
image:
  tta: [center, hflip]
  cache_dir: {cache}
  train: {{epochs: 2, batch_size: 8, lr: 1.0e-3, mixup: true, progress: false}}
  models:
    - {{label: vit-finetune, name: test_vit, pretrained: false, img_size: 32}}
    - {{label: eff-frozen, name: test_efficientnet, pretrained: false, mode: frozen, img_size: 32,
        train: {{epochs: 3, mixup: false}}}}
text:
  pretrained: false
  max_length: 16
  train: {{batch_size: 8, epochs: 2, progress: false}}
fusion: {{heads: [concat, bilinear], train: {{epochs: 3, progress: false}}}}
ablation: {{base: vit-finetune, switches: [mixup, tta, loss]}}
ensemble: {{weights: optimized}}
"""


def test_all_stages_end_to_end(tmp_path, tiny_data):
    root = tmp_path / "project"
    shutil.copytree(PROJECT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    params = root / "tiny.yaml"
    params.write_text(TINY_STUDY.format(data=tiny_data, cache=tmp_path / "cache"))
    logs = []
    results = run_study(str(params), root=root, log=logs.append)
    assert [r.status for r in results] == ["ran"] * 8, "\n".join(logs + [r.error for r in results])

    run = root / "runs" / "tiny"
    submission = pd.read_csv(run / "submission.csv", dtype=str, keep_default_na=False)
    test = read_test_csv(tiny_data / "test.csv")
    assert list(submission.columns) == ["ImageID", "Labels"]
    assert list(submission.ImageID) == list(test.ImageID) and (submission.Labels.str.len() > 0).all()

    for member in ("image/vit-finetune", "image/eff-frozen", "text/caption", "fusion/concat", "fusion/bilinear",
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
    table2 = pd.DataFrame(**{k: summary["tables"]["Table 2 (best per input)"][k] for k in ("columns", "data")})
    text = " ".join(html.unescape(index).split())
    for row in table2.to_dict("records"):
        sentence = f"{row['input']}: {row['best model']} ({row['sample_f1@0.5']:.4f} at 0.5, " \
                   f"{row['sample_f1 tuned']:.4f} at its tuned threshold)"
        assert sentence in text, sentence
    threshold = summary["headline"]["threshold"]
    assert f"a threshold of {threshold:.2f}" in text
    assert (root / "reports" / "tiny" / "index.pdf").is_file() or not shutil.which("chromium")
    assert 'href="tiny/index.html"' in (root / "reports" / "index.html").read_text()
    for stem in ("01_eda", "02_split", "03_image", "04_text", "05_fusion", "06_ablation", "07_ensemble", "08_explore"):
        assert f'href="{stem}.html"' in index and (root / "reports" / "tiny" / f"{stem}.html").is_file()
    assert "def " not in (root / "reports" / "tiny" / "07_ensemble.html").read_text().split("<body", 1)[1][:2000]

    again = run_study(str(params), root=root, log=logs.append)
    assert [r.status for r in again] == ["skipped"] * 8


def test_offline_hub_weights_fail_before_any_stage(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
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
