"""scripts/gpu_study_check.sh on the CPU (--cpu-smoke): the GPU check's logic end to end, tiny models.

Every stage through papermill with the image stage through torchrun (two processes, gloo: the loss
check's all-reduce, the validation gather and the ranks' agreement run as on two GPUs, and both
ranks leave the group with its threads joined: tests/test_ddp.py's gloo-thread test), local random
weights as ``pretrained:`` paths, a saved caption encoder beside MiniLM's tokenizer, the plan of the
same run beside each stage's time, the ranks.json report, the throughput children, the memory table
against the card and the projection. It measures nothing; the CUDA run is the real check.
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
    args = (f"--cpu-smoke --gpus 2 --train-rows 24 --test-rows 8 --epochs 1 --bench-steps 2 --bench-warmup 1 "
            f"--run {run} --work {tmp_path / 'work'}")
    trace = tmp_path / "inference-trace.jsonl"  # every model pass of every process (core.inference)
    env = {**os.environ, "PYTHON": sys.executable, "GPU_STUDY_ARGS": args, "GPU_STUDY_TIMEOUT": "1500",
           "GPU_STUDY_DATA": str(REAL_DATA), "OMP_NUM_THREADS": "1", "MLC_INFERENCE_TRACE": str(trace)}
    try:
        proc = subprocess.run(["bash", str(PROJECT / "scripts" / "gpu_study_check.sh")], env=env, cwd=PROJECT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1600)
        out = proc.stdout
        assert proc.returncode == 0, out[-6000:]
        for heading in ("== the plan of this run", "== stage times", "== rank agreement", "== peak GPU memory",
                        "== training images/s", "== projection", "gpu_study: OK (cpu)"):
            assert heading in out, heading
        assert "torchrun with 2 process(es), gloo (image.gpus=2)" in out
        assert "terminate called" not in out and "still referenced after destroy_process_group" not in out
        for stage in ("eda", "split", "image", "caption", "fusion", "ablation", "ensemble"):
            assert f"  {stage:<10} not run" not in out
        # each stage's measured time beside the plan's estimate (calibrated on the CPU) and their ratio
        assert "plan/measured" in out
        table = out.split("== stage times", 1)[1].split("\n== ", 1)[0]
        rows = {line.split()[0]: line.split() for line in table.splitlines() if line.startswith("  ")}
        for stage in ("image", "caption", "total"):
            assert stage in rows and len(rows[stage]) >= 4 and "n/a" not in rows[stage][:4], rows.get(stage)
            float(rows[stage][2]), float(rows[stage][3])
        # the card: the paper's RTX A4000 by default
        assert "against the card's 16 GiB" in out and "RTX A4000" in out
        assert "timm reference" in out and "ratio" in out
        if "gpu_study: WARNING" in out:  # 2 steps on a CPU: either side of 1.0; a warning, never a failure
            assert "over only 2 timed steps after 1 warm-up: not a failure" in out
        for label in ("swin-large-224", "swinv2-large-256"):
            image = PROJECT / "runs" / run / "image" / label
            assert (image / "config.json").is_file() and (image / "ranks.json").is_file()  # went through torchrun
            ranks = json.loads((image / "ranks.json").read_text())
            assert ranks["world_size"] == 2 and ranks["agree"] and len(ranks["weights_sha1"]) == 2, ranks
            assert json.loads((image / "metrics.json").read_text())["world_size"] == 2
            assert f"image/{label}" in out
        assert "world size 2, 2 digest(s), ranks agree" in out
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


def _gpu_study():
    sys.path.insert(0, str(PROJECT / "benchmarks"))
    import gpu_study
    return gpu_study


def test_stage_table_puts_the_plan_beside_each_measured_time():
    lines, failures = _gpu_study().stage_table({"eda": 10.0, "image": 100.0, "caption": None},
                                               {"eda": 20.0, "image": None, "caption": 5.0})
    assert lines[0].split() == ["stage", "measured", "plan", "plan/measured"]
    assert lines[1].split() == ["eda", "10.0", "20.0", "2.00"]
    assert lines[2].split() == ["image", "100.0", "n/a", "n/a"]          # the plan has no time
    assert lines[3].split()[:2] == ["caption", "not"] and lines[3].startswith("  caption    not run")
    assert lines[4].split()[:4] == ["total", "10.0", "20.0", "2.00"]     # stages with both times
    assert failures == ["stage caption did not finish"]


def test_memory_table_checks_each_peak_against_the_card():
    lines, failures = _gpu_study().memory_table({"a": 8 * 1024.0, "b": 17 * 1024.0, "c": None}, 16.0)
    assert "8.0 GiB of 16 GiB  fits (8.0 GiB to spare)" in lines[0]
    assert "17.0 GiB of 16 GiB  TOO LARGE" in lines[1] and "n/a (cpu)" in lines[2]
    assert failures == ["b peaks at 17.0 GiB, above the card's 16 GiB"]
    assert _gpu_study().CARD_GIB == 16.0


def test_a_slower_fit_over_few_steps_is_a_warning_with_the_numbers():
    gs = _gpu_study()
    line, warning = gs.compare_throughput("m", {"images_per_s": 90.0}, {"images_per_s": 100.0}, 10, 3)
    assert "fit     90.0 img/s" in line and "timm reference    100.0 img/s, ratio 0.90" in line
    assert warning.startswith("WARNING: m: fit 90.0 img/s against the timm reference loop's 100.0 img/s "
                              "(ratio 0.90 < 1.00) over only 10 timed steps after 3 warm-up: not a failure")
    assert gs.compare_throughput("m", {"images_per_s": 110.0}, {"images_per_s": 100.0}, 10, 3)[1] is None
    assert gs.compare_throughput("m", {"images_per_s": 110.0}, None, 10, 3) == ("fit    110.0 img/s", None)


def test_rank_agreement_reads_every_ranks_json(tmp_path):
    gs = _gpu_study()
    for where, record in (("image/a", {"world_size": 2, "weights_sha1": ["abc", "abc"], "agree": True}),
                          ("ablation/b", {"world_size": 2, "weights_sha1": ["abc", "abd"], "agree": False})):
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "ranks.json").write_text(json.dumps(record))
    lines, failures = gs.rank_agreement(tmp_path, 2)
    assert any("image/a" in line and "world size 2, 2 digest(s), ranks agree" in line for line in lines)
    assert any("ablation/b" in line and "RANKS DIFFER" in line for line in lines)
    assert failures == ["ablation/b: the ranks ended with different weights"]
    assert gs.rank_agreement(tmp_path, 1)[1][:1] == ["ablation/b: trained with world size 2, expected 1"]
    assert gs.rank_agreement(tmp_path / "image" / "none", 2)[1] == [
        "no ranks.json: no image model trained through torchrun"]
