"""Time and memory from this machine: a few timed batches of each architecture on the plan's device
(random weights of the same architecture, so nothing is downloaded), the decoding of a few of the data
folder's images, kept in ``<cache_dir>/plan/calibration.json`` keyed by architecture, settings and
machine, then turned into each training's seconds by :mod:`.costs`.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import time
from pathlib import Path

from mlc_utils.study.plan.costs import (
    DECODE_S,
    IMAGE_KINDS,
    MACHINE_SCALE,
    REFERENCE_S,
    TRAINED,
    memory_floor,
    training_seconds,
)
from mlc_utils.study.plan.work import Plan, Training

DECODE_SAMPLE = 8                    # images timed per transform (after one untimed)
HEAD_STEPS = 10                      # timed training batches of a head on features (milliseconds each)


def plan_device(params) -> tuple[str | None, str]:
    """The device the profile runs on as this machine would run it, or None with why not here."""
    from mlc_utils.core.device import visible_cuda_devices
    count, why = visible_cuda_devices()
    wants_cuda = params.device.startswith("cuda") or (params.device == "auto" and params.image.gpus > 0)
    if params.device == "cpu" or (params.device == "auto" and not wants_cuda and not count):
        return "cpu", ""
    if not count:
        return None, f"not measurable here (the profile runs on CUDA: {why})"
    index = int(params.device.partition(":")[2] or 0) if params.device.startswith("cuda") else 0
    return f"cuda:{index}", ""


def _time_batches(model, batch, train: bool, device, amp_dtype, steps: int) -> float:
    """Seconds per batch: one untimed warm-up, then ``steps`` timed ones."""
    import torch

    from mlc_utils.core.device import place_model, to_device
    model = place_model(model, device).train(train)
    batch = to_device(batch, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6) if train else None
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def step():
        with torch.set_grad_enabled(train), autocast:
            out = model(batch)
        if train:
            out.float().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / steps


def _machine_scale(cache: "CalibrationCache", machine: dict) -> float:
    """This machine's seconds on the reference mix of small steps over ``REFERENCE_S`` (clipped), timed once a machine."""
    key = cache.key(reference="small steps", **machine)
    if cache.get(key) is None:
        cache.put(key, {"s": _time_reference()})
    low, high = MACHINE_SCALE
    return min(max(cache.get(key)["s"] / REFERENCE_S, low), high)


def _time_reference(repeats: int = 9) -> float:
    """The fastest of ``repeats`` runs (a third of a second in all; fewer let one slow moment of a busy host
    set the scale of every nominal cost) of a fixed mix of what the nominal stages do: threshold sweeps and
    the epoch metrics on 4,000 rows, and 40 training steps of a small head (a fusion head's shape)."""
    import numpy as np
    import torch

    from mlc_utils.evaluation import metrics
    rng = np.random.default_rng(0)
    y, probs = rng.random((4000, 20)) < 0.1, rng.random((4000, 20))
    head = torch.nn.Linear(40, 20)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    inputs, targets = torch.randn(256, 40), torch.rand(256, 20)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        metrics.tune_global_threshold(y, probs)
        metrics.evaluate(y, probs)
        for _ in range(40):
            torch.nn.functional.binary_cross_entropy_with_logits(head(inputs), targets).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        best = min(best, time.perf_counter() - started)
    return best


def _features(model, batch):
    return model.features(batch) if hasattr(model, "features") else model.embed(batch)


class _KernelShare:
    """The share of this process's CPU time spent in the kernel while the block runs (``share``): on
    glibc's malloc, mostly faulting in freshly mapped activations, which tcmalloc avoids (``core.allocator``)."""

    def __enter__(self):
        self.before = resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc):
        after = resource.getrusage(resource.RUSAGE_SELF)
        user, system = after.ru_utime - self.before.ru_utime, after.ru_stime - self.before.ru_stime
        self.share = system / (user + system) if user + system > 0 else 0.0


def _time_compiled(model, batch, steps: int) -> dict | None:
    """A model's pass compiled by OpenVINO, as ``run_model`` compiles it (an image model's features, a
    caption model's embeddings): seconds per batch after one untimed batch, and the seconds its
    conversion took; None where it cannot be compiled."""
    from mlc_utils.core import openvino
    started = time.perf_counter()
    compiled, _ = openvino.compile_pass(model.eval(), _features, batch)
    if compiled is None:
        return None
    compile_s = time.perf_counter() - started
    compiled(batch)
    started = time.perf_counter()
    for _ in range(steps):
        compiled(batch)
    return {"s": (time.perf_counter() - started) / steps, "compile_s": compile_s, "runtime": "openvino"}


