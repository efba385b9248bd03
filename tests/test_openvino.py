"""The CPU's OpenVINO runtime (core.openvino): the same numbers as torch or not used at all."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from mlc_utils.core import allocator, inference, openvino
from mlc_utils.core.inference import Inference, run_model

pytestmark = pytest.mark.skipif(not openvino.available(), reason="openvino is not installed (requirements.txt has it)")


class TinyConv(nn.Module):
    """A small image model with an ``embed``, as the feature pass runs it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 4, 3, stride=2))
        self.spec = {"kind": "test"}

    def embed(self, x):
        return nn.functional.adaptive_avg_pool2d(self.conv(x), 2).flatten(1)

    def forward(self, x):
        return self.embed(x).sum(dim=1, keepdim=True)


class Images(Dataset):
    def __init__(self, n: int, size: int = 24):
        self.x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], torch.zeros(1)


def _embedding(model, x):
    return model.embed(x)


@pytest.fixture
def trace(tmp_path, monkeypatch):
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv(inference.TRACE_ENV, str(path))
    return lambda: [json.loads(line) for line in path.read_text().splitlines()]


def test_a_pass_on_openvino_gives_torch_numbers_in_order_with_a_smaller_last_batch(trace):
    torch.manual_seed(0)
    model, data = TinyConv().eval(), Images(37)
    on_torch = run_model(model, data, Inference("cpu", batch_size=8, runtime="torch"), name="t", output=_embedding,
                         progress=False)
    on_openvino = run_model(model, data, Inference("cpu", batch_size=8, runtime="openvino"), name="o",
                            output=_embedding, progress=False)
    assert on_openvino.shape == on_torch.shape == (37, 16)
    assert np.abs(on_openvino - on_torch).max() <= openvino.TOLERANCE * np.abs(on_torch).max()
    assert [r["runtime"] for r in trace()] == ["torch", "openvino"]


def test_a_model_is_converted_once_per_process_and_again_when_its_weights_change(monkeypatch):
    import openvino as ov
    converted = []
    real = ov.convert_model
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: converted.append(1) or real(*a, **k))
    model, data = TinyConv().eval(), Images(20)
    settings = Inference("cpu", batch_size=8, runtime="openvino")
    first = run_model(model, data, settings, name="a", output=_embedding, progress=False)
    again = run_model(model, data, settings, name="b", output=_embedding, progress=False)
    assert len(converted) == 1 and np.array_equal(first, again)
    with torch.no_grad():
        model.conv[0].weight.mul_(2.0)                        # a new checkpoint: a new pass
    changed = run_model(model, data, settings, name="c", output=_embedding, progress=False)
    assert len(converted) == 2 and not np.allclose(changed, first)


def test_auto_keeps_small_passes_on_torch_and_takes_openvino_for_large_image_passes(monkeypatch):
    assert not Inference("cpu").wants_openvino("images", openvino.MIN_ROWS - 1)
    assert Inference("cpu").wants_openvino("images", openvino.MIN_ROWS)
    assert Inference("cpu").wants_openvino("tokens", openvino.MIN_ROWS)               # captions too
    assert not Inference("cpu").wants_openvino("rows", 10 * openvino.MIN_ROWS)       # heads on features stay on torch
    assert not Inference("cpu", runtime="torch").wants_openvino("images", 10 * openvino.MIN_ROWS)
    assert not Inference("cpu", precision="bf16").wants_openvino("images", 10 * openvino.MIN_ROWS)  # fp32 only
    monkeypatch.setattr(openvino, "available", lambda: False)
    assert not Inference("cpu").wants_openvino("images", 10 * openvino.MIN_ROWS)


def test_a_pass_openvino_cannot_match_stays_on_torch_and_says_why_once(trace, monkeypatch):
    monkeypatch.setattr(openvino, "TOLERANCE", -1.0)           # no compiled pass can be this close
    monkeypatch.setattr(openvino, "_SEEN_FAILURES", set())
    model, data = TinyConv().eval(), Images(20)
    with pytest.warns(RuntimeWarning, match="runs on torch, not OpenVINO: OpenVINO's outputs differ"):
        out = run_model(model, data, Inference("cpu", batch_size=8, runtime="openvino"), name="f", output=_embedding,
                        progress=False)
    with torch.no_grad():
        np.testing.assert_array_equal(out, model.embed(data.x).numpy())
    assert trace()[0]["runtime"] == "torch"


def test_a_wrong_runtime_names_the_field():
    with pytest.raises(ValueError, match="runtime: must be one of"):
        Inference("cpu", runtime="onnx")


@pytest.mark.skipif(not allocator.tcmalloc_path(), reason="libtcmalloc-minimal4 is not installed")
def test_openvino_runs_in_a_process_on_tcmalloc():
    """Without the oneTBB setting core.openvino makes, its plugin aborts under a preloaded tcmalloc
    ("free(): invalid pointer"); every process the project starts has tcmalloc preloaded."""
    code = ("import torch; from mlc_utils.core import openvino; from mlc_utils.core.allocator import loaded_allocator; "
            "m = torch.nn.Conv2d(3, 4, 3).eval(); x = torch.randn(2, 3, 8, 8); "
            "c, why = openvino.compile_pass(m, lambda m, x: m(x), x); print(loaded_allocator(), c is not None, why)")
    env = {**{k: v for k, v in os.environ.items() if k != "TBB_ENABLE_SANITIZERS"},
           "LD_PRELOAD": allocator.tcmalloc_path()}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[:2] == ["tcmalloc", "True"]


def test_caption_batches_of_every_length_run_on_openvino_with_torch_numbers(trace):
    from mlc_utils.models.caption import create_caption_model, embed_captions
    torch.manual_seed(0)
    model = create_caption_model(pretrained=False, num_classes=5).eval()
    captions = [" ".join(["a dog"] * (1 + i % 9)) + f" number {i}" for i in range(40)]   # lengths 4 to 20 tokens
    on_torch = embed_captions(model, captions, Inference("cpu", batch_size=8, runtime="torch"), progress=False)
    on_openvino = embed_captions(model, captions, Inference("cpu", batch_size=8, runtime="openvino"), progress=False)
    assert np.abs(on_openvino - on_torch).max() <= openvino.TOLERANCE * np.abs(on_torch).max()
    assert [r["runtime"] for r in trace()] == ["torch", "openvino"]
