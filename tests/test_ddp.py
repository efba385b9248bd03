"""Two processes under torchrun (gloo on CPU) train like one process with the same global batch.

The model is ``test_vit`` (LayerNorm, no BatchNorm: per-rank batch statistics would make 2x4 differ
from 1x8 by design), dropout 0, no augmentation. DistributedSampler gives rank r the samples
r, r+2, ... of the epoch's permutation, so the two ranks' batches of 4 together are exactly the
single process's batch of 8 and the averaged gradients agree up to float summation order.
Tolerance: weights within 1e-4 absolute after 8 AdamW steps (measured ~1e-5); validation
probabilities and metrics within 1e-5 (the gathered validation set is the whole set, padding dropped).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mlc_utils.models.checkpoint import read_checkpoint
from mlc_utils.train.distributed import launch_torchrun, run_config

torch.set_num_threads(1)


@pytest.mark.slow
def test_two_processes_match_one(tiny_images, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU + gloo even on a GPU machine (2 ranks, 1 GPU)
    d = tiny_images
    split = tmp_path / "split.csv"
    pd.DataFrame({"ImageID": d["ids"], "fold": ["train"] * 32 + ["val"] * 8}).to_csv(split, index=False)
    config = {"model": {"name": "test_vit", "head": "replace", "img_size": 32, "pretrained": False},
              "data": {"root": str(d["root"]), "split": str(split), "augment": False},
              "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "progress": False, "scheduler": "none",
                        "device": "cpu"},
              "out_dir": str(tmp_path / "one")}
    one = run_config(config)

    lines = []
    two_config = {**config, "train": {**config["train"], "batch_size": 4}}
    code = launch_torchrun(two_config, 2, tmp_path / "two", echo=lines.append)
    assert code == 0, "\n".join(lines[-40:])
    assert any("epoch 2/2" in line for line in lines), "output was not streamed"

    ranks = json.loads((tmp_path / "two" / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and ranks["agree"], ranks
    a = read_checkpoint(tmp_path / "one" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "two" / "last.pt")["model"]
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, f"weights differ by {worst}"
    log_one = pd.read_csv(tmp_path / "one" / "log.csv")
    log_two = pd.read_csv(tmp_path / "two" / "log.csv")
    for column in ("sample_f1", "micro_f1", "macro_f1", "mAP", "val_bce", "train_loss"):
        np.testing.assert_allclose(log_two[column], log_one[column], atol=1e-5, err_msg=column)
    np.testing.assert_allclose(np.load(tmp_path / "two" / "val_probs.npy"), one.val_probs, atol=1e-5)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["world_size"] == 2


def test_torchrun_command_single_node_is_standalone():
    from mlc_utils.train.distributed import torchrun_command
    cmd = torchrun_command("cfg.json", 2)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
                       "-m", "mlc_utils.train", "--config", "cfg.json"]


def test_torchrun_command_several_nodes_meet_at_a_rendezvous():
    from mlc_utils.train.distributed import torchrun_command
    cmd = torchrun_command("runs/r/image/m/config.json", 4, nnodes=2, node_rank=1,
                           rdzv_endpoint="node001:29500", rdzv_id="4242")
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1", "--rdzv_backend=c10d",
                       "--rdzv_endpoint=node001:29500", "--rdzv_id=4242", "--nproc_per_node=4",
                       "-m", "mlc_utils.train", "--config", "runs/r/image/m/config.json"]
    assert "--node_rank=0" not in torchrun_command("c.json", 1, nnodes=2, rdzv_endpoint="h:1", rdzv_id="j")
    with pytest.raises(ValueError, match="rdzv_endpoint: must be HOST:PORT"):
        torchrun_command("c.json", 4, nnodes=2, rdzv_id="j")
    with pytest.raises(ValueError, match="rdzv_id: must name the job"):
        torchrun_command("c.json", 4, nnodes=2, rdzv_endpoint="h:29500")
    with pytest.raises(ValueError, match="node_rank: must be in 0..1"):
        torchrun_command("c.json", 4, nnodes=2, node_rank=2, rdzv_endpoint="h:29500", rdzv_id="j")
