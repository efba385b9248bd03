"""The one checkpoint format: a dict tagged ``mlc-checkpoint/1`` with the model's ``spec`` and weights.

Training writes it with its resumable state (optimizer, scheduler, history); a frozen-backbone
model is saved in the same format for prediction (:func:`save_model`). :func:`load_checkpoint`
rebuilds the model from the spec through the registry and refuses a checkpoint of another model
with a message naming what differs.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from mlc_utils.core.device import unwrap
from mlc_utils.core.io import atomic_save

CHECKPOINT_FORMAT = "mlc-checkpoint/1"



def model_identity(model: nn.Module) -> dict:
    """What a checkpoint records about its model (the model's ``spec`` when it has one)."""
    model = unwrap(model)
    spec = getattr(model, "spec", None)
    if isinstance(spec, Mapping):
        return dict(spec)
    return {"kind": "module", "class": f"{type(model).__module__}.{type(model).__qualname__}"}



IDENTITY_KEYS = ("kind", "class", "arch", "head", "num_classes", "model", "fusion", "input_dim")



def describe_identity(identity: Mapping) -> str:
    return ", ".join(f"{k}={identity[k]}" for k in IDENTITY_KEYS if k in identity) or "unknown model"



def check_identity(saved: Mapping, model: nn.Module, path: str | os.PathLike) -> None:
    """Refuse a checkpoint of another model (architecture, head or class count) with a clear message."""
    current = model_identity(model)
    differ = [k for k in IDENTITY_KEYS if k in saved and k in current and saved[k] != current[k]]
    if differ:
        raise CheckpointMismatchError(
            f"checkpoint {path} was saved from a different model ({', '.join(differ)} differ): it holds "
            f"[{describe_identity(saved)}] but this model is [{describe_identity(current)}]")



class CheckpointMismatchError(ValueError):
    """A checkpoint does not belong to the model it is loaded into."""



def inference_state(checkpoint: Mapping) -> dict:
    """The weights to predict with: the EMA copy when the run kept one."""
    return checkpoint.get("ema") or checkpoint["model"]



def read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated copy, a text file, another pickle: torch's messages do not name the file
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                         "the file is truncated or not a torch checkpoint") from None
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an mlc training checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    if "spec" in checkpoint:  # one saved before a rename reads as one saved now
        from mlc_utils.models import current_spec
        checkpoint["spec"] = current_spec(checkpoint["spec"])
    return checkpoint



def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                    checkpoint: dict | None = None) -> tuple[nn.Module, dict]:
    """``(model with the checkpoint's inference weights, checkpoint)``; builds the model from its spec if None.

    ``checkpoint``: the already-read contents of ``path`` (saves reading it twice).
    """
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    if model is None:
        from mlc_utils.models import build_model
        model = build_model(checkpoint["spec"])
    check_identity(checkpoint["spec"], model, path)
    state = inference_state(checkpoint)
    try:
        unwrap(model).load_state_dict(state)
    except RuntimeError:
        raise CheckpointMismatchError(f"checkpoint {path} does not fit this model "
                                      f"[{describe_identity(model_identity(model))}]: "
                                      f"{_state_mismatch(unwrap(model).state_dict(), state)}") from None
    return model, checkpoint



def _state_mismatch(expected: Mapping, saved: Mapping, shown: int = 3) -> str:
    """A short account of why ``saved`` does not load into a module whose state is ``expected``."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [f"{k} {list(saved[k].shape)} in the checkpoint, {list(expected[k].shape)} in the model"
              for k in expected if k in saved and hasattr(saved[k], "shape") and saved[k].shape != expected[k].shape]
    parts = []
    for what, items in (("tensor(s) of another shape", shapes), ("missing key(s)", missing),
                        ("unexpected key(s)", unexpected)):
        if items:
            more = f" and {len(items) - shown} more" if len(items) > shown else ""
            parts.append(f"{len(items)} {what} ({'; '.join(items[:shown])}{more})")
    return ", ".join(parts) or "state dict does not load"



def state_digest(module: nn.Module) -> str:
    """sha1 over a module's state tensors: the identity of its exact weights."""
    digest = hashlib.sha1()
    for name, tensor in unwrap(module).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def make_checkpoint(model: nn.Module, *, params: dict | None = None, epoch: int = -1,
                    ema: Mapping | None = None, **training_state) -> dict:
    """The checkpoint dictionary: format tag, the model's spec and weights, the EMA weights (None
    without EMA), the parameters it was trained with, and whatever training state resumes it."""
    return {"format": CHECKPOINT_FORMAT, "spec": model_identity(model), "epoch": epoch,
            "model": unwrap(model).state_dict(), "ema": ema, "params": params or {}, **training_state}


def save_model(model: nn.Module, path: str | os.PathLike, params: dict | None = None) -> Path:
    """A whole model as an inference checkpoint (for ``predict``), e.g. a frozen backbone and its head."""
    checkpoint = make_checkpoint(model, params=params)
    return atomic_save(path, lambda p: torch.save(checkpoint, p))
