"""The one inference path (core.inference): device, precision, batch size, order, the trace; the allocator."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mlc_utils.core import allocator, inference
from mlc_utils.core.inference import BATCH_SIZES, Inference, input_kind, run_model
from mlc_utils.study.params import ParamError, load_params


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.spec = {"kind": "test"}
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(len(x))
        return self.linear(x)


@pytest.fixture
def trace(tmp_path, monkeypatch):
    """MLC_INFERENCE_TRACE set and the hook installed for this test only; returns a reader of the lines."""
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv(inference.TRACE_ENV, str(path))
    inference.install_trace_hook()
    yield lambda: [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    while inference._HOOK:
        inference._HOOK.pop().remove()


def test_run_model_keeps_order_uses_the_device_batch_and_traces_the_pass(trace):
    torch.manual_seed(0)
    model, x = Scaled(), torch.randn(10, 3)
    dataset = TensorDataset(x, torch.zeros(10, 2))
    out = run_model(model, dataset, Inference("cpu", batch_size=4), name="scaled logits",
                    output=inference.logits, progress=False)
    with torch.no_grad():
        np.testing.assert_allclose(out, model.linear(x).numpy(), atol=1e-6)
    assert model.seen == [4, 4, 2] and not model.training
    [record] = trace()
    assert record["pass"] == "scaled logits" and record["asked"] == "cpu" and record["device"] == "cpu"
    assert record["batch_size"] == 4 and record["rows"] == 10 and record["precision"] == "float32"
    # batch_size 0: the device's own choice for rows
    model.seen.clear()
    run_model(model, TensorDataset(torch.randn(3000, 3), torch.zeros(3000, 2)), Inference("cpu"), name="rows",
              progress=False)
    assert model.seen[0] == BATCH_SIZES[("cpu", "rows")]


def test_a_no_grad_forward_outside_the_path_is_traced(trace):
    model = Scaled()
    with torch.no_grad():
        model(torch.randn(2, 3))  # what the fusion stage did with a frozen image member's head
    run_model(model, TensorDataset(torch.randn(2, 3), torch.zeros(2, 2)), Inference("cpu"), name="ok", progress=False)
    model(torch.randn(2, 3)).sum().backward()  # a training step: gradients on, not a pass
    records = trace()
    assert [r.get("outside") for r in records] == ["Scaled", None]
    assert records[1]["pass"] == "ok"


def test_precision_follows_what_the_card_does_natively(monkeypatch):
    assert Inference("cpu").autocast_dtype() is None
    assert Inference("cpu", precision="bf16").autocast_dtype() is torch.bfloat16
    monkeypatch.setattr(inference, "resolve_device", lambda name: torch.device("cuda", 0))
    from mlc_utils.core import device as device_module
    native = {"bf16": True}
    monkeypatch.setattr(device_module.torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native["bf16"] or including_emulation)
    assert Inference("auto").autocast_dtype() is torch.bfloat16      # an A100, H100, RTX 30xx
    native["bf16"] = False
    assert Inference("auto").autocast_dtype() is torch.float16       # a T4 or V100: emulated bf16 is slow
    assert Inference("auto", precision="fp32").autocast_dtype() is None
    assert Inference("auto").batch_for("images") == BATCH_SIZES[("cuda", "images")]


def test_tensors_in_memory_are_fetched_a_batch_at_a_time_with_the_same_batches():
    x, y = torch.arange(10.0).reshape(10, 1), torch.zeros(10, 1)
    batches = [b[0].flatten().tolist() for b in inference.make_loader(TensorDataset(x, y), 4)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert inference.indexes_batches(TensorDataset(x, y))

    class OneByOne(TensorDataset):  # overrides __getitem__: may expect one index, so row by row
        calls = 0

        def __getitem__(self, index):
            OneByOne.calls += 1
            return super().__getitem__(index)
    assert not inference.indexes_batches(OneByOne(x, y))
    assert [b[0].flatten().tolist() for b in inference.make_loader(OneByOne(x, y), 4)] == batches
    assert OneByOne.calls == 10


def test_input_kinds():
    images = TensorDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2, 1))
    rows = TensorDataset(torch.zeros(2, 5), torch.zeros(2, 1))
    assert input_kind(images) == "images" and input_kind(rows) == "rows"

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"input_ids": torch.zeros(4, dtype=torch.long)}, torch.zeros(1)
    assert input_kind(Tokens()) == "tokens"


def test_bad_inference_settings_name_the_field():
    with pytest.raises(ValueError, match="precision"):
        Inference("cpu", precision="int8")
    with pytest.raises(TypeError, match="inference: expected an Inference"):
        run_model(Scaled(), TensorDataset(torch.zeros(1, 3), torch.zeros(1, 2)), "cpu", name="x")


def test_the_study_has_one_device(tmp_path):
    params = load_params(None, {"device": "cpu", "stages": ["eda"]})
    assert params.device == "cpu" and params.training_defaults()["device"] == "cpu"
    with pytest.raises(ParamError, match="device: must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        load_params(None, {"device": "gpu", "stages": ["eda"]})
    with pytest.raises(ParamError, match=r"image\.train\.device: the study has one device"):
        load_params(None, {"stages": ["eda"], "image": {"train": {"device": "cpu"}}})
    with pytest.raises(ParamError, match=r"inference.*batch_size: must be >= 0"):
        load_params(None, {"stages": ["eda"], "inference": {"batch_size": -2}})


def test_tcmalloc_is_preloaded_for_child_processes_when_installed(monkeypatch):
    monkeypatch.delenv("MLC_ALLOCATOR", raising=False)
    monkeypatch.setattr(allocator, "tcmalloc_path", lambda: "/lib/libtcmalloc_minimal.so.4")
    env = allocator.allocator_env({"LD_PRELOAD": "/lib/other.so"})
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4 /lib/other.so"
    assert allocator.allocator_env(env) == env                                 # not twice
    assert "LD_PRELOAD" not in allocator.allocator_env({"MLC_ALLOCATOR": "system"})
    monkeypatch.setattr(allocator, "tcmalloc_path", lambda: "")
    assert "LD_PRELOAD" not in allocator.allocator_env({})                     # not installed: nothing to do


def test_the_command_line_restarts_itself_on_tcmalloc_once(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: calls.append((argv, env)))
    monkeypatch.setattr(allocator, "tcmalloc_path", lambda: "/lib/libtcmalloc_minimal.so.4")
    monkeypatch.setattr(allocator, "loaded_allocator", lambda: "glibc")
    for name in ("MLC_ALLOCATOR", "MLC_ALLOCATOR_RESTARTED", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    allocator.restart_on_tcmalloc(["/usr/bin/python3", "-m", "mlc_utils", "plan"])
    (argv, env), = calls
    assert argv == ["/usr/bin/python3", "-m", "mlc_utils", "plan"]
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4" and env["MLC_ALLOCATOR_RESTARTED"] == "1"
    monkeypatch.setenv("MLC_ALLOCATOR_RESTARTED", "1")          # the restarted process: no second restart
    allocator.restart_on_tcmalloc(["python3"])
    monkeypatch.delenv("MLC_ALLOCATOR_RESTARTED")
    monkeypatch.setenv("MLC_ALLOCATOR", "system")               # the user's choice
    allocator.restart_on_tcmalloc(["python3"])
    assert len(calls) == 1


@pytest.mark.skipif(not allocator.tcmalloc_path(), reason="libtcmalloc-minimal4 is not installed (make setup installs it as root)")
def test_a_process_restarted_on_tcmalloc_runs_on_it():
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MLC_ALLOCATOR", "MLC_ALLOCATOR_RESTARTED")}
    child = "from mlc_utils.core.allocator import loaded_allocator; print(loaded_allocator())"
    code = ("import sys; from mlc_utils.core.allocator import restart_on_tcmalloc; "
            f"restart_on_tcmalloc([sys.executable, '-c', {child!r}]); print('not restarted')")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["tcmalloc"]

