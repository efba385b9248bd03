"""Run tests/test_ddp.py's two-process job N times in a row and count the failures.

A teardown race (a rank that leaves the process group while a peer still works) fails only some
runs, so one green test run proves little; this repeats the job and reports every failure.

    PYTHONPATH=. python scripts/ddp_stress.py              # 30 runs
    PYTHONPATH=. python scripts/ddp_stress.py --runs 5 --keep runs/stress
    PYTHONPATH=. python scripts/ddp_stress.py --study      # the GPU study's image settings

Each run is ``launch_torchrun`` with 2 processes (gloo on the CPU) on the tests' tiny data folder
(``tests/conftest.py``'s ``make_tiny_dataset``) and the config of ``test_two_processes_match_one``.
A run fails when torchrun exits non-zero or ``ranks.json`` does not say the ranks agree. Exit
status: 0 when every run passed, 1 otherwise.

``--study``: the settings of the GPU study's image stage instead (``benchmarks/gpu_study.py
--cpu-smoke --gpus 2``: timm AdamW, EMA, mixup, gradient clipping, one epoch, progress lines and
the inference trace hook) with tcmalloc preloaded as under ``make test`` and ``run``. Before the
process group was freed inside ``destroy_process_group`` (``mlc_utils.train.distributed``), rank 1
of 1 run in 8 of these ended with "terminate called without an active exception".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from conftest import make_ddp_config, make_tiny_dataset
from mlc_utils.train.distributed import launch_torchrun


def run_once(config: dict, out_dir: Path) -> tuple[list[str], str]:
    """(output lines, why the run failed or "")."""
    lines: list[str] = []
    code = launch_torchrun(config, 2, out_dir, echo=lines.append)
    if code != 0:
        return lines, f"torchrun exited with {code}"
    ranks_path = out_dir / "ranks.json"
    ranks = json.loads(ranks_path.read_text()) if ranks_path.is_file() else {}
    if not ranks.get("agree") or ranks.get("world_size") != 2:
        return lines, f"ranks.json does not show 2 agreeing ranks: {ranks}"
    return lines, ""


def study_settings(config: dict, work: Path) -> dict:
    """``config`` with the GPU study's image-stage settings; the environment of its workers (set here)."""
    from mlc_utils.core.allocator import allocator_env
    os.environ.update({"MLC_PROGRESS": "lines", "MLC_INFERENCE_TRACE": str(work / "inference-trace.jsonl"),
                       **{k: v for k, v in allocator_env().items() if k == "LD_PRELOAD"}})
    train = {**config["train"], "epochs": 1, "optimizer": "timm_adamw", "ema": True, "mixup": True,
             "max_grad_norm": 5.0}
    return {**config, "train": train}


def stress(runs: int, work: Path, tail: int, study: bool = False) -> int:
    """Number of failed runs (each failure is printed with its exit code and last lines)."""
    config = make_ddp_config(make_tiny_dataset(work / "tiny"), work, batch_size=4)
    if study:
        config = study_settings(config, work)
    failed, start = 0, time.time()
    for i in range(1, runs + 1):
        tic = time.time()
        lines, why = run_once(config, work / f"run{i:03d}")
        print(f"run {i}/{runs}: {'FAILED: ' + why if why else 'ok'} ({time.time() - tic:.1f} s)", flush=True)
        if why:
            failed += 1
            print("\n".join(f"    | {line}" for line in lines[-tail:]), flush=True)
    print(f"{failed} of {runs} failed, {runs} runs took {time.time() - start:.0f} s", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="how many runs (default 30)")
    parser.add_argument("--tail", type=int, default=25, help="output lines shown of a failed run")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, removed)")
    parser.add_argument("--study", action="store_true",
                        help="the GPU study's image settings, tcmalloc preloaded (see the module docstring)")
    args = parser.parse_args(argv)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU + gloo, as in the test, even on a GPU machine
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return int(stress(args.runs, args.keep, args.tail, args.study) > 0)
    with tempfile.TemporaryDirectory(prefix="ddp-stress-") as work:
        return int(stress(args.runs, Path(work), args.tail, args.study) > 0)


if __name__ == "__main__":
    raise SystemExit(main())
