"""Train an image model from a JSON config, on one process or several (torchrun).

    torchrun --standalone --nproc_per_node=2 -m mlc_utils.train --config cfg.json

Under torchrun every process builds the same model and data (seeded), joins the process group
(NCCL on CUDA, gloo on CPU) and calls the ordinary :func:`mlc_utils.train.loop.fit`, which then uses
DistributedDataParallel and DistributedSampler and writes from rank 0 only. :func:`launch_torchrun`
runs that command from a notebook and streams its output line by line.

Teardown: on success the ranks meet before they leave the process group, which frees it and
joins its threads before the interpreter shuts down; a failure detected on
one rank (a non-finite loss, ranks whose weights differ) stops every rank with the same message and
a non-zero exit; an interrupted :func:`launch_torchrun` ends torchrun and all its workers.

Config (JSON)::

    {"model": {"name": "efficientnet_lite0", "pretrained": true, "head": "extra_linear",
               "img_size": 224, "drop_rate": 0.0, ...},   # models.image_config.ImageModelConfig
     "tta_views": ["center", "hflip"],      # the views the checkpoint records for prediction
     "data":  {"root": "data/demo", "split": "runs/demo/split/split.csv", "num_classes": 20,
               "augment": true, "auto_augment": "rand-m9-mstd0.5"},
     "train": {... TrainConfig fields ...},
     "teacher": null,                       # optional checkpoint path for knowledge distillation
     "out_dir": "runs/demo/image/efficientnet_lite0"}
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mlc_utils.core.device import rank_and_world, seed_everything
from mlc_utils.core.io import atomic_write_text
from mlc_utils.core.processes import signal_groups, tree_groups, wait_gone
from mlc_utils.data.images import DEFAULT_AUTO_AUGMENT
from mlc_utils.models.checkpoint import load_checkpoint, state_digest
from mlc_utils.models.image_config import DEFAULT_TTA_VIEWS, ImageModelConfig
from mlc_utils.train.config import TrainConfig
from mlc_utils.train.loop import FitResult, fit


@dataclass
class DataSection:
    root: str
    split: str
    num_classes: int = 20
    augment: bool = True                      # false: training uses the evaluation transform
    auto_augment: str | None = DEFAULT_AUTO_AUGMENT


@dataclass
class RunConfig:
    model: ImageModelConfig                   # the model's config serialised (dataclasses.asdict)
    data: DataSection
    out_dir: str
    train: dict = field(default_factory=dict)
    teacher: str | None = None
    tta_views: list[str] = field(default_factory=lambda: list(DEFAULT_TTA_VIEWS))  # recorded in the checkpoint


def parse_config(data: dict) -> tuple[RunConfig, TrainConfig]:
    from mlc_utils.core.config import from_dict
    model = dict(data.get("model") or {})
    if "tta_views" in model:  # a config.json written before the views left the model section
        data = {"tta_views": model.pop("tta_views"), **data, "model": model}
    run = from_dict(RunConfig, data, "config")
    return run, TrainConfig.from_dict(run.train, "config.train")


def build_datasets(run: RunConfig, data_config: dict):
    """(train, val) image datasets from the data folder and the split file."""
    from mlc_utils.data.csvio import read_train_csv
    from mlc_utils.data.images import image_dataset
    from mlc_utils.data.labels import LabelSpace
    from mlc_utils.data.split import fold_indices, load_split
    root = Path(run.data.root)
    labels = LabelSpace(run.data.num_classes)
    frame = read_train_csv(root / "train.csv", labels)
    ids = frame.ImageID.tolist()
    train_idx, val_idx = fold_indices(load_split(run.data.split, ids), ids)
    targets = labels.encode(frame.Labels.tolist())
    pick = lambda idx: [ids[i] for i in idx]  # noqa: E731
    train = image_dataset(root, pick(train_idx), targets[train_idx], data_config, train=run.data.augment,
                          auto_augment=run.data.auto_augment, num_classes=labels.num_classes)
    val = image_dataset(root, pick(val_idx), targets[val_idx], data_config, train=False,
                        num_classes=labels.num_classes)
    return train, val


def build_run(data: dict):
    """(train config, model, train set, val set, teacher, out_dir) from the config mapping."""
    from mlc_utils.models import create_image_model
    run, cfg = parse_config(data)
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = create_image_model(run.model, run.data.num_classes, run.tta_views)
    train, val = build_datasets(run, model.spec["data"])
    teacher = load_checkpoint(run.teacher)[0] if run.teacher else None
    return cfg, model, train, val, teacher, Path(run.out_dir)


def run_config(data: dict) -> FitResult:
    """Build everything from ``data`` and train (with DDP when a process group is initialised)."""
    cfg, model, train, val, teacher, out_dir = build_run(data)
    result = fit(model, train, val, cfg, out_dir, teacher=teacher)
    _record_rank_agreement(model, out_dir)
    return result


def _record_rank_agreement(model, out_dir: Path) -> None:
    """Every rank's final-weights digest -> ``out_dir/ranks.json`` (DDP must keep them identical).

    Every rank holds the gathered digests, so when they differ every rank raises the same error
    (rank 0 after writing the file) and none is left waiting for a peer that stopped.
    """
    digest, (rank, world) = state_digest(model), rank_and_world()
    digests = [digest]
    if world > 1:
        digests = [None] * world
        dist.all_gather_object(digests, digest)
    if rank == 0:
        atomic_write_text(out_dir / "ranks.json", json.dumps(
            {"world_size": world, "weights_sha1": digests, "agree": len(set(digests)) == 1}, indent=2))
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks ended with different weights: {digests}")


def _init_distributed(device: str = "auto") -> bool:
    """Join torchrun's process group: NCCL when training on GPUs, gloo on CPUs.

    One process started by torchrun joins a group of one too, so a one-GPU run goes through NCCL
    and the collectives exactly as a multi-GPU run does (TORCHELASTIC_RUN_ID is set by torchrun).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_initialized() or (world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ):
        return False
    _bind_collective_defaults_before_the_group()
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not on_gpu:
        dist.init_process_group("gloo")
        return True
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if local_world > torch.cuda.device_count():
        raise RuntimeError(f"nproc_per_node={local_world} but {torch.cuda.device_count()} GPU(s) are visible; "
                           "use one process per GPU (or train.device: cpu)")
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl")
    return True


