"""Shared fixtures: the real dev pack (skipped when absent) and a tiny hand-made data folder."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `run` prints a plan before its first stage, calibrating each architecture it trains (seconds to a
# minute on a CPU the first time on a machine): the many tests that run studies are not about the
# plan, so they go without it; tests/test_plan.py switches it back on where it tests it.
os.environ.setdefault("MLC_PLAN", "off")

PROJECT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("MLC_REAL_DATA", PROJECT.parent / "shared" / "comp5329-dev"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "train.csv").is_file():
        pytest.skip(f"real dev pack not found at {REAL_DATA}")
    return REAL_DATA


QUADRANT_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def draw(labels, size: int, rng: np.random.Generator) -> np.ndarray:
    """Classes 0-3 paint one quadrant each on a dark noisy background: learnable in a few epochs."""
    image = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    half = size // 2
    for label in labels:
        r, c = divmod(label, 2)
        image[r * half:(r + 1) * half, c * half:(c + 1) * half] = QUADRANT_COLOURS[label]
    return image


def make_tiny_dataset(root: Path, n: int = 40, size: int = 32, seed: int = 0, n_test: int = 6) -> dict:
    """A data folder in the competition layout (quirky captions included) and what tests need of it."""
    from PIL import Image

    from mlc_utils.data.csvio import write_competition_csv
    from mlc_utils.data.labels import LabelSpace
    rng = np.random.default_rng(seed)
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n + n_test):
        labels = sorted(rng.choice(4, size=int(rng.integers(1, 3)), replace=False).tolist())
        Image.fromarray(draw(labels, size, rng)).save(root / "data" / f"{i}.jpg", quality=95)
        caption = f'A "scene" with {", ".join(f"thing{label}" for label in labels)}' + \
            ("\nsecond line/" if i % 7 == 0 else ".")
        rows.append({"ImageID": f"{i}.jpg", "Labels": labels, "Caption": caption})
    frame = pd.DataFrame(rows)
    train = frame.iloc[:n].reset_index(drop=True)
    write_competition_csv(train, root / "train.csv")
    write_competition_csv(frame.iloc[n:][["ImageID", "Caption"]], root / "test.csv")
    return {"root": root, "train": train, "ids": train.ImageID.tolist(),
            "targets": LabelSpace(20).encode(train.Labels.tolist()), "test_ids": frame.ImageID.iloc[n:].tolist()}


def make_ddp_config(tiny: dict, work: Path, batch_size: int = 8, epochs: int = 2) -> dict:
    """The run of tests/test_ddp.py on :func:`make_tiny_dataset`'s folder: ``test_vit`` (no BatchNorm),
    32 px, no augmentation, CPU, 32 train / 8 val images; ``out_dir`` is ``work/one``."""
    split = work / "split.csv"
    pd.DataFrame({"ImageID": tiny["ids"], "fold": ["train"] * 32 + ["val"] * 8}).to_csv(split, index=False)
    return {"model": {"name": "test_vit", "head": "replace", "img_size": 32, "pretrained": False},
            "data": {"root": str(tiny["root"]), "split": str(split), "augment": False},
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3, "progress": False,
                      "scheduler": "none", "device": "cpu"},
            "out_dir": str(work / "one")}


def make_tiny_folder(root: Path, n_train: int = 40, n_test: int = 10, size: int = 32, seed: int = 0) -> Path:
    return make_tiny_dataset(root, n_train, size, seed, n_test)["root"]


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_tiny_folder(tmp_path / "tiny")


@pytest.fixture
def tiny_images(tmp_path) -> dict:
    """40 train + 6 test images of 32x32 px (see :func:`make_tiny_dataset`)."""
    return make_tiny_dataset(tmp_path / "tiny")


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, whatever this machine's holds, and no network: every attempt is recorded."""
    import socket

    import huggingface_hub
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    attempts: list[str] = []

    def refuse(what):
        def call(*args, **kwargs):
            attempts.append(f"{what}{args[:2]}")
            raise OSError(f"test: no network ({what})")
        return call
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, refuse(name))
    return attempts


