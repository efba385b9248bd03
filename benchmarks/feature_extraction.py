#!/usr/bin/env python3
"""The CPU feature pass against its limit: the bare model, decoding alone, and the project's pass.

The limit of a pass over images on a CPU is the bare model forward on already-decoded batches (at
its best batch size and thread count) plus decoding alone, done one after the other on the same
cores: ``limit = 1 / (1 / model + 1 / decode)`` images/s. Every row runs in a fresh child process
under one allocator, because the allocator is fixed when a process starts:

- ``glibc``: the system malloc as it comes (``MLC_ALLOCATOR=system``: the project does not tune it);
- ``glibc-tuned``: glibc with ``core.allocator.tune_glibc`` (mallopt), what a kernel started by hand gets;
- ``tcmalloc``: Debian's libtcmalloc-minimal4 preloaded, what ``make`` and ``run`` start processes with.

Rows per allocator: the bare forward (``model.embed`` under ``torch.inference_mode``, channels_last)
at each ``--batches`` size; decoding alone (the study's eval view through ``ImageDataset``, one
process); the project's pass (``train.features.compute_features``, i.e. ``core.inference.run_model``
with the device's defaults) with 0 and 1 DataLoader workers, on torch and on OpenVINO
(``core.openvino``: converted once, f32, its first batch checked against torch); OpenVINO's bare
forward in f32 and at its own default precision (bf16 on a CPU that has it); bf16 autocast at the
default batch. Rows that change the numbers say by how much (their largest difference from the fp32
torch pass, as a share of its largest value). Each row is timed ``--repeats`` times, the rows taken in turn
(this host's speed drifts by 10-20% from minute to minute), and keeps its fastest pass; each row gives images/s, minor page faults per image
(``resource.getrusage(...).ru_minflt``) and system CPU seconds per 100 images, so the allocator's
cost shows even on a machine where it hurts less than here.

    python benchmarks/feature_extraction.py                       # ~4 minutes on 2 cores
    python benchmarks/feature_extraction.py --allocators tcmalloc --n 320
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import HelpFormatter, add_data_argument, load_rows, machine_line, print_table, require_data

ALLOCATORS = ("glibc", "glibc-tuned", "tcmalloc")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    add_data_argument(p)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--head", default="class_attention", help="the head whose input is cached (embed)")
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--crop-mode", default="squash")
    p.add_argument("--n", type=int, default=160, help="images (the first N rows of train.csv)")
    p.add_argument("--batches", default="4,8,16,32,64", help="batch sizes of the bare forward")
    p.add_argument("--allocators", default=",".join(ALLOCATORS))
    p.add_argument("--repeats", type=int, default=3, help="timed passes per row, round-robin; each row keeps its fastest")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_minflt, r.ru_stime


def _timed(fn, n: int) -> dict:
    t0, f0, s0 = _usage()
    out = fn()
    t1, f1, s1 = _usage()
    return {"img_s": n / (t1 - t0), "faults": (f1 - f0) / n, "sys100": 100 * (s1 - s0) / n, "out": out}


def _measure_all(rows: dict, n: int, repeats: int) -> dict:
    """Each row once to warm up, then ``repeats`` timed passes taken round-robin across the rows (so a
    slow minute of a shared host falls on every row alike); each row keeps its fastest pass and the
    spread of its passes."""
    for fn in rows.values():
        fn()
    runs = {name: [] for name in rows}
    for _ in range(repeats):
        for name, fn in rows.items():
            runs[name].append(_timed(fn, n))
    best = {}
    for name, passes in runs.items():
        rates = sorted(p["img_s"] for p in passes)
        best[name] = {**max(passes, key=lambda p: p["img_s"]), "spread": f"{rates[0]:.1f}-{rates[-1]:.1f}"}
    return best


def child(args) -> dict:
    """The measurements of one allocator (this process was started under it)."""
    import numpy as np
    import torch

    from mlc_utils.core import openvino
    from mlc_utils.core.allocator import loaded_allocator, tune_glibc
    from mlc_utils.core.inference import BATCH_SIZES, Inference
    from mlc_utils.data.images import image_dataset
    from mlc_utils.models import create_image_model
    from mlc_utils.train.features import compute_features
    tune_glibc()  # what the project does in every process (a no-op under tcmalloc or MLC_ALLOCATOR=system)
    data = require_data(args.data)
    ids, _ = load_rows(data, args.n)
    model = create_image_model(args.model, pretrained=True, head=args.head, img_size=args.img_size,
                               crop_mode=args.crop_mode).eval()
    dataset = image_dataset(data, ids, None, model.spec["data"], train=False, view="center")
    results = {"allocator": loaded_allocator(), "threads": torch.get_num_threads()}
    decoded = torch.stack([dataset[i][0] for i in range(len(ids))]).contiguous(memory_format=torch.channels_last)
    cl = model.to(memory_format=torch.channels_last)

    def forward(batch: int, dtype=None):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                return torch.cat([cl.embed(decoded[i:i + batch]).float() for i in range(0, len(decoded), batch)])
        return run
    default = BATCH_SIZES[("cpu", "images")]

    def one_thread(fn):
        def run():
            torch.set_num_threads(1)
            try:
                return fn()
            finally:
                torch.set_num_threads(results["threads"])
        return run
    rows = {f"bare forward, batch {batch}": forward(batch) for batch in [int(b) for b in args.batches.split(",")]}
    rows[f"bare forward, batch {default}, 1 thread"] = one_thread(forward(default))
    rows["decode alone (eval view, 1 process)"] = lambda: [dataset[i] for i in range(len(ids))]
    for workers in (0, 1):
        inference = Inference("cpu", num_workers=workers, runtime="torch")
        rows[f"project pass, {workers} worker(s)"] = (
            lambda inference=inference: compute_features(model, data, ids, "center", inference, progress=False))
    compiled = {}
    if openvino.available():
        started = time.perf_counter()
        compiled["f32"], why = openvino.compile_pass(cl, lambda m, x: m.embed(x), decoded[:default])
        results["openvino convert s"] = time.perf_counter() - started
        compiled["default"] = _openvino_default_precision(cl, decoded[:default])
        for precision, fn in compiled.items():
            if fn is None:
                print(f"OpenVINO {precision}: {why}", file=sys.stderr)
                continue
            rows[f"OpenVINO bare forward, {precision}, batch {default}"] = (
                lambda fn=fn: torch.cat([fn(decoded[i:i + default]) for i in range(0, len(decoded), default)]))
        ov = Inference("cpu", runtime="openvino")   # the first (warm-up) pass converts; the timed ones reuse it
        rows["project pass, 0 worker(s), OpenVINO"] = (
            lambda: compute_features(model, data, ids, "center", ov, progress=False))
    results.update(_measure_all(rows, len(ids), args.repeats))
    fp32 = results["project pass, 0 worker(s)"]["out"]
    scale = float(np.abs(fp32).max())
    for name, row in results.items():
        if "OpenVINO" in name:
            row["note"] = f"max difference {float(np.abs(np.asarray(row['out']) - fp32).max()) / scale:.1e} of max |fp32|"
    bf16 = _measure_all({"bf16": forward(default, torch.bfloat16)}, len(ids), 1)["bf16"]
    bf16["note"] = f"max |bf16 - fp32| = {float(np.abs(bf16['out'].numpy() - fp32).max()) / scale:.1e} of max |fp32|"
    results[f"bf16 autocast forward, batch {default}"] = bf16
    for row in results.values():
        if isinstance(row, dict):
            row.pop("out", None)
    return results


def _openvino_default_precision(model, example):
    """OpenVINO's own choice of precision on this CPU (bf16 where the CPU has it): faster, other numbers."""
    import warnings

    import numpy as np
    import openvino as ov
    import torch

    from mlc_utils.core.openvino import _Pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(_Pass(model, lambda m, x: m.embed(x)).eval(), example_input=example)
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
    return lambda batch: torch.from_numpy(np.array(compiled(batch.contiguous().numpy())[0]))


