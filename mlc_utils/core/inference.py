"""Every pass of a model over a dataset runs through :func:`run_model`: one device, one precision rule,
one batch-size rule, one loader, one progress line.

Why one function: the study runs models over datasets in many places (cached image features, the
TTA views of predictions, the fusion heads' inputs, caption embeddings, the ablation, the validation
pass of training, ``predict``). When each had its own device default, batch size and precision, one
of them ran the GPU profile's fine-tuned Swin on the CPU for hours. Here the device is a required
argument (the study resolves ``device`` from its params once and passes it down), and what follows
from the device is decided once:

* precision: bf16 autocast on CUDA cards that compute it natively, fp16 on older cards, fp32 on the
  CPU (:func:`mlc_utils.core.device.native_autocast_dtype`); ``precision`` forces one;
* batch size: measured per device and kind of input (:data:`BATCH_SIZES`). On the CPU a small image
  batch keeps each activation tensor under glibc's mmap threshold, so the allocator reuses memory
  instead of mapping and faulting in hundreds of MB per batch (``benchmarks/feature_extraction.py``);
* DataLoader workers and pinned memory for the device, ``torch.inference_mode``, channels_last
  image batches and weights;
* a progress bar at a notebook, periodic lines under ``run`` (:mod:`mlc_utils.core.progress`);
* the runtime: a large fp32 pass over images or captions on the CPU runs under OpenVINO where it is
  installed and its first batch matches torch's (:mod:`mlc_utils.core.openvino`: about 1.35x for
  EfficientNet-Lite0, 2x for MiniLM here); ``runtime`` forces one.

``MLC_INFERENCE_TRACE=<file>`` appends one JSON line per pass (its name, device, precision, batch
size, rows) and, while set, one line for any no-grad forward of a model outside a pass: how a test
proves that every pass of a whole study ran here on the study's device.
"""
from __future__ import annotations

import itertools
import json
import os
import threading
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, TensorDataset

from mlc_utils.core.allocator import tune_glibc
from mlc_utils.core.device import native_autocast_dtype, place_model, resolve_device, to_device, unwrap

#: auto: OpenVINO for fp32 passes over images or captions of at least ``openvino.MIN_ROWS`` rows on the CPU where it is
#: installed and agrees with torch, else torch; torch: always torch; openvino: OpenVINO for every CPU pass
#: it can compile (a warning says when it cannot).
RUNTIMES = ("auto", "torch", "openvino")
PRECISIONS = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: (device type, input kind) -> rows per batch when none is given. Measured on a 2-core EPYC,
#: tf_efficientnet_lite0 at 320 px (benchmarks/README.md, "one inference path"): batch 16 with
#: tcmalloc, batch 8-16 with glibc's allocator tuned; 64 made glibc fault 24,000 pages per image.
BATCH_SIZES = {("cpu", "images"): 16, ("cuda", "images"): 128,
               ("cpu", "tokens"): 64, ("cuda", "tokens"): 512,
               ("cpu", "rows"): 1024, ("cuda", "rows"): 1024}

TRACE_ENV = "MLC_INFERENCE_TRACE"


@dataclass(frozen=True)
class Inference:
    """How passes run: the device, and the batch size, workers, precision and runtime (0 / -1 /
    "auto": chosen for the device). Built once by the study (``ctx.inference``) and passed down."""
    device: str = "auto"
    batch_size: int = 0
    num_workers: int = -1
    precision: str = "auto"
    runtime: str = "auto"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: must be one of {sorted(PRECISIONS)} (got {self.precision!r})")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime: must be one of {list(RUNTIMES)} (got {self.runtime!r})")
        if self.batch_size < 0:
            raise ValueError(f"batch_size: must be >= 0, 0 = chosen for the device (got {self.batch_size})")

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def autocast_dtype(self) -> torch.dtype | None:
        """None: fp32 (no autocast)."""
        if self.precision == "auto":
            return native_autocast_dtype(self.torch_device)
        dtype = PRECISIONS[self.precision]
        return None if dtype is torch.float32 else dtype

    def batch_for(self, kind: str) -> int:
        return self.batch_size or BATCH_SIZES[(self.torch_device.type if self.torch_device.type == "cuda" else "cpu",
                                               kind)]

    def workers_for(self, kind: str) -> int:
        if self.num_workers >= 0:
            return self.num_workers
        if kind != "images":
            return 0
        if self.torch_device.type == "cuda":
            return min(8, os.cpu_count() or 1)
        return 0

    def wants_openvino(self, kind: str, rows: int) -> bool:
        """Whether a pass over ``rows`` rows of ``kind`` should try OpenVINO (fp32 on the CPU only)."""
        if self.runtime == "torch" or self.torch_device.type != "cpu" or self.autocast_dtype() is not None:
            return False
        if self.runtime == "openvino":
            return True
        from mlc_utils.core import openvino
        return kind in ("images", "tokens") and rows >= openvino.MIN_ROWS and openvino.available()


def input_kind(dataset: Dataset) -> str:
    """``images`` (a 3-D tensor or a dict with ``image``), ``tokens`` (``input_ids``), else ``rows``."""
    if len(dataset) == 0:
        return "rows"
    first = dataset[0]
    inputs = first[0] if isinstance(first, (tuple, list)) else first
    if isinstance(inputs, Mapping):
        if "image" in inputs and getattr(inputs["image"], "ndim", 0) == 3:
            return "images"
        return "tokens" if "input_ids" in inputs else "rows"
    return "images" if isinstance(inputs, torch.Tensor) and inputs.ndim == 3 else "rows"