def make_project(tmp_path: Path, data: Path, stages: str = "[eda, split]", image_size_sample: int = 20):
    """A throw-away project folder (the notebooks and a params file) so runs never touch the repo."""
    root = tmp_path / "project"
    shutil.copytree(PROJECT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (root / "params").mkdir()
    params = root / "params" / "t.yaml"
    params.write_text(f"run: t\ndata_dir: {data}\nstages: {stages}\n"
                      f"eda: {{n_examples: 2, image_size_sample: {image_size_sample}}}\n"
                      "image: {models: [{name: test_vit, img_size: 32}]}\n")
    return root, params


TINY_STUDY = """
run: tiny
data_dir: {data}
seed: 3407
stages: [eda, split, image, caption, fusion, ablation, ensemble, explore]
eda: {{n_examples: 2, image_size_sample: 20}}
split: {{val_fraction: 0.3}}
image:
  tta: [center, hflip]
  cache_dir: {cache}
  train: {{epochs: 2, batch_size: 8, lr: 1.0e-3, mixup: true, progress: false}}
  models:
    - {{label: vit-finetune, name: test_vit, pretrained: false, img_size: 32}}
    - {{label: eff-frozen, name: test_efficientnet, pretrained: false, mode: frozen_backbone, img_size: 32,
        train: {{epochs: 3, mixup: false}}}}
caption:
  pretrained: false
  max_length: 16
  train: {{batch_size: 8, epochs: 2, progress: false}}
fusion: {{heads: [concat, bilinear], train: {{epochs: 3, progress: false}}}}
ablation: {{base: vit-finetune, switches: [mixup, tta, loss]}}
ensemble: {{weights: optimized}}
"""


def run_tiny_study(tmp_path: Path, data: Path, template: str):
    """A throw-away project with the notebooks and ``template``'s params, run once: (root, params, logs, results)."""
    from mlc_utils.run.pipeline import run_study
    root = tmp_path / "project"
    shutil.copytree(PROJECT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    params = root / "study.yaml"
    params.write_text(template.format(data=data, cache=tmp_path / "cache"))
    logs: list[str] = []
    return root, params, logs, run_study(str(params), root=root, log=logs.append)


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory) -> dict:
    """:data:`TINY_STUDY`, all eight stages, run once for the session (2-3 minutes on two cores):
    tests/test_study.py checks what it wrote, tests/test_browser.py opens its report and explorer.
    Tests read it; one that would change it works on a copy."""
    base = tmp_path_factory.mktemp("finished-study")
    data = make_tiny_folder(base / "tiny")
    root, params, logs, results = run_tiny_study(base, data, TINY_STUDY)
    return {"root": root, "params": params, "data": data, "logs": logs, "results": results,
            "run": root / "runs" / "tiny", "report": root / "reports" / "tiny"}


def assert_resumed_like_straight(straight, resumed, straight_dir: Path, resumed_dir: Path) -> dict:
    """A resumed fit ended exactly where an uninterrupted one did: weights, EMA, step count, history.

    Returns the two ``last.pt`` checkpoints for further checks.
    """
    import torch

    from mlc_utils.models.checkpoint import read_checkpoint
    a, b = read_checkpoint(straight_dir / "last.pt"), read_checkpoint(resumed_dir / "last.pt")
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert a["global_step"] == b["global_step"]
    pd.testing.assert_frame_equal(pd.DataFrame(straight.history).drop(columns=["seconds"]),
                                  pd.DataFrame(resumed.history).drop(columns=["seconds"]))
    return {"straight": a, "resumed": b}


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """With pytest-xdist (``make test`` runs a worker per core): the tests that read the session's
    finished study share one worker, so the study runs once (``--dist loadgroup``), and the slow tests
    (notebook chains, multi-process jobs) are handed out first, so no worker is left with a long one
    at the end."""
    for item in items:
        if "finished_study" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("finished_study"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)   # stable: the order within each kind kept
