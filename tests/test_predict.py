"""Kaggle submission format, the top-1 fallback, thresholds and the predict command."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mlc_utils import cli as mlc_cli
from mlc_utils.evaluation.predict import load_thresholds, probs_paths, write_probs
from mlc_utils.evaluation.submission import write_submission
from mlc_utils.models import create_image_model
from mlc_utils.models.checkpoint import save_model
from mlc_utils.train.features import FeatureHead

torch.set_num_threads(1)
PROBS = np.array([[0.9, 0.1, 0.6], [0.2, 0.3, 0.1], [0.1, 0.55, 0.05]])


def test_submission_format_order_and_fallback(tmp_path):
    ids = ["9.jpg", "2.jpg", "30.jpg"]
    path = write_submission(ids, PROBS, 0.5, tmp_path / "sub.csv")
    text = path.read_text()
    assert text.splitlines() == ["ImageID,Labels", "9.jpg,0 2", "2.jpg,1", "30.jpg,1"]  # row 2: top-1 fallback
    bare = write_submission(ids, PROBS, 0.5, tmp_path / "bare.csv", at_least_one=False)
    assert bare.read_text().splitlines()[2] == "2.jpg,"
    per_class = write_submission(ids, PROBS, np.array([0.95, 0.25, 0.5]), tmp_path / "pc.csv")
    assert pd.read_csv(per_class, dtype=str).Labels.tolist() == ["2", "1", "1"]
    with pytest.raises(ValueError, match="probs"):
        write_submission(ids[:2], PROBS, 0.5, tmp_path / "x.csv")


def test_probabilities_beside_the_submission(tmp_path):
    npy, csv = write_probs(["a.jpg", "b.jpg", "c.jpg"], PROBS, tmp_path / "sub.csv")
    assert (npy, csv) == probs_paths(tmp_path / "sub.csv") and npy.name == "sub.probs.npy"
    np.testing.assert_allclose(np.load(npy), PROBS, atol=1e-7)
    frame = pd.read_csv(csv)
    assert list(frame.columns) == ["ImageID", "0", "1", "2"] and frame.ImageID.tolist() == ["a.jpg", "b.jpg", "c.jpg"]


def test_threshold_files(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"thresholds": [0.3] * 20}))
    assert load_thresholds(tmp_path / "t.json", 20).shape == (20,)
    (tmp_path / "one.txt").write_text("0.45\n")
    assert load_thresholds(tmp_path / "one.txt", 20) == 0.45
    np.save(tmp_path / "bad.npy", np.full(3, 0.5))
    with pytest.raises(ValueError, match="3 values; expected 1 or 20"):
        load_thresholds(tmp_path / "bad.npy", 20)


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_image_model("test_resnet", img_size=32, head="replace", tta_views=["center", "hflip", "full"])
    return model, save_model(model, tmp_path / "model.pt", params={"threshold": 0.5})


def test_predict_command_end_to_end(tiny_images, tmp_path, capsys):
    d = tiny_images
    _, ckpt = _checkpoint(tmp_path)
    out = tmp_path / "sub.csv"
    code = mlc_cli.main(["predict", "--checkpoint", str(ckpt), "--data", str(d["root"]), "--out", str(out), "--tta"])
    assert code == 0, capsys.readouterr().err
    assert "views center, hflip, full" in capsys.readouterr().out
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["ImageID", "Labels"] and sub.ImageID.tolist() == d["test_ids"]
    assert all(label.strip() for label in sub.Labels)  # fallback: never empty
    assert np.load(tmp_path / "sub.probs.npy").shape == (len(d["test_ids"]), 20)
    # a per-class threshold file and no fallback: an impossible threshold leaves rows empty
    (tmp_path / "t.json").write_text(json.dumps([0.999] * 20))
    code = mlc_cli.main(["predict", "--checkpoint", str(ckpt), "--data", str(d["root"]), "--out", str(out),
                         "--thresholds", str(tmp_path / "t.json"), "--no-fallback"])
    assert code == 0
    assert (pd.read_csv(out, dtype=str, keep_default_na=False).Labels == "").all()


def test_predict_command_errors_are_one_clear_line(tiny_images, tmp_path, capsys):
    d = tiny_images
    model, ckpt = _checkpoint(tmp_path)
    (d["root"] / "data" / d["test_ids"][0]).unlink()
    code = mlc_cli.main(["predict", "--checkpoint", str(ckpt), "--data", str(d["root"]), "--out",
                         str(tmp_path / "s.csv")])
    assert code == 1 and d["test_ids"][0] in capsys.readouterr().err
    head = FeatureHead(model.head, model.spec)
    head_ckpt = save_model(head, tmp_path / "head.pt")
    code = mlc_cli.main(["predict", "--checkpoint", str(head_ckpt), "--data", str(d["root"]), "--out",
                         str(tmp_path / "s.csv")])
    assert code == 1 and "model.pt" in capsys.readouterr().err