def _bind_collective_defaults_before_the_group() -> None:
    """Import ``torch.distributed.nn`` while no process group exists.

    Its functions take ``group=group.WORLD`` as a default argument, evaluated once, at import. DDP's
    constructor imports it (through FSDP and sharded tensors); imported then, after
    ``init_process_group``, every one of those defaults holds the live default group, so
    ``destroy_process_group`` cannot free it: gloo's threads (``pt_gloo_runloop``, ``gloo_tcp_loop``)
    kept running into interpreter shutdown, where the group was freed in whatever order the modules
    went, and a rank now and then died with "terminate called without an active exception" (SIGABRT)
    after a successful run. Imported here, the defaults are ``None`` (no group yet): the group is
    freed, and its threads joined, inside ``destroy_process_group`` (:func:`_leave_group` checks it).
    """
    import torch.distributed.nn  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlc_utils.train", description="train an image model")
    parser.add_argument("--config", required=True, help="JSON run config (see the module docstring)")
    args = parser.parse_args(argv)
    data = json.loads(Path(args.config).read_text())
    started = _init_distributed(str((data.get("train") or {}).get("device", "auto")))
    ok = False
    try:
        result = run_config(data)
        if rank_and_world()[0] == 0:
            print(f"best epoch {result.best_epoch + 1}: " +
                  " ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items()
                           if isinstance(v, float)), flush=True)
        ok = True
    except Exception as err:
        if not started:
            raise
        _report_failure(err)
    finally:
        if started:
            _leave_group(ok)
    return 0 if ok else 1


def _report_failure(err: Exception) -> None:
    """This rank's traceback and one line naming the rank, before the group goes (torchrun stops the
    other ranks as soon as one exits). One write, so the ranks' reports do not interleave mid-line."""
    import traceback
    rank, world = rank_and_world()
    sys.stderr.write(f"{traceback.format_exc()}rank {rank}/{world} stopped: {type(err).__name__}: {err}\n")
    sys.stderr.flush()