def _of_limit(row: str, v: dict, limits: dict, allocator: str) -> str:
    """A project pass against the limit of its own runtime (torch's or OpenVINO's bare forward + decoding)."""
    if not row.startswith("project"):
        return ""
    limit = limits.get(f"{allocator}, OpenVINO f32") if "OpenVINO" in row else limits[allocator]
    return f"{v['img_s'] / limit:.2f}" if limit else ""


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    require_data(args.data)
    from mlc_utils.core.allocator import tcmalloc_path
    print(machine_line())
    print(f"data: {args.data}, {args.n} images; {args.model} ({args.head} head's input) at {args.img_size} px\n")
    table, limits = [], {}
    for name in args.allocators.split(","):
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MLC_ALLOCATOR")}
        if name == "tcmalloc":
            if not tcmalloc_path():
                print("tcmalloc: not installed (apt-get install libtcmalloc-minimal4, or `make setup` as root); skipped")
                continue
            env["LD_PRELOAD"] = tcmalloc_path()
        elif name == "glibc":
            env["MLC_ALLOCATOR"] = "system"
        argv_child = [sys.executable, __file__, "--child", name, "--data", str(args.data), "--model", args.model,
                      "--head", args.head, "--img-size", str(args.img_size), "--crop-mode", args.crop_mode,
                      "--n", str(args.n), "--batches", args.batches, "--repeats", str(args.repeats)]
        out = subprocess.run(argv_child, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
        results = json.loads(out.strip().splitlines()[-1])
        bare = max(v["img_s"] for k, v in results.items() if k.startswith("bare forward"))
        decode = results["decode alone (eval view, 1 process)"]["img_s"]
        limits[name] = 1 / (1 / bare + 1 / decode)
        ov_bare = next((v["img_s"] for k, v in results.items() if k.startswith("OpenVINO bare forward, f32")), None)
        if ov_bare:
            limits[f"{name}, OpenVINO f32"] = 1 / (1 / ov_bare + 1 / decode)
        if "openvino convert s" in results:
            print(f"{name}: OpenVINO converted and checked the model in {results['openvino convert s']:.1f} s (once a process)")
        for row, v in results.items():
            if isinstance(v, dict):
                table.append([name, row, f"{v['img_s']:.1f}", f"{v['faults']:.0f}", f"{v['sys100']:.2f}",
                              _of_limit(row, v, limits, name), v.get("spread", ""), v.get("note", "")])
    print_table(["allocator", "row", "img/s", "page faults/img", "sys s/100 img", "of limit", "img/s of each pass", "note"], table,
                title="CPU image pass: bare model, decoding, the project's pass")
    for name, limit in limits.items():
        print(f"limit under {name}: {limit:.1f} img/s (best bare forward + decoding, one after the other)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
