"""Checks before any stage, on the CPU with the device facts patched: the GPUs a profile asks for,
bf16 on cards without it, the hub through the user's proxy, and the disk the run writes."""
from __future__ import annotations

import http.server
import threading
from pathlib import Path

import torch

from mlc_utils.study.params import load_params
from mlc_utils.study.preflight import device_problems

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"


def cuda(monkeypatch, count: int, bf16: bool = True, warning: str = ""):
    """This machine as one with ``count`` CUDA devices (0: CUDA unusable, with torch's ``warning``)."""
    import warnings

    def available():
        if warning:
            warnings.warn(warning)
        return count > 0
    monkeypatch.setattr(torch.cuda, "is_available", available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")


def gpu_profile(**overrides):
    return load_params(PARAMS_DIR / "comp5329-gpu.yaml", overrides)


def test_a_gpu_profile_without_usable_cuda_is_refused_naming_both_keys(monkeypatch):
    cuda(monkeypatch, 0, warning="CUDA initialization: The NVIDIA driver on your system is too old (found version 11040)")
    params = gpu_profile()
    [problem] = device_problems(params, params.stages)
    assert problem.startswith("image.gpus: 2 but no CUDA device is usable here")
    assert "driver on your system is too old" in problem and "device: cpu" in problem and "\n" not in problem
    assert device_problems(gpu_profile(device="cpu"), params.stages) == []   # the CPU, on purpose
    [problem] = device_problems(gpu_profile(device="cuda"), params.stages)
    assert problem.startswith("device: 'cuda' but no CUDA device is usable here")


def test_more_gpus_than_visible_is_refused_with_both_numbers(monkeypatch):
    cuda(monkeypatch, 1)
    params = gpu_profile()
    assert device_problems(params, params.stages) == ["image.gpus: 2 but 1 CUDA device(s) are visible; set "
                                                      "image.gpus: 1 (or make the others visible with CUDA_VISIBLE_DEVICES)"]
    assert device_problems(params, ["eda", "split"]) == []
    assert device_problems(gpu_profile(device="cuda:1", **{"image.gpus": 1}), params.stages)[0].startswith(
        "device: 'cuda:1' but 1 CUDA device(s) are visible")
    cuda(monkeypatch, 2)
    assert device_problems(params, params.stages) == []


def test_bf16_on_a_card_without_it_is_said_and_trains_in_fp16_with_a_scaler(monkeypatch, capsys):
    from mlc_utils.train.config import TrainConfig
    from mlc_utils.train.loop import native_precision
    cuda(monkeypatch, 2, bf16=False)
    notes = []
    params = gpu_profile()
    assert device_problems(params, params.stages, notes.append) == []
    assert len(notes) == 1 and "Tesla T4 has no native bf16" in notes[0] and "GradScaler" in notes[0]
    cfg = TrainConfig(amp=True, amp_dtype="bfloat16")
    card = torch.device("cuda", 0)
    assert native_precision(cfg, card).amp_dtype == "float16"
    assert "not native on Tesla T4" in capsys.readouterr().out
    assert native_precision(cfg, torch.device("cpu")) is cfg
    cuda(monkeypatch, 2, bf16=True)
    assert native_precision(cfg, card) is cfg


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy that answers every request itself, recording what it was asked for."""
    seen: list = []

    def do_HEAD(self):
        self.seen.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_hub_probe_goes_through_the_users_proxy(monkeypatch):
    """On a proxied network (no direct route) the hub is reachable the way downloads reach it."""
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    from mlc_utils.models.hub import hub_unreachable_reason
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://hub.invalid")   # resolvable only by the proxy
    close_session()
    try:
        assert hub_unreachable_reason(timeout=5) is None
        assert _Proxy.seen and _Proxy.seen[-1].startswith("http://hub.invalid")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert hub_unreachable_reason() == "HF_HUB_OFFLINE is set"
    finally:
        close_session()
        server.shutdown()


def test_a_run_that_would_fill_the_disk_is_refused(monkeypatch, tmp_path):
    """Three trained Swins write about 14 GB of checkpoints (last.pt and best.pt, each with AdamW's
    state) and the hub cache 2.4 GB more: 10 GB free is refused at once, naming what to change."""
    import shutil
    from collections import namedtuple

    from mlc_utils.models import weights as weights_module
    from mlc_utils.study.preflight import disk_problems
    usage = namedtuple("usage", "total used free")
    free = [10e9]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1e12, 0, free[0]))
    monkeypatch.setattr(weights_module, "_hub_cached_file", lambda arch: None)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    params = gpu_profile()
    [problem] = disk_problems(params, params.stages, tmp_path)
    assert problem.startswith("run: 'comp5329-gpu' writes about 16.") and "has 10.0 GB free" in problem
    assert "split.folds" in problem and "\n" not in problem
    free[0] = 20e9
    assert disk_problems(params, params.stages, tmp_path) == []
    assert disk_problems(params, ["eda", "split"], tmp_path) == []