def _time_head(head, dim: int, batch: int, device, amp_dtype, steps: int) -> float:
    """Seconds per training batch of a head on saved features: its rows gathered from a table of
    features (as the loader fetches them from memory), forward, backward and the optimizer's step."""
    import torch
    table = torch.randn(4 * batch, dim, device=device)

    class Gathered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, rows):
            return self.head(table[rows])
    return _time_batches(Gathered(), torch.randperm(len(table))[:batch], True, device, amp_dtype, steps)


def _time_decode(data_config: dict, data_dir: Path, image_ids: list[str], train: bool) -> float:
    """Seconds to decode and transform one image (as the training or evaluation pass does, in this
    process: the CPU's loaders have no workers): one untimed image, then the rest."""
    from mlc_utils.data.images import image_dataset
    settings = dict(data_config)
    augment = settings.pop("auto_augment", None)
    dataset = image_dataset(data_dir, image_ids, None, settings, train=train, auto_augment=augment)
    dataset[0]
    started = time.perf_counter()
    for i in range(1, len(dataset)):
        dataset[i]
    return (time.perf_counter() - started) / max(len(dataset) - 1, 1)


def _sample_images(data_dir: Path, n: int = DECODE_SAMPLE + 1) -> list[str]:
    folder = Path(data_dir) / "data"
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.name.lower().endswith((".jpg", ".jpeg", ".png")) and e.is_file()]
        return sorted(names)[:n]


def machine_facts(device) -> dict:
    """What a calibration's seconds depend on besides the model and its settings (on a CPU the
    allocator too: glibc's malloc halves an image pass here, ``core.allocator``)."""
    import torch

    from mlc_utils.core.allocator import loaded_allocator
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    facts = {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": _cpu_model()}
    return facts if device.type == "cuda" else {**facts, "allocator": loaded_allocator()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


class CalibrationCache:
    """Calibrated seconds by key (JSON of the architecture, settings and machine) in one JSON file;
    a missing or unreadable file is an empty cache, a file that cannot be written is no error."""

    def __init__(self, path: Path | None):
        self.path, self.changed = path, False
        try:
            self.entries = json.loads(path.read_text()) if path is not None and path.is_file() else {}
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def key(**facts) -> str:
        return json.dumps(facts, sort_keys=True, default=str)

    def get(self, key: str):
        return self.entries.get(key)

    def put(self, key: str, value) -> None:
        self.entries[key], self.changed = value, True

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        from mlc_utils.core.io import atomic_write_text
        try:
            atomic_write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True))
        except OSError:
            pass


def calibration_path(params, root: Path) -> Path:
    return Path(root, params.image.cache_dir, "plan", "calibration.json")


