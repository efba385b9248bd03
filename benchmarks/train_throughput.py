#!/usr/bin/env python3
"""Training images/s and peak memory of mlc_utils.train.loop.fit against a plain timm-style training loop.

Variants (each runs in its own child process, so its peak memory is its own):

- ``fit``: ``mlc_utils.train.loop.fit`` with one epoch capped by ``max_steps_per_epoch``, no
  validation, AdamW, BCE, bf16 autocast on CUDA (``TrainConfig`` defaults otherwise);
- ``timm``: a REFERENCE LOOP BUILT FROM TIMM'S COMPONENTS, written here as the core of timm's
  ``train.py`` (which the timm wheel does not ship): ``timm.optim.create_optimizer_v2('adamw')``,
  a plain torch ``DataLoader`` (shuffle, drop_last, pin_memory on CUDA), ``nn.BCEWithLogitsLoss``,
  ``torch.autocast`` (+ ``timm.utils.NativeScaler`` for fp16), ``loss.item()`` every step (as
  train.py logs it without DDP), and ``torch.backends.cudnn.benchmark = True`` (as train.py sets);
- ``timm_cl``: the same reference loop with model and inputs in ``channels_last`` (train.py's
  ``--channels-last``; only with ``--channels-last``);
- ``fit_cudnn``: ``fit`` with ``torch.backends.cudnn.benchmark = True`` set beforehand (CUDA only by
  default: isolates the one setting the two loops differ in);
- ``loader``: the same DataLoader alone, batches moved to the device, no model: the data ceiling.

Same model (``mlc_utils.models.create_image_model``, same initial weights), same data, batch
size, number of steps, threads and device for all. Timing: a forward pre-hook stamps the clock
(after a CUDA synchronise) at every forward from the first after ``--warmup`` steps to the one
``--steps`` steps later, so warm-up steps, start-up and the checkpoint writing of ``fit`` are
excluded and both loops are timed by the same mechanism (data loading, forward, backward,
optimizer step). images/s = steps x batch / (last stamp - first stamp); the median step time is
printed beside it (robust to a neighbour's burst on a shared machine). Both loops already
synchronise once a step (``loss.item()``), so the stamps' synchronise costs nothing extra.
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the child's peak resident
set (VmHWM; DataLoader worker processes not included) and, beside it, the resident set before
training (model + data), so the training increment is visible.

Data: ``--data-mode tensors`` (default) preloads ``--n`` real images decoded with the model's
eval transform and cycles through them (measures the training loop, not JPEG decoding; see
``benchmarks/input_pipeline.py`` for that); ``images`` decodes + augments with mlc's train
transform (RandAugment) in the loader, as a real run; ``--synthetic`` uses random tensors (no data
needed: the GPU machine).

    python benchmarks/train_throughput.py                   # CPU, ~1 minute on 2 cores
    python benchmarks/train_throughput.py --device cuda --synthetic --models efficientnet_lite0,swin_tiny_patch4_window7_224
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import HelpFormatter, add_data_argument, load_rows, machine_line, peak_rss_mib, print_table, require_data, rss_mib

VARIANT_LABELS = {
    "fit": "mlc loop.fit",
    "fit_cudnn": "mlc loop.fit + cudnn.benchmark",
    "timm": "timm reference loop",
    "timm_cl": "timm reference loop, channels_last",
    "loader": "DataLoader alone (ceiling)",
}
RESULT_TAG = "BENCH-RESULT "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    add_data_argument(p)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", "--model", dest="models", default="efficientnet_lite0",
                   help="comma-separated timm model names (one table for all)")
    p.add_argument("--pretrained", default="auto",
                   help="auto (packaged offline weights where installed, else random init), true, false")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 8 on cpu, 50 on cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 on cpu, 10 on cuda)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 on cpu, 128 on cuda")
    p.add_argument("--img-size", type=int, default=None, help="default: 128 on cpu (to finish in ~1 minute), 224 on cuda")
    p.add_argument("--amp", default="bf16", choices=["off", "bf16", "fp16"],
                   help="autocast dtype on CUDA (both loops); on the CPU fit never autocasts, so neither does the reference")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers (default: 0 on cpu = the library default, 8 on cuda)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per child (0: all usable cores)")
    p.add_argument("--variants", default=None,
                   help="comma-separated of " + ",".join(VARIANT_LABELS) + " (default: fit,timm,loader on cpu; "
                        "fit,fit_cudnn,timm,loader on cuda)")
    p.add_argument("--channels-last", action="store_true", help="add the timm_cl variant")
    p.add_argument("--synthetic", action="store_true", help="random tensors instead of images (no data needed)")
    p.add_argument("--data-mode", default="tensors", choices=["tensors", "images"],
                   help="with real data: preloaded eval-transformed tensors, or decode + RandAugment in the loader")
    p.add_argument("--n", type=int, default=256, help="distinct images (or random tensors) cycled through")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the list of variants this many times, interleaved; the fastest run of each is kept")
    p.add_argument("--time-budget", type=float, default=0,
                   help="seconds: skip the children that would not finish in time (their rows say so); 0 = no limit")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.steps = args.steps or (50 if cuda else 8)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    args.batch_size = args.batch_size or (128 if cuda else 16)
    args.img_size = args.img_size or (224 if cuda else 128)
    args.workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if cuda else 0)
    if args.variants is None:
        args.variants = "fit,fit_cudnn,timm,loader" if cuda else "fit,timm,loader"
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.channels_last and "timm_cl" not in args.variants:
        args.variants.insert(args.variants.index("timm") + 1 if "timm" in args.variants else 0, "timm_cl")
    unknown = [v for v in args.variants if v not in VARIANT_LABELS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANT_LABELS)}")
    if not args.synthetic:
        args.data = require_data(args.data)
    return args


# ---------------------------------------------------------------------------------------------
# child: one variant of one model

class Cycle:
    """``length`` items cycling through a pool of ``(x, y)`` (tensors, or an mlc ImageDataset)."""

    def __init__(self, pool, targets, length: int):
        import numpy as np
        self.pool, self.length = pool, length
        self.targets = np.asarray(targets, dtype=np.float32)[np.arange(length) % len(targets)]

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        item = self.pool[index % len(self.pool)]
        return item[0], item[1]


def build_data(args, model, total_items: int):
    import torch
    from torch.utils.data import TensorDataset
    size = args.img_size
    if args.synthetic:
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.n, 3, size, size, generator=g)
        y = (torch.rand(args.n, 20, generator=g) < 0.15).float()
        return Cycle(TensorDataset(x, y), y.numpy(), total_items), f"synthetic random tensors ({args.n} cycled)"
    from mlc_utils.data.images import ImageDataset, build_transform
    ids, targets = load_rows(args.data, args.n)
    data_config = model.spec["data"]
    if args.data_mode == "images":
        pool = ImageDataset(Path(args.data) / "data", ids, targets, build_transform(data_config, train=True))
        return Cycle(pool, targets, total_items), f"{args.data}: {len(ids)} images decoded + RandAugment in the loader"
    images = ImageDataset(Path(args.data) / "data", ids, targets, build_transform(data_config, train=False))
    x = torch.stack([images[i][0] for i in range(len(images))])
    pool = TensorDataset(x, torch.from_numpy(targets))
    return Cycle(pool, targets, total_items), f"{args.data}: {len(ids)} images preloaded as eval-transformed tensors"


def child(args) -> dict:
    import random

    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from mlc_utils.models import create_image_model

    variant, model_name = args.child, args.models[0] if isinstance(args.models, list) else args.models
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")

    pretrained = {"true": True, "false": False}.get(args.pretrained.lower(), args.pretrained)
    if pretrained == "auto":
        from mlc_utils.models import OfflineWeightsError
        from mlc_utils.models.weights import PACKAGED_WEIGHTS
        pretrained = False
        if model_name in PACKAGED_WEIGHTS:
            try:
                PACKAGED_WEIGHTS[model_name].path()
                pretrained = True
            except OfflineWeightsError:
                # random init of the architecture the packaged weights load into (the study's model)
                model_name = PACKAGED_WEIGHTS[model_name].arch
    torch.manual_seed(args.seed)  # identical initial weights in every child
    model = create_image_model(model_name, num_classes=20, pretrained=pretrained, img_size=args.img_size)
    total_steps = args.warmup + args.steps + 1  # +1: the stamp that ends the last timed step
    dataset, data_note = build_data(args, model, total_steps * args.batch_size)
    import mlc_utils.train.loop  # noqa: F401  imported by every variant, so its modules (pandas, sklearn) are in
    import timm.optim  # noqa: F401          every child's "before" RSS and the peaks compare the loops alone
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    before = rss_mib()

    stamps: list[float] = []
    calls = [0]

    timed_peak = [float("nan")]

    def stamp():
        if args.warmup <= calls[0] <= args.warmup + args.steps:
            if cuda:
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())
            if calls[0] == args.warmup + args.steps:  # end of the timed window
                timed_peak[0] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mib()
        calls[0] += 1

    model.register_forward_pre_hook(lambda module, inputs: stamp())
    amp_on = cuda and args.amp != "off"
    amp_dtype = torch.float16 if args.amp == "fp16" else torch.bfloat16
    note = ""

    if variant in ("fit", "fit_cudnn"):
        from mlc_utils.train.config import TrainConfig
        from mlc_utils.train.loop import fit
        if variant == "fit_cudnn":
            torch.backends.cudnn.benchmark = True
        cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-4, weight_decay=1e-2, optimizer="adamw",
                          scheduler="none", loss="bce", amp=amp_on, amp_dtype="float16" if args.amp == "fp16"
                          else "bfloat16", num_workers=args.workers, device=str(device), seed=args.seed,
                          max_steps_per_epoch=total_steps, restore_best=False, progress=False)
        with tempfile.TemporaryDirectory(prefix="mlc-bench-fit-") as out_dir, \
                contextlib.redirect_stdout(sys.stderr):
            fit(model, dataset, None, cfg, out_dir)
    elif variant in ("timm", "timm_cl"):
        # --- the core of timm's train.py (train_one_epoch), from timm's own components ---
        from timm.optim import create_optimizer_v2
        from timm.utils import NativeScaler
        torch.backends.cudnn.benchmark = True  # train.py sets this unconditionally
        channels_last = variant == "timm_cl"
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=1e-2)
        loss_fn = nn.BCEWithLogitsLoss().to(device)
        amp_autocast = (lambda: torch.autocast(device_type="cuda", dtype=amp_dtype)) if amp_on else contextlib.nullcontext
        loss_scaler = NativeScaler() if amp_on and amp_dtype == torch.float16 else None
        generator = torch.Generator().manual_seed(args.seed)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=args.workers, pin_memory=cuda, generator=generator)
        model.train()
        for step, (inputs, target) in enumerate(loader):
            inputs, target = inputs.to(device, non_blocking=True), target.to(device, non_blocking=True)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                output = model(inputs)
                loss = loss_fn(output.float(), target)
            if loss_scaler is not None:
                loss_scaler(loss, optimizer, parameters=model.parameters())
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad()
            _ = loss.item()  # train.py: losses_m.update(loss.item() * accum_steps, input.size(0))
            if step + 1 == total_steps:
                break
        note = f"optimizer {type(optimizer).__module__}.{type(optimizer).__name__}"
    elif variant == "loader":
        generator = torch.Generator().manual_seed(args.seed)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=args.workers, pin_memory=cuda, generator=generator)
        for step, (inputs, target) in enumerate(loader):
            inputs, target = inputs.to(device, non_blocking=True), target.to(device, non_blocking=True)
            stamp()
            if step + 1 == total_steps:
                break
    else:
        raise SystemExit(f"unknown variant {variant}")

    if len(stamps) != args.steps + 1:
        raise RuntimeError(f"{variant}: expected {args.steps + 1} clock stamps, got {len(stamps)} ({calls[0]} forwards)")
    seconds = stamps[-1] - stamps[0]
    median_step = float(np.median(np.diff(stamps)))
    if cuda:
        peak, setup = torch.cuda.max_memory_allocated(device) / 2**20, float("nan")
    else:
        peak, setup = peak_rss_mib(), before
    return {"model": model.spec["arch"], "weights": model.spec["weights"], "variant": variant,
            "images_per_s": args.steps * args.batch_size / seconds, "step_ms": 1000 * seconds / args.steps, "median_step_ms": 1000 * median_step,
            "peak_mib": peak, "timed_peak_mib": timed_peak[0], "setup_mib": setup, "threads": torch.get_num_threads(), "data": data_note,
            "note": note}


# ---------------------------------------------------------------------------------------------
# parent: one child per (model, variant), one table

def run_child(argv: list[str], model: str, variant: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--models", model, "--child", variant]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
    raise SystemExit(f"{model} / {variant}: the child process failed (exit {proc.returncode})")


def strip_models(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--models", "--model"):
            skip = True
            continue
        if a.startswith("--models=") or a.startswith("--model="):
            continue
        out.append(a)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        args.models = args.models.split(",")[0]
        result = child(args)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    base = strip_models(argv)
    print(machine_line())
    cuda = args.device == "cuda"
    print(f"device {args.device}; batch {args.batch_size}; {args.warmup} warm-up + {args.steps} timed steps; "
          f"{args.img_size}px; AMP {args.amp if cuda else 'off (cpu)'}; loader workers {args.workers}; "
          f"torch threads {args.threads or 'all usable cores'}; each variant in its own process", flush=True)
    rows, results = [], []
    variants = list(dict.fromkeys(args.variants))
    started, longest, skipped = time.perf_counter(), 0.0, []
    for model in models:
        by_variant = {}
        for _ in range(args.repeats):
            for variant in variants:
                elapsed = time.perf_counter() - started
                if args.time_budget and elapsed + longest > args.time_budget:
                    skipped.append(f"{model}/{variant}")
                    continue
                tic = time.perf_counter()
                r = run_child(base, model, variant)
                longest = max(longest, time.perf_counter() - tic)
                results.append(r)
                print(f"  {r['model']:<32} {VARIANT_LABELS[variant]:<36} {r['images_per_s']:9.1f} img/s  "
                      f"peak {r['peak_mib']:8.0f} MiB", file=sys.stderr, flush=True)
                if variant not in by_variant or r["images_per_s"] > by_variant[variant]["images_per_s"]:
                    by_variant[variant] = r
        ref = by_variant.get("timm")
        for variant, r in by_variant.items():
            speed = f"{r['images_per_s'] / ref['images_per_s']:.2f}" if ref and variant != "loader" else "-"
            mem = f"{r['peak_mib'] / ref['peak_mib']:.2f}" if ref and variant != "loader" else "-"
            row = [r["model"], VARIANT_LABELS[variant], r["images_per_s"], r["median_step_ms"], r["timed_peak_mib"],
                   r["peak_mib"]]
            if not cuda:
                row.append(r["setup_mib"])
            rows.append(row + [speed, mem])
    kind = "peak GPU MiB" if cuda else "peak RSS MiB"
    headers = ["model", "variant", "images/s", "median ms/step", f"{kind}, timed steps", f"{kind}, whole run"]
    if not cuda:
        headers.append("RSS before training MiB")
    headers += ["speed vs timm ref", "memory vs timm ref"]
    print()
    best_of = f", best of {args.repeats} runs each" if args.repeats > 1 else ""
    print_table(headers, rows, title=f"Training throughput ({args.device}, {args.img_size}px, batch {args.batch_size}, "
                                     f"{args.steps} timed steps after {args.warmup} warm-up{best_of})")
    if not results:
        print("no variant ran")
        return 1
    print(f"\ndata: {results[0]['data']}; weights: "
          + ", ".join(sorted({f"{r['model']}={r['weights']}" for r in results}))
          + f"; torch threads per child: {results[0]['threads']}")
    if skipped:
        print(f"NOT RUN (--time-budget {args.time_budget:.0f} s): {', '.join(skipped)}")
    print(f"peak memory: {'torch.cuda.max_memory_allocated' if cuda else 'VmHWM of the child process'} at the end of "
          "the timed steps and at the end of the run (fit then also writes last.pt/best.pt and keeps a CPU copy of the "
          "best weights)" + ("" if cuda else "; RSS before training = the child after imports, model and data"))
    print("'timm reference loop' is a reference loop built here from timm's components (the core of timm's "
          "train.py: create_optimizer_v2('adamw'), plain DataLoader, BCEWithLogitsLoss, autocast, "
          "cudnn.benchmark); it is not timm's train.py itself.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