def _leave_group(ok: bool) -> None:
    """Destroy the process group. On success every rank first meets the others: a rank that left
    while a peer was still writing died with SIGABRT at exit. On failure nobody waits, since the
    peer that failed may never come. The group must be freed here, its backend's threads joined
    (:func:`_bind_collective_defaults_before_the_group`); a group still referenced afterwards is
    reported on stderr."""
    if ok:
        dist.barrier()
    group, (rank, world) = weakref.ref(dist.group.WORLD), rank_and_world()
    dist.destroy_process_group()
    if group() is not None:  # its backend's threads would outlive it into interpreter shutdown
        sys.stderr.write(f"rank {rank}/{world}: WARNING: the process group is still referenced after "
                         "destroy_process_group; its threads will run into interpreter shutdown\n")
        sys.stderr.flush()


def torchrun_command(config_path: str | os.PathLike, nproc: int, *, nnodes: int = 1,
                     rdzv_endpoint: str | None = None, rdzv_id: str | None = None,
                     node_rank: int | None = None, rdzv_backend: str = "c10d") -> list[str]:
    """The torchrun command line of one node.

    One node: ``--standalone``. Several (``nnodes > 1``): every node runs the same command with the
    same ``rdzv_endpoint`` (HOST:PORT of one of them) and ``rdzv_id`` (e.g. ``$SLURM_JOB_ID``);
    c10d rendezvous assigns ranks, ``node_rank`` pins them when given (``$SLURM_NODEID``).
    """
    for name, value in (("nproc", nproc), ("nnodes", nnodes)):
        if value < 1:
            raise ValueError(f"{name}: must be >= 1 (got {value})")
    tail = [f"--nproc_per_node={nproc}", "-m", "mlc_utils.train", "--config", str(config_path)]
    head = [sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1 and rdzv_endpoint is None:
        return head + ["--standalone", "--nnodes=1"] + tail
    host, _, port = (rdzv_endpoint or "").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"rdzv_endpoint: must be HOST:PORT of the rendezvous node, reachable from every node "
                         f"(got {rdzv_endpoint!r})")
    if not rdzv_id:
        raise ValueError("rdzv_id: must name the job, the same on every node (e.g. $SLURM_JOB_ID)")
    if node_rank is not None and not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank: must be in 0..{nnodes - 1} (got {node_rank})")
    rank = [] if node_rank is None else [f"--node_rank={node_rank}"]
    return head + [f"--nnodes={nnodes}", *rank, f"--rdzv_backend={rdzv_backend}",
                   f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id}"] + tail


def launch_torchrun(config: dict[str, Any], nproc: int, out_dir: str | os.PathLike, echo=print) -> int:
    """Run training under torchrun with ``nproc`` processes; stream its output; return its exit code.

    The config is written to ``out_dir/config.json`` (with ``out_dir`` set), so the run can be
    repeated from the shell with the same file. Interrupted (or when ``echo`` raises), it ends
    torchrun and every worker before re-raising, so no orphan keeps a GPU (:func:`_stop`).
    """
    if nproc < 1:
        raise ValueError(f"nproc: must be >= 1 (got {nproc})")
    from mlc_utils.core.io import atomic_write_text
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**config, "out_dir": str(out_dir)}
    parse_config(config)  # fail here, not in N processes
    path = atomic_write_text(out_dir / "config.json", json.dumps(config, indent=2))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    # its own session and process group, which _stop signals without signalling this (the notebook's) process
    process = subprocess.Popen(torchrun_command(path, nproc), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1, env=env, start_new_session=True)
    assert process.stdout is not None
    try:
        for line in process.stdout:
            echo(line.rstrip("\n"))
        return process.wait()
    except BaseException:  # KeyboardInterrupt, or echo failed: no worker may live on holding a GPU
        _stop(process)
        raise
    finally:
        process.stdout.close()


STOP_GRACE_S = 15.0  # SIGTERM -> SIGKILL of an interrupted torchrun and its workers


def _stop(process: subprocess.Popen) -> None:
    """End torchrun and its workers: SIGTERM to every process group of the tree, SIGKILL to all of
    them after ``STOP_GRACE_S`` (or a second interrupt), then wait until none of them runs.

    torchrun starts each worker in a session of its own, so signalling torchrun's group alone
    would orphan the workers when torchrun dies before it has stopped them.
    """
    groups = tree_groups(process.pid)
    signal_groups(groups, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if process.poll() is None:  # still our unreaped child: its pid cannot have been reused
            groups |= tree_groups(process.pid)
        signal_groups(groups, signal.SIGKILL)
        process.wait()
        wait_gone(groups, STOP_GRACE_S)


if __name__ == "__main__":
    raise SystemExit(main())