def calibrate(plan: Plan, steps: int = 2, budget_s: float | None = None, log=None,
              cache: CalibrationCache | None = None, data_dir: Path | None = None) -> None:
    """Time each architecture (training steps at its batch size, forward passes at the inference
    batch size of its input, at the run's precision and torch's thread count) and the decoding of
    the data's images on the plan's device, unless ``cache`` has them; fill in every training's
    seconds and peak memory. Past ``budget_s`` seconds of calibration the rest are left without a
    time ("not calibrated")."""
    import torch

    from mlc_utils.core.inference import Inference
    if not plan.measurable:
        return
    settings = plan.params.inference
    inference = Inference(plan.device, settings.batch_size, settings.num_workers, settings.precision, settings.runtime)
    device, amp = inference.torch_device, inference.autocast_dtype()
    cache = cache or CalibrationCache(None)
    if device.type == "cpu":
        from mlc_utils.core.allocator import tune_glibc
        tune_glibc()   # as run_model does in the run's kernels, so glibc is timed as the run will use it
    machine = {**machine_facts(device), "precision": str(amp or torch.float32)}
    plan.allocator = machine.get("allocator", "")
    images = _sample_images(data_dir) if data_dir is not None else []
    started = time.perf_counter()
    scale = _machine_scale(cache, machine)
    for stage in plan.stages:
        stage.scale = scale
        for t in stage.trainings:
            if t.build is None and t.seconds is not None and not t.scaled:   # a nominal training (TF-IDF)
                t.seconds, t.scaled = t.seconds * scale, True
        for t in stage.trainings:
            if t.build is None or t.seconds is not None:
                continue
            eval_batch = inference.batch_for("images" if t.kind in IMAGE_KINDS else "tokens")
            # the largest pass decides the runtime, as run_model decides it per pass (core.openvino)
            openvino = inference.wants_openvino("images" if t.kind in IMAGE_KINDS else "tokens",
                                                max(t.once_rows, t.eval_rows)) and t.kind != "tfidf"
            keys = {"forward": cache.key(**t.arch, **machine, forward_batch=eval_batch,
                                         **({"runtime": "openvino"} if openvino else {}))}
            if t.kind in TRAINED:
                keys["train"] = cache.key(**t.arch, **machine, train_batch=t.batch_size)
            if t.head_dim:
                keys["head"] = cache.key(**t.arch, **machine, head_batch=t.batch_size)
            if t.kind in IMAGE_KINDS and images:
                keys["decode"] = cache.key(decode=t.data_config, data=str(data_dir), images=images, **machine)
            missing = [what for what, key in keys.items() if cache.get(key) is None]
            if missing:
                if budget_s is not None and time.perf_counter() - started > budget_s:
                    stage.time_note = f"not calibrated (calibration stopped after {budget_s:.0f} s)"
                    continue
                _calibrate(t, missing, keys, cache, device, amp, steps, eval_batch, data_dir, images, openvino)
                if log:
                    log(f"calibrated {t.label} on {device}: " + ", ".join(
                        f"{what} {cache.get(keys[what])['s']:.3f} s" for what in missing))
            found = {what: cache.get(key) for what, key in keys.items()}
            decode = found.get("decode") or ({"s": DECODE_S["train"], "eval_s": DECODE_S["eval"]}
                                            if t.kind in IMAGE_KINDS else {"s": 0.0, "eval_s": 0.0})
            trained = found.get("train") or found.get("head") or {"s": 0.0}
            t.seconds = training_seconds(t, trained["s"], found["forward"]["s"] / eval_batch, decode["s"], decode["eval_s"],
                                         scale)
            if device.type == "cpu" and plan.allocator != "tcmalloc":   # what the kernel's share would save
                t.allocator_saving_s = t.seconds - training_seconds(
                    t, trained["s"] * (1 - trained.get("kernel_share", 0.0)),
                    found["forward"]["s"] / eval_batch * (1 - found["forward"].get("kernel_share", 0.0)),
                    decode["s"], decode["eval_s"], scale)
            t.seconds += found["forward"].get("compile_s", 0.0) * (1 if t.once_rows else t.runs)
            t.runtime = found["forward"].get("runtime", "torch")
            peak = (found.get("train") or {}).get("peak")
            t.peak_bytes, t.peak_measured = (peak, True) if peak else (memory_floor(t), False)
    cache.save()


def _calibrate(t: Training, missing: list[str], keys: dict, cache: CalibrationCache, device, amp, steps: int,
               eval_batch: int, data_dir: Path | None, images: list[str], openvino: bool = False) -> None:
    """Time what ``missing`` names for ``t`` into ``cache``: a training batch (and its peak memory on
    a GPU) and a forward batch of its architecture with random weights (compiled by OpenVINO where
    the run's pass will be: its compile seconds too); the decoding of ``images`` (seconds a training
    image in ``s``, an evaluation image in ``eval_s``)."""
    import torch
    if "decode" in missing:
        cache.put(keys["decode"], {"s": _time_decode(t.data_config, data_dir, images, True),
                                   "eval_s": _time_decode(t.data_config, data_dir, images, False)})
    if not {"train", "forward", "head"} & set(missing):
        return
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, batch_of = t.build()
    if "train" in missing:
        with _KernelShare() as kernel:
            train_s = _time_batches(model, batch_of(t.batch_size, True), True, device, amp, steps)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        cache.put(keys["train"], {"s": train_s, "peak": peak, "kernel_share": kernel.share})
    if "forward" in missing:
        with _KernelShare() as kernel:
            compiled = _time_compiled(model, batch_of(eval_batch), steps) if openvino else None
            timed = compiled or {"s": _time_batches(model, batch_of(eval_batch), False, device, amp, steps)}
        cache.put(keys["forward"], {**timed, "kernel_share": kernel.share})
    if "head" in missing:
        cache.put(keys["head"], {"s": _time_head(model.head, t.head_dim, t.batch_size, device, amp, max(steps, HEAD_STEPS))})
    del model