def indexes_batches(dataset: Dataset) -> bool:
    """Whether ``dataset[list_of_indices]`` returns the whole batch (tensors in memory): a
    ``TensorDataset`` with torch's own ``__getitem__`` (a subclass that overrides it may expect one
    index), or a dataset that says so with ``indexes_batches = True``."""
    if getattr(dataset, "indexes_batches", False):
        return True
    return isinstance(dataset, TensorDataset) and type(dataset).__getitem__ is TensorDataset.__getitem__


def make_loader(dataset: Dataset, batch_size: int, sampler=None, *, num_workers: int = 0, collate_fn=None,
                pin_memory: bool = False, generator=None) -> DataLoader:
    """The DataLoader of training and of every pass. Tensors in memory are fetched a batch at a time
    (one indexing call instead of a ``__getitem__`` and a collate per row: measured, most of a small
    head's epoch); the batches and their order are exactly those of the row-by-row loader."""
    if collate_fn is None and indexes_batches(dataset):
        batches = BatchSampler(sampler if sampler is not None else SequentialSampler(dataset), batch_size, drop_last=False)
        return DataLoader(dataset, batch_size=None, sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                          generator=generator, persistent_workers=False)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=pin_memory, generator=generator, persistent_workers=False)


_ACTIVE = threading.local()


def in_pass() -> bool:
    return getattr(_ACTIVE, "depth", 0) > 0


def _trace(record: dict) -> None:
    path = os.environ.get(TRACE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:  # one short line per write: appends don't interleave
            out.write(json.dumps(record) + "\n")


def _outside_pass_hook(module, args):
    if not torch.is_grad_enabled() and not in_pass() and getattr(module, "spec", None) is not None:
        _trace({"outside": type(module).__name__, "pid": os.getpid()})


_HOOK = []


def install_trace_hook() -> None:
    """Record forwards of the project's models (modules with a ``spec``) that run without gradients
    outside :func:`run_model` (a pass that escaped the one path), when ``MLC_INFERENCE_TRACE`` is set."""
    if os.environ.get(TRACE_ENV) and not _HOOK:
        from torch.nn.modules.module import register_module_forward_pre_hook
        _HOOK.append(register_module_forward_pre_hook(_outside_pass_hook))  # kept in _HOOK to be removable


def logits(model: nn.Module, inputs) -> torch.Tensor:
    return model(inputs)


def probabilities(model: nn.Module, inputs) -> torch.Tensor:
    return torch.sigmoid(model(inputs).float())


def run_model(model: nn.Module, dataset: Dataset, inference: Inference, *, name: str,
              output: Callable[[nn.Module, object], torch.Tensor] = probabilities, collate_fn=None,
              progress: bool = True, with_targets: bool = False, sampler=None):
    """``output(model, batch)`` for every row of ``dataset`` in order, as float32 ``(n, ...)``.

    ``name`` says what runs (the model and the pass, e.g. ``"lite0 features, center view"``): it
    names the progress line and the trace. With ``with_targets`` also returns the datasets' targets;
    ``sampler`` visits a subset (a rank's shard under torchrun). The model is left in eval mode on
    ``inference.device``.
    """
    if not isinstance(inference, Inference):
        raise TypeError(f"inference: expected an Inference (the study's device settings), got {type(inference).__name__}")
    install_trace_hook()
    tune_glibc()
    device = inference.torch_device
    kind = input_kind(dataset)
    batch_size = inference.batch_for(kind)
    workers = inference.workers_for(kind)
    dtype = inference.autocast_dtype()
    model = unwrap(model)
    model = place_model(model, device) if kind == "images" else model.to(device)
    model.eval()
    loader = make_loader(dataset, batch_size, sampler, num_workers=workers, collate_fn=collate_fn,
                         pin_memory=device.type == "cuda")
    batches = iter(loader)
    first = next(batches, None)
    compiled = None
    if first is not None and inference.wants_openvino(kind, len(dataset)):
        from mlc_utils.core import openvino
        compiled, why = openvino.compile_pass(model, output, first[0])
        if compiled is None:
            openvino.note_failure(name, why)
    _trace({"pass": name, "asked": inference.device, "device": str(device), "precision": str(dtype or torch.float32).replace("torch.", ""),
            "batch_size": batch_size, "workers": workers, "rows": len(dataset), "pid": os.getpid(),
            "runtime": "openvino" if compiled else "torch"})
    from mlc_utils.core.progress import progress as progress_bar
    chunks, targets = [], []
    _ACTIVE.depth = getattr(_ACTIVE, "depth", 0) + 1
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for inputs, target in progress_bar(itertools.chain([first] if first is not None else [], batches),
                                               f"{name} (batches)", total=len(loader), leave=False, disable=not progress):
                out = compiled(inputs) if compiled else output(model, to_device(inputs, device))
                chunks.append(out.float().cpu().numpy())
                if with_targets:
                    targets.append(np.asarray(target, dtype=np.float32))
    finally:
        _ACTIVE.depth -= 1
    out = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    if with_targets:
        return out, (np.concatenate(targets) if targets else np.zeros((0, 0), np.float32))
    return out


install_trace_hook()  # at import, so a pass that escapes run_model is seen even before the first pass
