"""OpenVINO as the CPU's runtime for large fp32 image passes: the same numbers as torch, sooner.

Measured on the project's 2-core EPYC (``benchmarks/feature_extraction.py``), EfficientNet-Lite0 at
320 px runs about 1.35x as many images a second under OpenVINO's CPU plugin in f32 as under torch,
with features equal to a few millionths of their largest value. :func:`compile_pass` converts a
model's pass (``output(model, batch)``) once, then checks it: the compiled pass is used only if its
first batch matches torch's to :data:`TOLERANCE`, so features computed by either runtime may share a
cache. Anything that fails (OpenVINO missing, a layer it cannot convert, a mismatch) returns None
with the reason, and the caller stays on torch. A compiled pass is kept for the process, keyed by the
model's weights, the pass and the input's shape: the study runs the same backbone over the training,
validation and test rows of every fold, and converting takes seconds each time.

Why ``TBB_ENABLE_SANITIZERS``: OpenVINO's threading library (oneTBB) loads its NUMA helper with
``RTLD_DEEPBIND``, which binds that helper's ``free`` to glibc's while the project's processes
allocate with a preloaded tcmalloc (``core.allocator``): the process aborts with "free(): invalid
pointer" when the plugin starts (upstream openvinotoolkit/openvino#29025, uxlfoundation/oneTBB#1645).
oneTBB skips ``RTLD_DEEPBIND`` when that variable is set, and nothing else changes.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from mlc_utils.core.allocator import TCMALLOC_COMPANIONS
from mlc_utils.core.progress import quiet_loggers

TOLERANCE = 1e-4        # largest difference from torch, as a share of torch's largest absolute output
MIN_ROWS = 2000         # converting takes seconds: smaller passes stay on torch
# before oneTBB starts its threads (the first compile) in this process, whoever imports openvino: see above
os.environ.update({k: v for k, v in TCMALLOC_COMPANIONS.items() if k not in os.environ})
_SEEN_FAILURES: set[str] = set()
_COMPILED: dict[tuple, "CompiledPass"] = {}   # the passes compiled in this process (a few: they hold their weights)
KEEP = 4


def available() -> bool:
    try:
        _import()
    except ImportError:
        return False
    return True


def _import():
    import openvino
    return openvino


class _Pass(nn.Module):
    """``output(model, batch)`` as a module, which is what the converter traces: an image batch is one
    tensor, a caption batch its named tensors (``input_ids``, ``attention_mask``)."""

    def __init__(self, model: nn.Module, output: Callable, names: tuple[str, ...] = ()):
        super().__init__()
        self.model, self.output, self.names = model, output, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.output(self.model, dict(zip(self.names, inputs)) if self.names else inputs[0])


def _inputs(batch) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    """(names, tensors) of a batch: () and the tensor for an image batch, the keys and values of a dict."""
    if isinstance(batch, Mapping):
        return tuple(batch), tuple(batch[name].detach().cpu().contiguous() for name in batch)
    return (), (batch.detach().cpu().float().contiguous(),)


class CompiledPass:
    """A model's pass compiled for the CPU in f32; called with a batch (any batch size, any caption
    length) like the torch pass."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def __call__(self, batch) -> torch.Tensor:
        _, tensors = _inputs(batch)
        result = self.request.infer({n: tensor.numpy() for n, tensor in enumerate(tensors)})
        return torch.from_numpy(np.array(next(iter(result.values())), copy=True))


def compile_pass(model: nn.Module, output: Callable, example, threads: int | None = None
                 ) -> tuple[CompiledPass | None, str]:
    """(the compiled pass, "") or (None, why not). ``example`` is the pass's first batch (an image
    tensor, or a caption batch's dict of tensors): the pass is converted from it, or taken from this
    process's earlier passes, and used only if its outputs on it match torch's (:data:`TOLERANCE`)."""
    names, tensors = _inputs(example)
    if not tensors or not all(isinstance(x, torch.Tensor) for x in tensors):
        return None, "OpenVINO runs batches of tensors only"
    try:
        ov = _import()
    except ImportError:
        return None, "openvino is not installed"
    module = _Pass(model, output, names).eval()
    threads = int(threads or torch.get_num_threads())
    key = (_weights_digest(model), getattr(output, "__qualname__", repr(output)), names,
           tuple(tensors[0].shape[1:]) if not names else (), threads)
    with torch.inference_mode():
        reference = module(*tensors).float().numpy()
    compiled = _COMPILED.pop(key, None)
    if compiled is None or _gap(compiled, tensors, reference) > TOLERANCE:
        try:
            with warnings.catch_warnings(), quiet_loggers("transformers"):
                warnings.simplefilter("ignore")          # the converter's tracing warnings say nothing to the user
                converted = ov.convert_model(module, example_input=tensors if names else tensors[0])
            config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
            compiled = CompiledPass(ov.Core().compile_model(converted, "CPU", config))
            gap = _gap(compiled, tensors, reference)
        except Exception as err:  # noqa: BLE001 - any converter or plugin failure leaves the pass on torch
            first = str(err).splitlines()[0][:200] if str(err) else ""
            return None, f"OpenVINO could not compile it ({type(err).__name__}: {first})"
        if not gap <= TOLERANCE:
            return None, f"OpenVINO's outputs differ from torch's by {gap:.1e} of their largest value (tolerance {TOLERANCE:.0e})"
    while len(_COMPILED) >= KEEP:
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = compiled
    return compiled, ""


def _gap(compiled: CompiledPass, tensors, reference: np.ndarray) -> float:
    """The largest difference from torch's outputs, as a share of their largest absolute value."""
    got = compiled(dict(enumerate(tensors)) if len(tensors) > 1 else tensors[0]).numpy()
    if got.shape != reference.shape:
        return float("inf")
    return float(np.abs(got - reference).max()) / (float(np.abs(reference).max()) or 1.0)


def _weights_digest(model: nn.Module) -> str:
    """What the compiled pass was traced with: every parameter and buffer (a new checkpoint is another pass)."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def note_failure(name: str, why: str) -> None:
    """Say once per kind of failure that a pass stays on torch (a warning, not an error)."""
    if why not in _SEEN_FAILURES:
        _SEEN_FAILURES.add(why)
        warnings.warn(f"{name}: runs on torch, not OpenVINO: {why}", RuntimeWarning, stacklevel=3)
