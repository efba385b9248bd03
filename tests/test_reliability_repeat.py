"""Reliability, repeatability: the same params and seed give the same bytes.

* the split: ``split.csv`` is byte-identical across processes (and hash seeds), and changes with the seed;
* training on CPU: two ``fit`` runs of an image model with RandAugment and mixup give identical
  ``log.csv`` (wall-clock column aside), weights and validation probabilities;
* the submission: ``python -m mlc_utils predict`` twice writes byte-identical submissions and
  probabilities, and the ensemble built from the same member files in two fresh processes (other
  hash seeds, other global RNG states) writes the same bytes.

(The pipeline-level split repeat is in test_reliability_interrupt.py; the report's provenance is in
test_reliability_report.py.)
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROJECT

from mlc_utils import cli as mlc_cli
from mlc_utils.data.images import image_dataset
from mlc_utils.evaluation.probs import save_probs
from mlc_utils.models import create_image_model
from mlc_utils.models.checkpoint import save_model, state_digest
from mlc_utils.train.config import TrainConfig
from mlc_utils.train.loop import fit

torch.set_num_threads(1)

SPLIT_SCRIPT = textwrap.dedent('''
    import sys
    from mlc_utils.data.csvio import read_train_csv
    from mlc_utils.data.labels import LabelSpace
    from mlc_utils.data import split as S
    data, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    train = read_train_csv(data + "/train.csv")
    y = LabelSpace(20).encode(list(train.Labels))
    tr, va = S.stratified_split(y, 0.25, seed, "iterative")
    S.save_split(S.split_frame(train.ImageID, tr, va), out)
''')


@pytest.mark.slow
def test_split_is_byte_identical_across_processes(tiny_data, tmp_path):
    script = tmp_path / "split.py"
    script.write_text(SPLIT_SCRIPT)

    def split(name: str, seed: int, hash_seed: str) -> bytes:
        out = tmp_path / f"{name}.csv"
        env = {**os.environ, "PYTHONPATH": str(PROJECT), "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, str(script), str(tiny_data), str(out), str(seed)], check=True, env=env,
                       timeout=120)
        return out.read_bytes()

    first, second = split("a", 3407, "1"), split("b", 3407, "12345")
    assert first == second, "same data, params and seed must give the same split.csv bytes"
    assert first.startswith(b"ImageID,fold\n") and first.count(b"\n") == 41
    assert split("c", 7, "1") != first, "the seed must matter (else the check above proves nothing)"


def _fit_once(data: dict, out, noise: int) -> tuple[pd.DataFrame, str, np.ndarray]:
    torch.manual_seed(0)
    model = create_image_model("test_resnet", img_size=32, head="extra_linear", drop_rate=0.2)
    random.seed(noise)  # other global RNG states for each run: only fit's own seeding may make them agree
    np.random.seed(noise)
    torch.manual_seed(noise)
    ids, targets = data["ids"], data["targets"]
    train = image_dataset(data["root"], ids[:30], targets[:30], model.spec["data"], train=True)  # RandAugment
    val = image_dataset(data["root"], ids[30:], targets[30:], model.spec["data"])
    cfg = TrainConfig(epochs=2, batch_size=8, lr=3e-3, mixup=True, label_smoothing=0.1, progress=False,
                      device="cpu", seed=11)
    fit(model, train, val, cfg, out)
    log = pd.read_csv(out / "log.csv")
    return log, state_digest(model), np.load(out / "val_probs.npy")


def test_two_fits_with_the_same_seed_log_the_same_metrics(tiny_images, tmp_path):
    log_a, weights_a, probs_a = _fit_once(tiny_images, tmp_path / "a", noise=1)
    log_b, weights_b, probs_b = _fit_once(tiny_images, tmp_path / "b", noise=2)
    assert len(log_a) == 2 and np.isfinite(log_a.train_loss).all()
    pd.testing.assert_frame_equal(log_a.drop(columns="seconds"), log_b.drop(columns="seconds"), check_exact=True)
    assert (tmp_path / "a" / "log.csv").read_text().count("\n") == (tmp_path / "b" / "log.csv").read_text().count("\n")
    assert weights_a == weights_b
    assert np.array_equal(probs_a, probs_b)


def test_predict_twice_writes_the_same_bytes(tiny_images, tmp_path, capsys):
    d = tiny_images
    torch.manual_seed(0)
    model = create_image_model("test_resnet", img_size=32, head="replace", tta_views=["center", "hflip", "full"])
    ckpt = save_model(model, tmp_path / "model.pt", params={"threshold": 0.5})
    outputs = []
    for name in ("one", "two"):
        out = tmp_path / name / "sub.csv"
        code = mlc_cli.main(["predict", "--checkpoint", str(ckpt), "--data", str(d["root"]), "--out", str(out),
                             "--tta"])
        assert code == 0, capsys.readouterr().err
        outputs.append({p.name: p.read_bytes() for p in sorted(out.parent.iterdir())})
    assert sorted(outputs[0]) == ["sub.csv", "sub.probs.csv", "sub.probs.npy"]
    assert outputs[0] == outputs[1], "predict twice must write the same bytes"
    assert outputs[0]["sub.csv"].splitlines()[0] == b"ImageID,Labels"



ENSEMBLE_SCRIPT = textwrap.dedent('''
    """Build the ensemble from member files under FOLDER into OUT, after scrambling the global RNGs with NOISE."""
    import json, random, sys
    from pathlib import Path
    import numpy as np
    from mlc_utils.evaluation.ensemble import Member, build_ensemble
    folder, out, noise = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    random.seed(noise)
    np.random.seed(noise)  # only the pipeline's own seeding may make two runs agree
    inputs = json.loads((folder / "inputs.json").read_text())
    members = [Member.from_files(n, folder / f"{n}.val.npz", folder / f"{n}.test.npz") for n in ("a", "b", "c")]
    result = build_ensemble(members, inputs["val_ids"], np.asarray(inputs["y_val"]), weights="optimized",
                            threshold="class", test_ids=inputs["test_ids"])
    out.mkdir()
    result.write_submission(out / "sub.csv")
    np.save(out / "test_probs.npy", result.test_probs)
    (out / "choice.json").write_text(json.dumps({"weights": result.weights,
                                                 "threshold": np.asarray(result.threshold).tolist()}))
''')


@pytest.mark.slow
def test_ensemble_is_byte_identical_across_processes(tiny_images, tmp_path):
    """The ensemble stage in two fresh processes (other hash seeds, other global RNG states): same bytes."""
    import json
    d = tiny_images
    rng = np.random.default_rng(0)
    val_ids, test_ids, y_val = d["ids"][30:], d["test_ids"], d["targets"][30:]
    for name in ("a", "b", "c"):
        save_probs(tmp_path / f"{name}.val.npz", val_ids, rng.random((len(val_ids), 20)))
        save_probs(tmp_path / f"{name}.test.npz", test_ids, rng.random((len(test_ids), 20)))
    (tmp_path / "inputs.json").write_text(json.dumps({"val_ids": val_ids, "test_ids": test_ids,
                                                      "y_val": y_val.tolist()}))
    script = tmp_path / "ensemble.py"
    script.write_text(ENSEMBLE_SCRIPT)

    def build(name: str, hash_seed: str, noise: int) -> dict[str, bytes]:
        env = {**os.environ, "PYTHONPATH": str(PROJECT), "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, str(script), str(tmp_path), str(tmp_path / name), str(noise)], check=True,
                       env=env, timeout=300)
        return {p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())}

    first, second = build("one", "1", 1), build("two", "12345", 2)
    assert sorted(first) == ["choice.json", "sub.csv", "test_probs.npy"]
    assert first == second, "the same member files must give the same ensemble bytes"
    assert first["sub.csv"].count(b"\n") == len(test_ids) + 1


def test_prediction_does_not_depend_on_batch_size(tiny_images, tmp_path, capsys):
    """The same rows in other batches give the same labels (no batch-dependent layer at eval time)."""
    d = tiny_images
    torch.manual_seed(0)
    ckpt = save_model(create_image_model("test_resnet", img_size=32, head="replace"), tmp_path / "model.pt")
    probs = []
    for batch in ("1", "4"):
        out = tmp_path / f"b{batch}.csv"
        assert mlc_cli.main(["predict", "--checkpoint", str(ckpt), "--data", str(d["root"]), "--out", str(out),
                             "--batch-size", batch]) == 0, capsys.readouterr().err
        probs.append(np.load(tmp_path / f"b{batch}.probs.npy"))
    np.testing.assert_allclose(probs[0], probs[1], rtol=0, atol=1e-5)
