"""scripts/gpu_study_check.sh on the CPU (--cpu-smoke): the GPU check's logic end to end, tiny models.

Every stage through papermill with the image stage through torchrun (one process, gloo), local random
weights as ``pretrained:`` paths, a saved caption encoder beside MiniLM's tokenizer, the throughput
children, the memory table and the projection. It measures nothing; the CUDA run is the real check.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from conftest import PROJECT, REAL_DATA


@pytest.mark.slow
def test_gpu_study_check_runs_end_to_end_on_the_cpu(tmp_path):
    run = f"gpu-study-smoke-{uuid.uuid4().hex[:8]}"
    args = (f"--cpu-smoke --train-rows 24 --test-rows 8 --epochs 1 --bench-steps 2 --bench-warmup 1 "
            f"--run {run} --work {tmp_path / 'work'}")
    trace = tmp_path / "inference-trace.jsonl"  # every model pass of every process (core.inference)
    env = {**os.environ, "PYTHON": sys.executable, "GPU_STUDY_ARGS": args, "GPU_STUDY_TIMEOUT": "1500",
           "GPU_STUDY_DATA": str(REAL_DATA), "OMP_NUM_THREADS": "1", "MLC_INFERENCE_TRACE": str(trace)}
    try:
        proc = subprocess.run(["bash", str(PROJECT / "scripts" / "gpu_study_check.sh")], env=env, cwd=PROJECT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1600)
        out = proc.stdout
        assert proc.returncode == 0, out[-6000:]
        for heading in ("== stage times", "== peak GPU memory", "== training images/s", "== projection",
                        "gpu_study: OK (cpu)"):
            assert heading in out, heading
        for stage in ("eda", "split", "image", "text", "fusion", "ablation", "ensemble"):
            assert f"  {stage:<10} not run" not in out
        assert "timm reference" in out and "ratio" in out
        image = PROJECT / "runs" / run / "image" / "swinv2-large-256"
        assert (image / "config.json").is_file() and (image / "ranks.json").is_file()  # went through torchrun
        # every pass of a model over a dataset went through the one inference path on the study's
        # device (the run sets device: cpu; a helper's own default would show as another device)
        records = [json.loads(line) for line in trace.read_text().splitlines()]
        passes = [r for r in records if "pass" in r]
        assert not [r for r in records if "outside" in r], [r for r in records if "outside" in r][:5]
        assert passes and {r["asked"] for r in passes} == {"cpu"}, {(r["pass"], r["asked"]) for r in passes}
        names = " | ".join(r["pass"] for r in passes)
        for what in ("validate", "predictions, center view", "logits, train rows", "caption"):
            assert what in names, names
    finally:
        shutil.rmtree(PROJECT / "runs" / run, ignore_errors=True)
        shutil.rmtree(PROJECT / "reports" / run, ignore_errors=True)


def test_projection_scales_the_measured_rate_to_the_full_run():
    sys.path.insert(0, str(PROJECT / "benchmarks"))
    import gpu_study
    hours = gpu_study.projection({"m": 100.0}, epochs=20, val_fraction=0.2, gpus=2)
    assert hours["m"] == pytest.approx(20 * (24_000 + 6_000 / 3) / 200 / 3600)
