"""Two processes under torchrun (gloo on CPU) train like one process with the same global batch.

The model is ``test_vit`` (LayerNorm, no BatchNorm: per-rank batch statistics would make 2x4 differ
from 1x8 by design), dropout 0, no augmentation. DistributedSampler gives rank r the samples
r, r+2, ... of the epoch's permutation, so the two ranks' batches of 4 together are exactly the
single process's batch of 8 and the averaged gradients agree up to float summation order.
Tolerance: weights within 1e-4 absolute after 8 AdamW steps (measured ~1e-5); validation
probabilities and metrics within 1e-5 (the gathered validation set is the whole set, padding dropped).

Teardown: a failure on one rank (a NaN loss, ranks whose weights differ) stops every rank with the
same message and torchrun exits non-zero; an interrupted ``launch_torchrun`` leaves no process of
torchrun's tree running, workers that ignore SIGTERM included. The faulty workers are
``tests/ddp_workers.py``, run by torchrun in place of ``-m mlc_utils.train``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_ddp_config

from mlc_utils.models.checkpoint import read_checkpoint
from mlc_utils.train import distributed as train
from mlc_utils.train.distributed import launch_torchrun, run_config

torch.set_num_threads(1)


@pytest.mark.slow
def test_two_processes_match_one(tiny_images, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU + gloo even on a GPU machine (2 ranks, 1 GPU)
    config = make_ddp_config(tiny_images, tmp_path)
    one = run_config(config)

    lines = []
    two_config = {**config, "train": {**config["train"], "batch_size": 4}}
    with _deadline(300):
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


WORKERS = Path(__file__).with_name("ddp_workers.py")


def _use_workers(monkeypatch, mode: str) -> None:
    """``launch_torchrun`` runs ``tests/ddp_workers.py MODE`` where it would run ``-m mlc_utils.train``."""
    command = train.torchrun_command

    def workers_command(config_path, nproc):
        args = command(config_path, nproc)
        at = args.index("mlc_utils.train")
        assert args[at - 1] == "-m", args
        return args[:at - 1] + [str(WORKERS), mode] + args[at + 1:]
    monkeypatch.setattr(train, "torchrun_command", workers_command)


@contextlib.contextmanager
def _deadline(seconds: int):
    """TimeoutError in this (the main) thread after ``seconds``: a hang fails the test instead of blocking it."""
    def expire(signum, frame):
        raise TimeoutError(f"no result within {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow
@pytest.mark.parametrize("rank1_fault, message", [
    ("nan", "FloatingPointError: epoch 1, batch 2: loss is nan on rank 1 (lower lr, or set amp_dtype: bfloat16)"),
    ("disagree", "RuntimeError: ranks ended with different weights: "),
])
def test_a_failure_on_one_rank_stops_every_rank_with_its_message(rank1_fault, message, tiny_images, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    _use_workers(monkeypatch, rank1_fault)
    config = make_ddp_config(tiny_images, tmp_path, batch_size=4, epochs=1)
    lines: list[str] = []
    with _deadline(300):
        code = launch_torchrun(config, 2, tmp_path / "two", echo=lines.append)
    assert code != 0
    stopped = dict(line.split(" stopped: ", 1) for line in lines if " stopped: " in line)  # rank -> message
    assert sorted(stopped) == ["rank 0/2", "rank 1/2"], "\n".join(lines[-60:])
    assert len(set(stopped.values())) == 1 and stopped["rank 0/2"].startswith(message), stopped
    if rank1_fault == "disagree":  # rank 0 wrote the evidence before stopping
        assert json.loads((tmp_path / "two" / "ranks.json").read_text())["agree"] is False


GLOO_THREADS = ("pt_gloo_runloop", "gloo_tcp_loop")


@pytest.mark.slow
def test_leaving_the_group_ends_gloo_threads_on_every_rank(tiny_images, tmp_path, monkeypatch):
    """After a successful two-rank run no rank has a thread of gloo left (the run of the GPU study's
    image stage: tcmalloc preloaded, timm AdamW, EMA, mixup, the validation gather, the inference
    trace hook). Such a thread ran into interpreter shutdown when ``destroy_process_group`` could not
    free the group (``torch.distributed.nn`` imported after ``init_process_group``, by DDP, holds it in
    default arguments), and a rank now and then ended with "terminate called without an active
    exception" after the run had succeeded (1 of 8 runs of that config). That failure is a race; the
    threads left behind are not, so this test fails on every run while the group can outlive its
    destruction."""
    from mlc_utils.core.allocator import allocator_env
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("MLC_INFERENCE_TRACE", str(tmp_path / "trace.jsonl"))
    monkeypatch.setenv("MLC_PROGRESS", "lines")
    if preload := allocator_env().get("LD_PRELOAD"):  # as under `make test` and `run`, where it crashed
        monkeypatch.setenv("LD_PRELOAD", preload)
    _use_workers(monkeypatch, "threads")
    config = make_ddp_config(tiny_images, tmp_path, batch_size=4, epochs=1)
    config["train"].update(optimizer="timm_adamw", ema=True, mixup=True, max_grad_norm=5.0)
    lines: list[str] = []
    with _deadline(300):
        code = launch_torchrun(config, 2, tmp_path / "two", echo=lines.append)
    assert code == 0, "\n".join(lines[-40:])
    left = dict(line.split(" left=", 1) for line in lines if line.startswith("threads rank="))
    assert sorted(left) == ["threads rank=0", "threads rank=1"], "\n".join(lines[-40:])
    assert not [(rank, names) for rank, names in left.items() if any(t in names for t in GLOO_THREADS)], left
    assert not [line for line in lines if "still referenced after destroy_process_group" in line]
    assert json.loads((tmp_path / "two" / "ranks.json").read_text())["agree"]
    assert "validate" in (tmp_path / "trace.jsonl").read_text()  # the validation pass (and its gather) ran


def _running(groups: set[int]) -> list[str]:
    """Processes of ``groups`` that still run (a zombie waiting for init to reap it holds nothing)."""
    found = []
    for group in groups:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            continue
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
                if int(pgrp) == group and state not in ("Z", "X"):
                    found.append(f"pid {stat.parent.name} (group {group}, state {state})")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["hang", "stubborn"])
def test_interrupted_launch_leaves_no_process_running(workers, tiny_images, tmp_path, monkeypatch):
    """Ctrl-C while the output streams ends torchrun and its workers (each in a session of its own):
    by SIGTERM when they obey it (well before the grace period ends), else by SIGKILL after it."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    _use_workers(monkeypatch, workers)
    grace = 60.0 if workers == "hang" else 1.0
    monkeypatch.setattr(train, "STOP_GRACE_S", grace)
    groups: set[int] = set()
    ready: list[str] = []
    interrupted: list[float] = []

    def echo(line: str) -> None:
        if "ready rank=" in line:
            match = re.fullmatch(r"ready rank=\d+ pgid=(\d+) parent_pgid=(\d+)", line)
            assert match, f"garbled worker line {line!r}"
            groups.update(map(int, match.groups()))
            ready.append(line)
            if len(ready) == 2:  # both workers run: interrupt as a notebook user would
                interrupted.append(time.monotonic())
                raise KeyboardInterrupt

    config = make_ddp_config(tiny_images, tmp_path)
    with _deadline(300), pytest.raises(KeyboardInterrupt):
        launch_torchrun(config, 2, tmp_path / "run", echo=echo)
    stopped_after = time.monotonic() - interrupted[0]
    assert len(groups) == 3, groups  # torchrun's group and one per worker
    assert _running(groups) == []
    if workers == "hang":
        assert stopped_after < grace, f"SIGTERM did not end them: stopped after {stopped_after:.1f} s"


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


def test_torchrun_config_builds_the_class_attention_grid_it_names(tiny_images, tmp_path):
    config = make_ddp_config(tiny_images, tmp_path)
    config["model"].update(name="test_resnet", head="class_attention", attention_grid=2)
    _, model, *_ = train.build_run(config)
    assert model.spec["attention_grid"] == 2 and model.head.in_features == 4 * model.backbone.num_features


def test_torchrun_model_section_is_the_image_model_config_and_reads_an_older_config(tiny_images, tmp_path):
    """The config.json's model section is ImageModelConfig serialised; the views sit beside it (a
    file written when they were in the model section still reads)."""
    from dataclasses import asdict

    from mlc_utils.models import ImageModelConfig
    config = make_ddp_config(tiny_images, tmp_path)
    config["model"] = asdict(ImageModelConfig("test_resnet", head="class_attention", img_size=32, attention_grid=2))
    run, _ = train.parse_config({**config, "tta_views": ["center"]})
    assert run.model == ImageModelConfig(**config["model"]) and run.tta_views == ["center"]
    older = {**config, "model": {**config["model"], "tta_views": ["center", "full"]}}
    _, model, *_ = train.build_run(older)
    assert model.spec["tta_views"] == ["center", "full"] and model.config == run.model
